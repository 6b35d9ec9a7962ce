"""The chaos benchmark's own parts, without root: the delay proxy's schedule, its settings and a real
proxied connection on loopback, and the checks that count keys served twice and keys lost."""
from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
import trio

from bench.chaos_proxy import ChunkSchedule, DelayProxy, PathSettings, SettingsError, SettingsFile
from tests.chaos_load import Handout, compare_inventories, mismatched, served_twice


# -- the schedule ------------------------------------------------------------------------------------------

def test_every_chunk_is_late_by_the_delay():
    schedule = ChunkSchedule(random.Random(1))
    settings = PathSettings(delay_ms=200)
    assert [schedule.release_at(t, settings) for t in (0.0, 0.5, 2.0)] == pytest.approx([0.2, 0.7, 2.2])


def test_a_held_chunk_holds_back_the_chunks_behind_it_and_the_stream_stays_in_order():
    settings = PathSettings(delay_ms=10, hold_probability=0.3, hold_ms=100)
    schedule = ChunkSchedule(random.Random(7))
    reads = [i * 0.01 for i in range(200)]
    releases = [schedule.release_at(t, settings) for t in reads]
    assert releases == sorted(releases)                          # never out of order
    held = [r - t for r, t in zip(releases, reads) if r - t > 0.010 + 1e-9]
    assert len(held) > 40                                        # held ones, and the ones waiting behind them
    assert max(r - t for r, t in zip(releases, reads)) <= 0.110 + 1e-9 + 0.01 * 20
    assert all(r >= t + 0.010 - 1e-9 for r, t in zip(releases, reads))


def test_no_settings_means_no_delay():
    schedule = ChunkSchedule()
    assert schedule.release_at(5.0, PathSettings()) == 5.0


@pytest.mark.parametrize("text, message", [
    ('{"delay_ms": -1}', "delay_ms must be a number in [0, 60000]"),
    ('{"delay_ms": "200"}', "delay_ms must be a number"),
    ('{"hold_probability": 1.5}', "hold_probability must be a number in [0, 1]"),
    ('{"delay_ms": NaN}', "delay_ms must be a number"),
    ('{"jitter": 3}', "unknown settings: jitter"),
    ('[1]', "settings must be a JSON object"),
    ('{', "settings are not JSON"),
])
def test_bad_settings_are_refused_with_the_reason(text, message):
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PathSettings.from_json(text)


def test_a_bad_settings_file_keeps_the_settings_in_force(tmp_path):
    path = tmp_path / "path.json"
    path.write_text('{"delay_ms": 50}')
    settings = SettingsFile(path)
    settings.reload()
    assert settings.current == PathSettings(delay_ms=50)
    path.write_text('{"delay_ms": "lots"}')
    settings.reload()
    assert settings.current == PathSettings(delay_ms=50) and settings.errors == 1
    path.unlink()
    settings.reload()
    assert settings.current == PathSettings()


# -- a real proxied connection ------------------------------------------------------------------------------

def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)
    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_the_proxy_delays_both_directions_and_takes_new_settings_without_dropping_the_connection(tmp_path):
    server, echo_port = _echo_server()
    settings_path = tmp_path / "path.json"
    settings_path.write_text(json.dumps({"delay_ms": 150}))
    proxy = DelayProxy(("127.0.0.1", echo_port), SettingsFile(settings_path))
    round_trips: list[float] = []
    payload = bytes(range(256)) * 64

    async def client(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for step in range(4):
                if step == 2:               # a plain path from now on, same connection
                    settings_path.write_text(json.dumps({"delay_ms": 0}))
                    with trio.fail_after(10):
                        while proxy.settings.current != PathSettings():
                            await trio.sleep(0.05)
                started = trio.current_time()
                await stream.send_all(payload)
                received = b""
                while len(received) < len(payload):
                    received += await stream.receive_some(65536)
                assert received == payload
                round_trips.append(trio.current_time() - started)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(proxy.serve, ("127.0.0.1", 0))
            await client(port)
            nursery.cancel_scope.cancel()

    trio.run(main)
    server.close()
    assert proxy.connections == 1
    assert all(rtt >= 0.300 for rtt in round_trips[:2]), round_trips      # 150 ms each way
    assert all(rtt < 0.250 for rtt in round_trips[2:]), round_trips       # (a busy host's own delays allowed)


def test_the_proxy_closes_the_client_when_the_upstream_refuses():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                  # nothing listens there
    proxy = DelayProxy(("127.0.0.1", port), SettingsFile(None))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _, proxy_port = await nursery.start(proxy.serve, ("127.0.0.1", 0))
            stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- counting keys served twice and keys lost ---------------------------------------------------------------

def _handout(end, role, key_id, digest, interface="v1"):
    return Handout(time.monotonic(), end, interface, role, key_id, digest)


def test_a_key_handed_out_once_at_each_end_is_not_served_twice():
    handouts = [_handout("a", "request", "k1", "d1"), _handout("b", "fetch", "k1", "d1"),
                _handout("b", "request", "k2", "d2"), _handout("a", "fetch", "k2", "d2")]
    assert served_twice(handouts) == [] and mismatched(handouts) == []


def test_keys_served_twice_are_found_by_id_and_by_material():
    handouts = [_handout("a", "request", "k1", "d1"), _handout("a", "request", "k1", "d1"),   # requested twice
                _handout("b", "fetch", "k2", "d2"), _handout("b", "fetch", "k2", "d2"),       # fetched twice
                _handout("a", "request", "k3", "d3"), _handout("b", "request", "k4", "d3"),   # same material
                _handout("a", "request", "k5", "d5", "etsi014"), _handout("b", "fetch", "k5", "d6", "etsi014")]
    assert served_twice(handouts) == ["k1", "k2", "k3", "k4"]
    assert mismatched(handouts) == ["k5"]


def test_a_key_at_one_end_only_is_lost_unless_its_frame_is_still_pending():
    a = {"k1": "available", "k2": "reserved", "k3": "delivered", "k4": "pending", "k5": "available",
         "k6": "available", "k7": "reserved"}
    b = {"k1": "available", "k2": "reserved", "k5": "delivered", "k6": "expired", "k8": "pending", "k9": "delivered"}
    audit = compare_inventories(a, b)
    assert audit.lost == ["k3", "k7", "k9"]
    assert audit.stranded == 2 and audit.expiry_split == 1      # k5 and k6: material left at one end only
    assert not audit.agree
    assert compare_inventories({"k1": "available"}, {"k1": "reserved"}).agree
