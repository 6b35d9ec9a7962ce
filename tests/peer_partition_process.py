"""Both ends of one link's classical channel in one process, for a partition test run in a network namespace
of its own (tests/test_peer_stalled_path.py cuts its loopback with iptables). TCP's retransmission timeout is
left uncapped here, as on kernels before Linux 6.15 (qkdd/peer/tcp_tuning.py): the connector must recover
from the partition by itself. Each end sends a numbered record every 0.1 s; one JSON line per event on
stdout, with time.monotonic() (the system-wide clock the test reads too):

    {"event": "listening", "port": P}
    {"event": "session", "end": "alice"|"bob", "epoch": N, "t": ...}
    {"event": "record", "end": ..., "epoch": N, "t": ...}      (a record from the other end)

    python tests/peer_partition_process.py
"""
import json
import logging
import sys
import time

import trio

import qkdd.peer.connector
from qkdd.peer import PeerConnector, PeerSettings, SessionClosedError, generate_identity

SEND_INTERVAL_S = 0.1


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def handler(end: str):
    async def on_session(session):
        emit(event="session", end=end, epoch=session.epoch, t=time.monotonic())

        async def send_forever():
            number = 0
            while True:
                await session.send(1, b"%d" % number)
                number += 1
                await trio.sleep(SEND_INTERVAL_S)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_forever)
            try:
                while True:
                    await session.receive()
                    emit(event="record", end=end, epoch=session.epoch, t=time.monotonic())
            except SessionClosedError:
                nursery.cancel_scope.cancel()
    return on_session


async def main() -> None:
    # A kernel that cannot cap the retransmission timeout (before Linux 6.15), on this one too.
    qkdd.peer.connector.cap_retransmission_timeout = lambda sock, ceiling_ms=0: False
    alice_key, bob_key = generate_identity(), generate_identity()
    # An idle timeout well past the partition: the session must not end by it, the stalled path is what
    # the connector has to notice.
    timings = dict(handshake_timeout_s=5.0, heartbeat_interval_s=1.0, idle_timeout_s=60.0,
                   backoff_initial_s=0.2, backoff_max_s=1.0)
    async with trio.open_nursery() as nursery:
        alice = PeerConnector(PeerSettings("link-ab", listen=("127.0.0.1", 0), **timings), alice_key,
                              bob_key.public_key(), handler("alice"))
        port = await nursery.start(alice.run)
        emit(event="listening", port=port)
        bob = PeerConnector(PeerSettings("link-ab", dial=("127.0.0.1", port), **timings), bob_key,
                            alice_key.public_key(), handler("bob"))
        nursery.start_soon(bob.run)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trio.run(main)
