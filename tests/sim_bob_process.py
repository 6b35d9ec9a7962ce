"""A Bob-side sim device in its own process (for restart tests): connects to Alice's device at
argv[1]:argv[2], pulls frames and prints `frame_id detections` per frame, flushing each line."""
import sys

import trio

from qkdd.hal.sim.bob import SimBobDevice


async def main(host: str, port: int) -> None:
    bob = SimBobDevice(host=host, port=port, backoff_initial_s=0.01, backoff_max_s=0.1)
    await bob.init()
    while True:
        frame = await bob.next_frame()
        print(frame.frame_id, frame.bob.slots.size, flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
