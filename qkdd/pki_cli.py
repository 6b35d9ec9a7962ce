"""`qkdctl pki`: create the development PKI (CA, KME and SAE certificates) that demos and tests use."""
from __future__ import annotations

import argparse
import sys

from .pki import DEFAULT_VALID_DAYS, PKIError, init_pki


def register(subparsers: argparse._SubParsersAction) -> None:
    pki = subparsers.add_parser("pki", help="development PKI: CA, KME server and SAE client certificates")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")
    init = pki_commands.add_parser(
        "init", help="write a CA and certificates into DIR",
        description="Write ca.pem/ca.key, kme-NAME.pem/.key per --kme and sae-NAME.pem/.key per --sae into DIR. "
                    "Private keys are unencrypted and created with mode 0600. For development and tests only.")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--kme", action="append", default=[], metavar="NAME",
                      help="a KME (server) certificate for NAME; repeatable")
    init.add_argument("--sae", action="append", default=[], metavar="NAME",
                      help="an SAE (client) certificate with CN=NAME; repeatable")
    init.add_argument("--days", type=int, default=DEFAULT_VALID_DAYS,
                      help=f"validity of KME and SAE certificates in days (default {DEFAULT_VALID_DAYS})")
    init.add_argument("--force", action="store_true", help="replace files that exist already")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    try:
        pki = init_pki(args.directory, args.kme, args.sae, force=args.force, valid_days=args.days)
    except PKIError as exc:
        print(f"qkdctl pki init: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"qkdctl pki init: {exc.filename or args.directory}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"CA       {pki.ca_cert_file}")
    for issued in pki.kmes.values():
        print(f"KME {issued.name}: {issued.cert_file} {issued.key_file}")
    for issued in pki.saes.values():
        print(f"SAE {issued.name}: {issued.cert_file} {issued.key_file}")
    return 0
