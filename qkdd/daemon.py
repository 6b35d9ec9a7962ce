"""`qkdd run`: the daemon's root nursery -- both HTTP listeners, systemd notify and watchdog, signals.

Lifetime: preflight (state dir, TLS files, file-descriptor limit) -> bind health then API listener ->
READY=1 -> serve until SIGTERM/SIGINT -> STOPPING=1, listeners stop accepting and finish requests in
flight (bounded by each listener's shutdown_grace_s; a second signal cuts that short) -> exit 0.
Start-up problems (unreadable TLS file, port in use, ...) are one log line and exit status 1.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import ssl

import trio

from qkdd.api import build_routers
from qkdd.app import App
from qkdd.config import LISTENERS, Config, ListenerConfig
from qkdd.http.server import HTTPServer
from qkdd.notify import Notifier
from qkdd.preflight import StartupError, check_tls_files, prepare_state_dir, raise_fd_limit

log = logging.getLogger("qkdd.daemon")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


# ---- running ---------------------------------------------------------------------------------------

async def serve(config: Config, notifier: Notifier) -> int:
    """Run until a stop signal; returns the exit status."""
    app = App.create(config)
    routers = build_routers(app)
    servers = {}
    for name in LISTENERS:
        listener = config.listener(name)
        servers[name] = HTTPServer(name, listener.listen.host, listener.listen.port, routers[name],
                                   tls=listener.tls, limits=listener.limits,
                                   logger=logging.getLogger(f"qkdd.http.{name}"))
    failure: StartupError | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = {}
            for name in ("health", "api"):
                try:
                    bound[name] = await nursery.start(servers[name].run)
                except OSError as exc:
                    failure = StartupError(f"{name}.listen", _bind_problem(config.listener(name), exc))
                except ssl.SSLError as exc:
                    failure = StartupError(f"{name}.tls", f"TLS set-up failed ({exc.reason or exc})")
                if failure:
                    nursery.cancel_scope.cancel()
                    break
            else:
                await _serve_until_signal(app, servers, bound, signals, notifier, nursery)
                nursery.cancel_scope.cancel()
    if failure:
        log.error(f"cannot start: {failure}", extra={"key": failure.what})
        return EXIT_STARTUP_FAILED
    log.info("stopped")
    return EXIT_OK


async def _serve_until_signal(app: App, servers: dict[str, HTTPServer], bound: dict[str, tuple[str, int]],
                              signals, notifier: Notifier, nursery: trio.Nursery) -> None:
    config = app.config
    app.health.set_daemon_state("serving")
    addresses = {f"{name}_address": _format_address(bound[name]) for name in LISTENERS}
    log.info("ready", extra={**addresses, "links": len(config.links), "pid": os.getpid(),
                             "watchdog_interval_s": notifier.watchdog_interval_s or 0})
    if config.api.tls is None and not _is_loopback(bound["api"][0]):
        log.warning("api listener has no TLS; configure [api.tls] before delivering keys",
                    extra={"api_address": addresses["api_address"]})
    notifier.ready(f"{app.health.status_line()}; api {addresses['api_address']}, "
                   f"health {addresses['health_address']}")
    nursery.start_soon(notifier.run_watchdog)
    nursery.start_soon(_report_status_changes, app, notifier)

    signum = await signals.__anext__()
    log.info("stop signal received, finishing requests in flight", extra={"signal": signal.Signals(signum).name})
    app.health.set_daemon_state("stopping")
    notifier.stopping(f"stopping on {signal.Signals(signum).name}")
    grace_s = max(config.listener(name).limits.shutdown_grace_s for name in LISTENERS)
    with trio.move_on_after(grace_s + 1.0) as deadline:
        async with trio.open_nursery() as stopping:
            stopping.start_soon(_cut_short_on_second_signal, signals, stopping.cancel_scope)
            async with trio.open_nursery() as shutdowns:
                for server in servers.values():
                    shutdowns.start_soon(server.shutdown)
            stopping.cancel_scope.cancel()
    if deadline.cancelled_caught:
        log.warning("shutdown grace period exceeded; closing remaining connections")


async def _cut_short_on_second_signal(signals, scope: trio.CancelScope) -> None:
    signum = await signals.__anext__()
    log.warning("second stop signal: closing connections now", extra={"signal": signal.Signals(signum).name})
    scope.cancel()


async def _report_status_changes(app: App, notifier: Notifier) -> None:
    version = app.health.version
    while True:
        version = await app.health.wait_changed(version)
        line = app.health.status_line()
        notifier.status(line)
        log.info("state changed", extra={"status": line})


def _bind_problem(listener: ListenerConfig, exc: OSError) -> str:
    reason = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied",
              errno.EADDRNOTAVAIL: "address not available on this host"}.get(exc.errno, exc.strerror or str(exc))
    return f"cannot listen on {listener.listen}: {reason}"


def _format_address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def run(config: Config) -> int:
    """Entry for `qkdd run` after the config is loaded and logging configured."""
    try:
        prepare_state_dir(config.daemon.state_dir)
        check_tls_files(config)
        raise_fd_limit(config)
    except StartupError as exc:
        log.error(f"cannot start: {exc}", extra={"key": exc.what})
        return EXIT_STARTUP_FAILED
    notifier = Notifier()
    return trio.run(serve, config, notifier)
