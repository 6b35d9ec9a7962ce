"""The configuration file a package installs: etc/qkdd/qkdd.toml with both listeners on this host only.

A fresh install must not serve the network before the operator has configured TLS and clients, so the
`listen` lines of [api] and [health] are rewritten to 127.0.0.1 (keeping their ports, adding the line when
a table has none) and the result is checked with the TOML parser; anything else fails the build.
usage: python3 packaged-config.py SOURCE DEST
"""
from __future__ import annotations

import ipaddress
import re
import sys
import tomllib

LISTENERS = {"api": 8071, "health": 8072}   # table -> default port
LOCAL_HOST = "127.0.0.1"
NOTE = ("# Packaged default: this host only. Listen on the network (e.g. \"0.0.0.0:{port}\") once TLS and the\n"
        "# allowed client certificates are configured.\n")
TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
LISTEN = re.compile(r"""^(\s*listen\s*=\s*)(["'])([^"']*)\2(.*)$""")


def localise(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    table = ""
    seen: set[str] = set()
    for line in lines:
        header = TABLE.match(line)
        if header:
            _add_missing(out, table, seen)
            table = header.group(1)
            out.append(line)
            continue
        listen = LISTEN.match(line)
        if table in LISTENERS and listen:
            port = listen.group(3).rpartition(":")[2] or str(LISTENERS[table])
            out.append(NOTE.format(port=port))
            out.append(f'{listen.group(1)}"{LOCAL_HOST}:{port}"{listen.group(4)}\n')
            seen.add(table)
            continue
        out.append(line)
    _add_missing(out, table, seen)
    missing = set(LISTENERS) - seen
    if missing:  # a listener without its table: append the table
        for name in sorted(missing):
            out.append(f"\n[{name}]\n{NOTE.format(port=LISTENERS[name])}listen = \"{LOCAL_HOST}:{LISTENERS[name]}\"\n")
    return "".join(out)


def _add_missing(out: list[str], table: str, seen: set[str]) -> None:
    """At the end of a listener's table that had no `listen` line, add one."""
    if table in LISTENERS and table not in seen:
        out.append(f"{NOTE.format(port=LISTENERS[table])}listen = \"{LOCAL_HOST}:{LISTENERS[table]}\"\n")
        seen.add(table)


def check(text: str) -> None:
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"packaged-config: the rewritten configuration is not valid TOML: {exc}") from None
    for name in LISTENERS:
        host = config[name]["listen"].rpartition(":")[0].strip("[]")
        if not ipaddress.ip_address(host).is_loopback:
            raise SystemExit(f"packaged-config: {name}.listen is {config[name]['listen']!r}, not this host only")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as source:
        text = localise(source.read())
    check(text)
    with open(argv[2], "w", encoding="utf-8") as dest:
        dest.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
