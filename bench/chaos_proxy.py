"""A TCP proxy that delays and holds back each connection's bytes: latency and jitter on the classical
channel for the chaos benchmark (bench/chaos.py), since this machine's kernel has no `netem`.

Theory of operation
-------------------
Each direction of a proxied connection is a queue of chunks (what one read returned). A chunk read at
time t leaves at

    release_s = max(t + delay_ms / 1000 [+ hold_ms / 1000 with probability hold_probability], previous release_s)

so every chunk is late by the delay, a held chunk by more, and the chunks behind a held one wait for it:
the byte stream stays whole and in order. That is what an application sees of reordering on a real
path, where TCP keeps the segments that overtook a late one in its out-of-order queue until the gap
fills (packet reordering itself is done in the kernel, tests/chaos_net.py `reorder`). `ChunkSchedule`
is that rule without I/O; the proxy around it reads settings from a JSON file, checked for changes every
SETTINGS_POLL_S, so a running benchmark changes the path without dropping its connections:

    {"delay_ms": 200, "hold_probability": 0.1, "hold_ms": 50}

    python -m bench.chaos_proxy --listen 127.0.0.1:7444 --connect 10.233.1.1:7443 --settings FILE
"""
from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import trio

from qkdd.peer.tcp_tuning import cap_retransmission_timeout

SETTINGS_POLL_S = 0.2
CONNECT_TIMEOUT_S = 15.0         # the upstream connect (a cut path would otherwise hang in SYN retries)
QUEUE_CHUNKS = 256               # chunks in flight per direction before the reader waits (a path's buffer)
READ_BYTES = 65536
MAX_DELAY_MS = 60_000.0


class SettingsError(ValueError):
    """A settings file the proxy cannot use (it keeps the settings it had)."""


@dataclass(frozen=True)
class PathSettings:
    delay_ms: float = 0.0
    hold_probability: float = 0.0
    hold_ms: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> "PathSettings":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings are not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError("settings must be a JSON object")
        unknown = set(data) - {"delay_ms", "hold_probability", "hold_ms"}
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = {}
        for name, limit in (("delay_ms", MAX_DELAY_MS), ("hold_probability", 1.0), ("hold_ms", MAX_DELAY_MS)):
            value = data.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value <= limit:
                raise SettingsError(f"{name} must be a number in [0, {limit:g}], got {value!r}")
            values[name] = float(value)
        return cls(**values)


class ChunkSchedule:
    """When each chunk of one direction leaves (the rule in the module docstring); no I/O."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._last_release_s = -math.inf

    def release_at(self, read_at_s: float, settings: PathSettings) -> float:
        release_s = read_at_s + settings.delay_ms / 1000
        if settings.hold_probability and self._rng.random() < settings.hold_probability:
            release_s += settings.hold_ms / 1000
        release_s = max(release_s, self._last_release_s)
        self._last_release_s = release_s
        return release_s


class SettingsFile:
    """The current PathSettings, reloaded from `path` when the file changes (its modification time, size or
    inode: two writes within one clock tick share a modification time)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.current = PathSettings()
        self._stamp: tuple[int, int, int] | None = None
        self.errors = 0

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            status = self.path.stat()
            stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self.current = PathSettings.from_json(self.path.read_text())
        except FileNotFoundError:
            self.current, self._stamp = PathSettings(), None
        except (OSError, SettingsError):
            self.errors += 1          # keep the settings in force

    async def watch(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.reload)
            await trio.sleep(SETTINGS_POLL_S)


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], settings: SettingsFile) -> None:
        self.upstream = upstream
        self.settings = settings
        self.connections = 0

    async def serve(self, listen: tuple[str, int], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
        await trio.to_thread.run_sync(self.settings.reload)     # the first connection already sees them
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.settings.watch)
            task_status.started(listeners[0].socket.getsockname()[:2])
            await trio.serve_listeners(self._proxy, listeners, handler_nursery=nursery)

    async def _proxy(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        async with downstream:
            upstream = None
            with trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    upstream = await trio.open_tcp_stream(*self.upstream)
                except OSError:
                    pass
            if upstream is None:
                return
            # The proxy stands in for the path, where no TCP endpoint sits between the two daemons: its own
            # socket on the faulted side backs off as the daemons' do (capped, qkdd/peer/tcp_tuning.py), or
            # after a partition its retransmission, not the daemon, would decide when traffic resumes.
            cap_retransmission_timeout(upstream.socket)
            async with upstream, trio.open_nursery() as nursery:
                for source, sink in ((downstream, upstream), (upstream, downstream)):
                    nursery.start_soon(self._direction, source, sink, nursery.cancel_scope)

    async def _direction(self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
        """Read `source`, release each chunk to `sink` at its scheduled time; the first end to close or fail
        closes the whole connection (as a reset path would)."""
        schedule = ChunkSchedule()
        send_channel, receive_channel = trio.open_memory_channel(QUEUE_CHUNKS)

        async def read() -> None:
            async with send_channel:
                try:
                    while data := await source.receive_some(READ_BYTES):
                        await send_channel.send((schedule.release_at(trio.current_time(), self.settings.current),
                                                 data))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

        async def write() -> None:
            async with receive_channel:
                try:
                    async for release_s, data in receive_channel:
                        await trio.sleep_until(release_s)
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True, help="host:port to accept connections on")
    parser.add_argument("--connect", type=_address, required=True, help="host:port each connection is relayed to")
    parser.add_argument("--settings", type=Path, help="JSON settings file, re-read when it changes")
    args = parser.parse_args(argv)
    proxy = DelayProxy(args.connect, SettingsFile(args.settings))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(proxy.serve, args.listen)
            print(f"listening {host}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
