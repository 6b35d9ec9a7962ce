"""`qkdctl auth secret`: write the pre-shared secret that seeds a link's authentication pool, the same file for
both ends (copy each to its host over a trusted path, then delete any other copy)."""
from __future__ import annotations

import argparse
import sys

from qkdd.auth import secret as auth_secret


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("auth", help="information-theoretic authentication (auth = its | both)")
    commands = group.add_subparsers(dest="auth_command", required=True, metavar="AUTH_COMMAND")
    write = commands.add_parser("secret", help="write a link's pre-shared authentication secret (0600), one "
                                               "identical file per path given: one for each end")
    write.add_argument("--link-id", required=True, help="the link the secret is for")
    write.add_argument("--bits", type=int, default=auth_secret.DEFAULT_BITS,
                       help=f"secret length, a multiple of 128 (default {auth_secret.DEFAULT_BITS})")
    write.add_argument("--force", action="store_true", help="overwrite existing files")
    write.add_argument("paths", nargs="+", help="where to write it (e.g. alice.secret bob.secret)")
    write.set_defaults(func=_secret)


def _secret(args: argparse.Namespace) -> int:
    try:
        secret = auth_secret.generate(args.link_id, args.bits)
        for path in args.paths:
            auth_secret.write(secret, path, overwrite=args.force)
    except (ValueError, OSError) as exc:
        print(f"qkdctl auth secret: {exc}", file=sys.stderr)
        return 1
    print(f"authentication secret {secret.secret_id} for link {secret.link_id}: {secret.bits} bits, written to "
          f"{', '.join(args.paths)} (install one at each end as auth_secret_file)")
    return 0
