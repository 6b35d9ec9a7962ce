"""`qkdd` command line: `qkdd run` starts the daemon, `qkdd check-config` validates and prints the
effective configuration (secrets redacted).

Exit status: 0 fine; 1 the daemon could not start (port in use, unreadable TLS file, ...);
2 the configuration is invalid (one line `config error: <key>: <what>` on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qkdd import __version__
from qkdd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, to_toml

EXIT_CONFIG_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkdd", description="Quantum key distribution agent")
    parser.add_argument("--version", action="version", version=f"qkdd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"configuration file (default {DEFAULT_CONFIG_PATH}; environment variables override it)"

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", metavar="PATH", help=config_help)
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check-config", help="validate the configuration and print it, secrets redacted")
    check.add_argument("--config", metavar="PATH", help=config_help)
    check.add_argument("--format", choices=("toml", "json"), default="toml", help="output format (default toml)")
    check.set_defaults(func=cmd_check_config)
    return parser


def _load(args: argparse.Namespace):
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG_ERROR
    from qkdd.preflight import StartupError, check_tls_files
    from qkdd.auth.check import check_auth_files
    try:
        check_tls_files(config)
        check_auth_files(config)
    except StartupError as exc:
        print(f"config error: {exc.what}: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from qkdd.link.service import not_started_because
    for index, link in enumerate(config.links):
        reason = not_started_because(link)
        if reason is not None:             # valid, but the daemon will not run it: say so, exit 0
            print(f"warning: links[{index}] ({link.link_id}): {reason}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(config.to_dict(redact=True), indent=2))
    else:
        source = args.config or DEFAULT_CONFIG_PATH
        if not os.path.exists(source):
            source += " (absent: defaults)"
        print(f"# effective configuration: {source} + environment")
        print(to_toml(config), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return EXIT_CONFIG_ERROR
    from qkdd import daemon, logs
    logs.configure(config.daemon.log_level)
    return daemon.run(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
