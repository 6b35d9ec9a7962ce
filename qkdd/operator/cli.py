"""`qkdctl status | links | keys | health | watch`: read a running daemon (see qkdd.operator.client for how it
is reached); a table on a terminal, JSON otherwise or with --json.

Exit status: 0 read; 1 `health` found the daemon unhealthy (/healthz answered 503); 3 the daemon could not be
read (not running, refused the caller, TLS files unreadable)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

from qkdd.operator import snapshot as snapshots
from qkdd.operator import tables
from qkdd.operator.client import DEFAULT_API_URL, DEFAULT_HEALTH_URL, ENVIRONMENT, DaemonAddress, DaemonClient, \
    DaemonError

EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 3
CLEAR_SCREEN = "\x1b[H\x1b[2J"          # cursor home, clear the screen: one redraw of `watch`


def _connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("daemon")
    group.add_argument("--api", metavar="URL", help=f"the daemon's API (default ${ENVIRONMENT['api']} or "
                       f"{DEFAULT_API_URL}; https:// when [api.tls] is set)")
    group.add_argument("--health", metavar="URL", help=f"the daemon's health port (default "
                       f"${ENVIRONMENT['health']} or {DEFAULT_HEALTH_URL})")
    group.add_argument("--ca", metavar="PATH", help=f"CA file that signed the daemon's certificate "
                       f"(default ${ENVIRONMENT['ca']}; else the system's)")
    group.add_argument("--cert", metavar="PATH", help=f"client certificate, one api.admin_clients or api.key_clients "
                       f"lists (default ${ENVIRONMENT['cert']})")
    group.add_argument("--key", metavar="PATH", help=f"its private key (default ${ENVIRONMENT['key']})")
    group.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per request (default 5 s)")
    parser.add_argument("--json", action="store_true", help="print JSON even on a terminal")


VIEWS: dict[str, tuple[str, Callable[[dict], str], Callable[[dict], object]]] = {
    # command -> (help, table, JSON document)
    "status": ("the daemon and each link: state, QBER and band, key rates, stock, consumers", tables.status,
               lambda s: s),
    "links": ("the configured links: role, driver, protocol, state and why", tables.links,
              lambda s: {"links": s["links"]}),
    "keys": ("key stock per link: available, reserved, pending, generated", tables.keys,
             lambda s: {"links": s["links"]}),
    "health": ("/healthz as a table; exit status 1 when the daemon is unhealthy", tables.health,
               lambda s: {k: s[k] for k in ("status", "http_status", "daemon", "links")}),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, (help_text, _, _) in VIEWS.items():
        command = subparsers.add_parser(name, help=help_text, description=help_text + ". " + __doc__.split("\n\n")[1])
        _connection_args(command)
        command.set_defaults(func=_view, view=name)
        if name == "links":
            command.add_argument("--plot", metavar="PNG", help="also write each link's QBER and secret key rate "
                                 "history (/v1/links/{id}/qber) to this PNG (needs the plot extra: matplotlib)")
    watch = subparsers.add_parser(
        "watch", help="`status`, redrawn live", description="Redraw `qkdctl status` every --interval seconds "
        "on a terminal; otherwise (or with --json) print one JSON document per line at each refresh.")
    _connection_args(watch)
    watch.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes "
                       "(default 2)")
    watch.add_argument("--count", type=int, default=0, metavar="N", help="stop after N refreshes (default 0: "
                       "until interrupted)")
    watch.set_defaults(func=_watch)


def _open(args: argparse.Namespace) -> DaemonClient | None:
    try:
        return DaemonClient(DaemonAddress.from_args(args))
    except DaemonError as exc:
        print(f"qkdctl {args.command}: {exc}", file=sys.stderr)
        return None


def _as_json(args: argparse.Namespace) -> bool:
    return args.json or not sys.stdout.isatty()


def _view(args: argparse.Namespace) -> int:
    client = _open(args)
    if client is None:
        return EXIT_UNREACHABLE
    _, render, document = VIEWS[args.view]
    with client:
        try:
            snapshot = snapshots.take(client, with_links=args.view != "health")
        except DaemonError as exc:
            print(f"qkdctl {args.view}: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    if args.view in ("links", "keys") and snapshot["api_error"]:
        print(f"qkdctl {args.view}: {snapshot['api_error']}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(document(snapshot), indent=2) if _as_json(args) else render(snapshot))
    if getattr(args, "plot", None):
        return _plot_links(args, snapshot)
    if args.view == "health" and snapshot["http_status"] != 200:
        return EXIT_UNHEALTHY
    return 0


def _plot_links(args: argparse.Namespace, snapshot: dict) -> int:
    from qkdd import plots
    from qkdd.operator import history
    client = _open(args)
    if client is None:
        return EXIT_UNREACHABLE
    with client:
        try:
            series = {link["link_id"]: history.series(client.link_qber(link["link_id"])) for link in snapshot["links"]}
        except DaemonError as exc:
            print(f"qkdctl links: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    try:
        written = plots.link_history(args.plot, series)
    except plots.PlotUnavailable as exc:
        print(f"qkdctl links: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qkdctl links: cannot write {args.plot}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    frames = sum(len(s["time_s"]) for s in series.values())
    print(f"plot: {written} ({frames} frames of {len(series)} link(s))", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.count < 0:
        print("qkdctl watch: --interval must be > 0 and --count >= 0", file=sys.stderr)
        return 2
    client = _open(args)
    if client is None:
        return EXIT_UNREACHABLE
    as_json = _as_json(args)
    refreshes = 0
    try:
        with client:
            while True:
                try:
                    snapshot = snapshots.take(client)
                    text = json.dumps(snapshot) if as_json else tables.status(snapshot)
                except DaemonError as exc:           # a restart in progress: say so, keep watching
                    text = json.dumps({"error": str(exc)}) if as_json else f"qkdctl watch: {exc}"
                print(text if as_json else CLEAR_SCREEN + text, flush=True)
                refreshes += 1
                if args.count and refreshes >= args.count:
                    return 0
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
