"""A dialling qkdd end as its own process (for kill -9 tests): loads its identity files, dials the port,
and in each session sends one greeting naming its pid, then echoes what it receives.

    python tests/peer_dialer_process.py PORT PRIVATE_KEY_FILE PEER_PUBLIC_KEY_FILE
"""
import os
import sys

import trio

from qkdd.peer import PeerConnector, PeerSettings, load_private_key, load_public_key


async def main(port: int, key_file: str, peer_key_file: str) -> None:
    async def on_session(session):
        await session.send(1, b"hello from pid %d" % os.getpid())
        while True:
            channel, payload = await session.receive()
            await session.send(channel, payload)

    settings = PeerSettings("link-ab", dial=("127.0.0.1", port), handshake_timeout_s=2.0, heartbeat_interval_s=0.3,
                            idle_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.2)
    connector = PeerConnector(settings, load_private_key(key_file), load_public_key(peer_key_file), on_session)
    await connector.run()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], sys.argv[3])
