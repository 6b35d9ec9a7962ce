"""`qkdd run`: the daemon's root nursery -- both HTTP listeners, systemd notify and watchdog, signals.

Lifetime: preflight (state dir, TLS files, file-descriptor limit) -> bind health then API listener ->
READY=1 -> serve until SIGTERM/SIGINT -> STOPPING=1, listeners stop accepting and finish requests in
flight (bounded by each listener's shutdown_grace_s; a second signal cuts that short) -> exit 0.
Start-up problems (unreadable TLS file, port in use, ...) are one log line and exit status 1.
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import ssl

import trio

from qkdd.api import build_routers
from qkdd.audit.service import open_trail
from qkdd.app import App
from qkdd.apps import build_apps
from qkdd.config import LISTENERS, Config
from qkdd.consumers.service import build_wireguard, run_wireguard
from qkdd.http.server import HTTPServer
from qkdd.keystore import KeyStoreError
from qkdd.keystore.housekeeping import run_housekeeping
from qkdd.kme.ledger import LedgerError
from qkdd.link.service import Links, build_links, open_keystore, run_links
from qkdd.peer import IdentityError
from qkdd.notify import Notifier
from qkdd.preflight import StartupError, check_tls_files, prepare_state_dir, raise_fd_limit
from qkdd.loop_watch import LoopWatch
from qkdd.malloc_tuning import tune_malloc
from qkdd.selftest import SelfTestError, run_self_tests

log = logging.getLogger("qkdd.daemon")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


async def serve(config: Config, notifier: Notifier, loop_watch: LoopWatch | None = None) -> int:
    """Run until a stop signal; returns the exit status. `loop_watch`: the instrument trio.run was given, whose
    stalls /metrics exports."""
    try:
        # Opening the stores creates files and runs SQLite's recovery: in worker threads, not on the loop.
        keystore = (await trio.to_thread.run_sync(open_keystore, config.daemon.state_dir, config.keystore)
                    if config.links else None)
        app = await App.open(config, keystore=keystore)
        if loop_watch is not None:
            app.metrics.watch_loop(loop_watch)
    except (KeyStoreError, LedgerError, IdentityError, OSError) as exc:
        log.error(f"cannot start: {exc}", extra={"key": "etsi014" if config.etsi014 else "daemon.state_dir"})
        return EXIT_STARTUP_FAILED
    try:
        audit = open_trail(config)
        if app.keystore is not None:
            app.keystore.audit = audit
        links = build_links(config, app.keystore, app.metrics, app.health)
        attach_kme(app, links)
        if config.node is not None:     # a relay node (the relay's modules are imported only there)
            from qkdd.relay.service import build_relay
            app.relay = build_relay(config, links, app)     # registers its channel kinds before the links run
        if app.relay is not None and app.kme is not None:   # ETSI 014 keys for KMEs on non-adjacent nodes
            app.kme.relay, app.relay.note_handler = app.relay, app.kme.record_relayed
            app.relay.rollback_handler = app.kme.forget_relayed
    except StartupError as exc:
        log.error(f"cannot start: {exc}", extra={"key": exc.what})
        return EXIT_STARTUP_FAILED
    try:
        return await _serve(config, notifier, app, links)
    finally:
        if audit is not None:
            audit.close()                   # a signed head over everything recorded


async def _serve(config: Config, notifier: Notifier, app: App, links: Links) -> int:
    app.links, app.key_requests, app.reservations = links.engines, links.key_requests, links.reservations
    app.devices.update({link_id: engine.device for link_id, engine in app.links.items()})
    wireguard = await build_wireguard(app)  # registers on the links' reservation services before they run
    routers = build_routers(app)
    try:
        servers = {name: _make_server(config, name, routers[name]) for name in LISTENERS}
        apps = build_apps(config, links, app.keystore, links.engines, app.metrics)     # ETSI 004, SKIP
        servers.update(apps.servers)
    except StartupError as exc:
        log.error(f"cannot start: {exc}", extra={"key": exc.what})
        return EXIT_STARTUP_FAILED
    failure: StartupError | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as root:
            async with trio.open_nursery() as listeners:
                bound = {}
                for name in ("health", "api", *apps.servers):
                    try:
                        bound[name] = await listeners.start(servers[name].run)
                    except OSError as exc:
                        failure = StartupError(f"{name}.listen", _bind_problem(_listen_text(config, name), exc))
                        listeners.cancel_scope.cancel()
                        break
                else:
                    # What start-up made lives as long as the daemon: leave it out of every later garbage
                    # collection, which then scans only newer objects (qkdd/http/reclaim.py relies on it).
                    gc.collect()
                    gc.freeze()
                    _announce_ready(app, bound, notifier)
                    root.start_soon(notifier.run_watchdog)
                    if app.keystore is not None:
                        root.start_soon(run_housekeeping, app.keystore)
                    if app.kme is not None:
                        root.start_soon(app.kme.run)
                    if app.relay is not None:
                        await root.start(app.relay.run)
                    root.start_soon(run_links, links, config, app.health)
                    root.start_soon(_report_status_changes, app, notifier)
                    root.start_soon(_stop_on_signals, app, servers, signals, notifier, listeners.cancel_scope)
                    root.start_soon(run_wireguard, wireguard)
            # Both listeners have returned: drained after a stop signal, or a start-up failure.
            root.cancel_scope.cancel()
    if failure:
        log.error(f"cannot start: {failure}", extra={"key": failure.what})
        return EXIT_STARTUP_FAILED
    log.info("stopped")
    return EXIT_OK


def attach_kme(app: App, links: Links) -> None:
    """The KME's reservations on the classical channel of each peer KME's link."""
    if app.kme is None:
        return
    from qkdd.kme.channel import attach_kme as attach
    for link_id in attach(app.kme, app.config.etsi014.peers, links):
        log.warning("etsi014: link %s has no classical channel (no [[links]] entry with a peer identity, no "
                    "channel table); Get key for its SAEs answers 503", link_id, extra={"key": "etsi014.peers"})


def _make_server(config: Config, name: str, router) -> HTTPServer:
    listener = config.listener(name)
    try:
        return HTTPServer(name, listener.listen.host, listener.listen.port, router, tls=listener.tls,
                          limits=listener.limits, logger=logging.getLogger(f"qkdd.http.{name}"))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise StartupError(f"{name}.tls", f"TLS set-up failed: {getattr(exc, 'reason', None) or exc}") from None


def _announce_ready(app: App, bound: dict[str, tuple[str, int]], notifier: Notifier) -> None:
    """Mark the daemon serving, log the bound addresses (tests and operators read this line), READY=1."""
    config = app.config
    app.health.set_daemon_state("serving")
    addresses = {name: _format_address(bound[name]) for name in LISTENERS}
    log.info("ready", extra={"api_address": addresses["api"], "health_address": addresses["health"],
                             "links": len(config.links), "pid": os.getpid(),
                             "watchdog_interval_s": notifier.watchdog_interval_s or 0})
    if config.api.tls is None and not _is_loopback(bound["api"][0]):
        log.warning("api listener has no TLS; configure [api.tls] before delivering keys",
                    extra={"api_address": addresses["api"]})
    notifier.ready(f"{app.health.status_line()}; api {addresses['api']}, health {addresses['health']}")


async def _stop_on_signals(app: App, servers: dict[str, HTTPServer], signals, notifier: Notifier,
                           listeners_scope: trio.CancelScope) -> None:
    """First SIGTERM/SIGINT: drain (servers stop accepting, finish requests within their grace).
    A second signal: cancel the listeners at once."""
    signum = await signals.__anext__()
    name = signal.Signals(signum).name
    app.health.set_daemon_state("stopping")
    for server in servers.values():
        server.shutdown()                  # listening sockets close now; run() returns once drained
    log.info("stop signal received, finishing requests in flight", extra={"signal": name})
    notifier.stopping(f"stopping on {name}")
    signum = await signals.__anext__()
    log.warning("second stop signal: closing connections now", extra={"signal": signal.Signals(signum).name})
    listeners_scope.cancel()


async def _report_status_changes(app: App, notifier: Notifier) -> None:
    """One "state changed" line (and STATUS=) per change of the daemon's or a link's reported state, naming
    what changed; alarms raised and cleared behind an unchanged state, and new details, are not lines."""
    version = app.health.version
    seen = app.health.states()
    while True:
        version = await app.health.wait_changed(version)
        now = app.health.states()
        if now == seen:
            continue
        changes = _changes(seen, now)
        seen = now
        line = app.health.status_line()
        notifier.status(line)
        log.info("state changed", extra={"status": line, "changes": changes})


def _changes(before: tuple[str, dict[str, str]], after: tuple[str, dict[str, str]]) -> str:
    """`daemon: starting -> serving; sim-1: running -> stalled` for two Health.states() snapshots."""
    parts = [f"daemon: {before[0]} -> {after[0]}"] if before[0] != after[0] else []
    parts += [f"{link_id}: {before[1].get(link_id, '-')} -> {state}" for link_id, state in after[1].items()
              if before[1].get(link_id) != state]
    return "; ".join(parts)


def _bind_problem(address: str, exc: OSError) -> str:
    reason = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied",
              errno.EADDRNOTAVAIL: "address not available on this host"}.get(exc.errno, exc.strerror or str(exc))
    return f"cannot listen on {address}: {reason}"


def _listen_text(config: Config, name: str) -> str:
    """The configured address of listener `name` (api, health, etsi004, skip)."""
    return str(config.listener(name).listen) if name in LISTENERS else getattr(config, name).listen


def _format_address(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def run(config: Config) -> int:
    """Entry for `qkdd run` after the config is loaded and logging configured."""
    tune_malloc()                           # before any worker thread allocates
    try:
        prepare_state_dir(config.daemon.state_dir)
        check_tls_files(config)
        raise_fd_limit(config)
    except StartupError as exc:
        log.error(f"cannot start: {exc}", extra={"key": exc.what})
        return EXIT_STARTUP_FAILED
    try:
        passed = run_self_tests()           # before anything is served: READY=1 comes after
    except SelfTestError as exc:
        log.error(f"cannot start: {exc}")
        return EXIT_STARTUP_FAILED
    log.info("self-tests passed: %s", ", ".join(passed))
    notifier = Notifier()
    loop_watch = LoopWatch()
    try:
        return trio.run(serve, config, notifier, loop_watch, instruments=[loop_watch])
    except KeyboardInterrupt:              # SIGINT before the signal receiver was installed
        log.info("interrupted during start-up")
        return 130
