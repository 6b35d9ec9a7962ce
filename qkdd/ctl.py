"""`qkdctl` command line: operator tools. Each command group lives in its own module and registers
its subcommands here through `register(subparsers)`; a subcommand sets `func(args) -> int`."""
from __future__ import annotations

import argparse
import sys

from qkdd import __version__, pki_cli
from qkdd.audit import cli as audit_cli
from qkdd.auth import cli as auth_cli
from qkdd.hal.serial import cli as device_cli
from qkdd.hal.sim import cli as sim_cli
from qkdd.operator import cli as operator_cli
from qkdd.peer import keycli as peer_key_cli
from qkdd.peer import pair_cli
from qkdd.protocols import cli as protocols_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkdctl", description="qkdd operator tools")
    parser.add_argument("--version", action="version", version=f"qkdctl (qkdd) {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = commands.add_parser("sim", help="QKD simulator: analytic key rates and Monte Carlo runs")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True, metavar="SIM_COMMAND")
    # Command groups register here, one line each:
    pki_cli.register(commands)
    protocols_cli.register(sim_commands)
    sim_cli.register(sim_commands)
    peer_key_cli.register(commands)
    operator_cli.register(commands)
    pair_cli.register(commands)
    device_cli.register(commands)
    audit_cli.register(commands)
    auth_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
