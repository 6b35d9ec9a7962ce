"""`qkdctl audit verify`: check an audit log's hash chain and its signed heads against the node's public key."""
from __future__ import annotations

import argparse
import sys

from qkdd.audit.verify import verify_file
from qkdd.peer.identity import IdentityError, load_public_key


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("audit", help="the key lifecycle audit log")
    commands = group.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    verify = commands.add_parser("verify", help="find any edited, deleted or reordered record (exit 1 if found)")
    verify.add_argument("log", help="the audit log (state_dir/audit.log unless [audit] path says otherwise)")
    verify.add_argument("--public-key", help="the node's ML-DSA-65 public key (file or base64) that signs the "
                                             "heads; without it, signatures are not checked")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    try:
        public_key = load_public_key(args.public_key) if args.public_key else None
        report = verify_file(args.log, public_key)
    except (IdentityError, OSError) as exc:
        print(f"qkdctl audit verify: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"{args.log}: {problem}")
    if public_key is None:
        print("warning: no --public-key: the chain is checked, the signatures are not (a log rewritten from "
              "the start would pass)", file=sys.stderr)
    state = "intact" if report.intact else f"{len(report.problems)} problem(s)"
    print(f"{args.log}: {report.records} records, {report.signed_heads} signed heads, {report.unsigned_tail} "
          f"records after the last signed head: {state}")
    return 0 if report.intact else 1
