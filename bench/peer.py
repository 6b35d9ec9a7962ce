"""Classical channel: cost of one authenticated handshake, round-trip latency of small records, and
one-way record throughput over loopback TCP + TLS 1.3 with the MACed record layer. Prints one JSON
object per configuration.

    python -m bench.peer [--seconds 3] [--sizes 1024,65536,1048576] [--rounds 2000]
"""
from __future__ import annotations

import argparse
import json
import time

import trio

from qkdd.peer import PeerConnector, PeerSettings, generate_identity
from qkdd.peer.handshake import Handshake, Role


def handshake_ms(rounds: int) -> float:
    alice, bob = generate_identity(), generate_identity()
    start = time.perf_counter()
    for _ in range(rounds):
        initiator = Handshake(Role.INITIATOR, "bench", alice, bob.public_key())
        responder = Handshake(Role.RESPONDER, "bench", bob, alice.public_key())
        responder.start()
        to_responder = initiator.start()
        while to_responder:
            to_initiator = [f for frame in to_responder for f in responder.receive(frame)]
            to_responder = [f for frame in to_initiator for f in initiator.receive(frame)]
    return (time.perf_counter() - start) / rounds * 1e3


async def throughput(payload_bytes: int, seconds: float, batch: int = 1) -> dict:
    alice, bob = generate_identity(), generate_identity()
    result = {}

    async def receiver(session):
        received_bytes, records, started = 0, 0, None
        while True:
            _, payload = await session.receive()
            if started is None:
                started = time.perf_counter()
                continue
            received_bytes += len(payload)
            records += 1
            if time.perf_counter() - started >= seconds:
                elapsed = time.perf_counter() - started
                result.update(records_per_s=round(records / elapsed, 1),
                              mbit_per_s=round(received_bytes * 8 / elapsed / 1e6, 1))
                done.set()
                await trio.sleep_forever()

    async def sender(session):
        payload = bytes(payload_bytes)
        while True:
            if batch == 1:
                await session.send(1, payload)
            else:
                await session.send_many([(1, payload)] * batch)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        listener = PeerConnector(PeerSettings("bench", listen=("127.0.0.1", 0)), bob, alice.public_key(), receiver)
        port = await nursery.start(listener.run)
        dialer = PeerConnector(PeerSettings("bench", dial=("127.0.0.1", port)), alice, bob.public_key(), sender)
        await nursery.start(dialer.run)
        await done.wait()
        nursery.cancel_scope.cancel()
    return result


async def round_trip(payload_bytes: int, rounds: int) -> dict:
    """Ping-pong of small records: the latency an interactive protocol (Cascade) pays per round."""
    alice, bob = generate_identity(), generate_identity()
    result = {}

    async def echo(session):
        while True:
            channel, payload = await session.receive()
            await session.send(channel, payload)

    async def ping(session):
        payload = bytes(payload_bytes)
        samples_us = []
        for _ in range(rounds):
            start = time.perf_counter()
            await session.send(2, payload)
            await session.receive()
            samples_us.append((time.perf_counter() - start) * 1e6)
        samples_us.sort()
        result.update(rtt_median_us=round(samples_us[len(samples_us) // 2], 1),
                      rtt_p99_us=round(samples_us[int(len(samples_us) * 0.99)], 1))
        done.set()
        await trio.sleep_forever()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        listener = PeerConnector(PeerSettings("bench", listen=("127.0.0.1", 0)), bob, alice.public_key(), echo)
        port = await nursery.start(listener.run)
        dialer = PeerConnector(PeerSettings("bench", dial=("127.0.0.1", port)), alice, bob.public_key(), ping)
        await nursery.start(dialer.run)
        await done.wait()
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sizes", default="1024,65536,1048576")
    parser.add_argument("--handshakes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2000, help="ping-pong rounds for the latency figure")
    args = parser.parse_args()
    print(json.dumps({"config": "handshake_in_memory", "handshake_ms": round(handshake_ms(args.handshakes), 2)}))
    print(json.dumps({"config": "round_trip_tls_loopback", "payload_bytes": 64,
                      **trio.run(round_trip, 64, args.rounds)}))
    for size in (int(s) for s in args.sizes.split(",")):
        stats = trio.run(throughput, size, args.seconds)
        print(json.dumps({"config": "records_tls_loopback", "payload_bytes": size, **stats}))
        if size <= 4096:
            stats = trio.run(throughput, size, args.seconds, 64)
            print(json.dumps({"config": "records_tls_loopback_send_many_64", "payload_bytes": size, **stats}))


if __name__ == "__main__":
    main()
