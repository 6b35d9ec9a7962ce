"""`qkdctl peer-key`: make and inspect the ML-DSA-65 identities that sign the classical-channel handshake."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .identity import (IdentityError, format_fingerprint, generate_identity, key_fingerprint,
                       load_private_key, load_public_key, public_key_base64, save_private_key, save_public_key)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("peer-key", help="ML-DSA-65 identities of the classical channel")
    commands = group.add_subparsers(dest="peer_key_command", required=True, metavar="PEER_KEY_COMMAND")

    generate = commands.add_parser("generate", help="make a key pair: NAME.key (0600) and NAME.pub (PEM)")
    generate.add_argument("--out", required=True, type=Path, help="directory to write the key files into")
    generate.add_argument("--name", required=True, help="file name stem, e.g. the site name")
    generate.add_argument("--force", action="store_true", help="overwrite existing files")
    generate.set_defaults(func=_generate)

    show = commands.add_parser("show", help="print the fingerprint and the base64 public key to pin")
    show.add_argument("path", type=Path, help="a private (.key) or public (.pub) key file")
    show.set_defaults(func=_show)


def generate_key_files(out: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a fresh identity to out/NAME.key (private, 0600) and out/NAME.pub (public PEM)."""
    if not _NAME.match(name):
        raise IdentityError(f"key name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise IdentityError(f"{path} exists; use --force to overwrite")
    key = generate_identity()
    save_private_key(key, private_path, overwrite=overwrite)
    save_public_key(key.public_key(), public_path, overwrite=overwrite)
    return private_path, public_path


def _generate(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = generate_key_files(args.out, args.name, overwrite=args.force)
        public_key = load_public_key(public_path)
    except (IdentityError, OSError) as exc:
        print(f"qkdctl peer-key generate: {exc}", file=sys.stderr)
        return 1
    print(f"private key: {private_path} (mode 0600, keep it on this host)")
    print(f"public key:  {public_path}")
    _print_public(public_key)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        text = args.path.read_text(encoding="ascii", errors="replace")
        if "PRIVATE KEY" in text:
            public_key = load_private_key(args.path).public_key()
        else:
            public_key = load_public_key(args.path)
    except (IdentityError, OSError) as exc:
        print(f"qkdctl peer-key show: {exc}", file=sys.stderr)
        return 1
    _print_public(public_key)
    return 0


def _print_public(public_key) -> None:
    print(f"fingerprint: {format_fingerprint(key_fingerprint(public_key))}")
    print("pin on the other end (peer public key, base64):")
    print(public_key_base64(public_key))
