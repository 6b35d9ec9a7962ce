"""Shared fixtures: a development PKI on disk, and real HTTP servers on ephemeral ports.

`http_server(router, tls=..., limits=...)` starts an HTTPServer in its own thread running trio, so a
test talks to it with ordinary blocking clients (httpx, socket, ssl) exactly as an outside client would.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import pytest
import trio

from qkdd.http import HTTPLimits, HTTPServer, Router, TLSSettings
from qkdd.pki import DevPKI, init_pki


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory) -> DevPKI:
    """CA, KMEs `kme-a` and `kme-b`, SAEs `sae-a` and `sae-b` (see qkdd.pki)."""
    return init_pki(tmp_path_factory.mktemp("pki"), ["kme-a", "kme-b"], ["sae-a", "sae-b"])


@dataclass
class RunningServer:
    server: HTTPServer
    host: str
    port: int
    thread: threading.Thread
    trio_token: trio.lowlevel.TrioToken
    errors: list[BaseException]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("https" if self.server.uses_tls else "http")
        return f"{scheme}://{self.host}:{self.port}{path}"

    def shutdown(self) -> None:
        """server.shutdown(), called in the server's trio thread."""
        try:
            trio.from_thread.run_sync(self.server.shutdown, trio_token=self.trio_token)
        except trio.RunFinishedError:
            pass

    def wait_stopped(self, timeout_s: float) -> bool:
        self.thread.join(timeout_s)
        return not self.thread.is_alive()


def start_server_thread(router: Router, *, tls: TLSSettings | None = None, limits: HTTPLimits = HTTPLimits(),
                        name: str = "test", host: str = "127.0.0.1") -> RunningServer:
    server = HTTPServer(name, host, 0, router, tls=tls, limits=limits)
    started: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.run)
            started.put((trio.lowlevel.current_trio_token(), host, port))

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test by the fixture
            errors.append(exc)
            started.put(exc)

    thread = threading.Thread(target=thread_main, name=f"http-{name}", daemon=True)
    thread.start()
    result = started.get(timeout=10)
    if isinstance(result, BaseException):
        raise result
    token, host, port = result
    return RunningServer(server, host, port, thread, token, errors)


@pytest.fixture
def http_server():
    """Factory: start servers for this test; each is shut down (and checked for crashes) afterwards."""
    running: list[RunningServer] = []

    def start(router: Router, **kwargs) -> RunningServer:
        server = start_server_thread(router, **kwargs)
        running.append(server)
        return server

    yield start
    for server in running:
        server.shutdown()
        assert server.wait_stopped(server.server.limits.shutdown_grace_s + 5), "server did not stop"
        assert not server.errors, f"server crashed: {server.errors!r}"
