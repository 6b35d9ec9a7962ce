"""Reads one connection of a swanctl.conf (strongSwan's settings syntax) into the message `load-conn` takes
over VICI, as `swanctl --load-conns` builds it, so the IKEv2 PPK consumer can reload it with a new ppk_id.

Syntax handled: `name { ... }` sections, `key = value` (the value runs to the end of the line, quotes
removed), `#` comments, blank lines. `include` and `$VARIABLE` references are refused with a clear error
(the connection the consumer drives must be written out in the file). Keys swanctl sends as lists
(addresses, proposals, traffic selectors ...) are split on commas, as swanctl does.
"""
from __future__ import annotations

import re

# swanctl/commands/load_conns.c is_list_key(): these keys go out as lists
LIST_KEYS = frozenset({"local_addrs", "remote_addrs", "proposals", "esp_proposals", "ah_proposals", "local_ts",
                       "remote_ts", "vips", "pools", "groups", "cert_policy", "dns", "ca_id"})
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SwanctlConfError(ValueError):
    """The file cannot be read as swanctl.conf, or the connection is not in it."""


def parse(text: str, origin: str = "swanctl.conf") -> dict:
    """The whole settings tree: sections are dicts, values strings."""
    root: dict = {}
    stack = [root]
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{origin}:{number}"
        if line.startswith("include ") or "$" in line:
            raise SwanctlConfError(f"{where}: include and ${{}} references are not supported here")
        if line == "}":
            if len(stack) == 1:
                raise SwanctlConfError(f"{where}: '}}' without a section")
            stack.pop()
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            if not _NAME.fullmatch(name):
                raise SwanctlConfError(f"{where}: bad section name {name!r}")
            section = stack[-1].setdefault(name, {})
            if not isinstance(section, dict):
                raise SwanctlConfError(f"{where}: {name!r} is a value and a section")
            stack.append(section)
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not _NAME.fullmatch(key):
            raise SwanctlConfError(f"{where}: expected 'key = value', 'name {{' or '}}'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        stack[-1][key] = value
    if len(stack) != 1:
        raise SwanctlConfError(f"{origin}: a section is not closed")
    return root


def connection(text: str, name: str, origin: str = "swanctl.conf") -> dict:
    """The `load-conn` body of connection `name` (its value in {name: body})."""
    tree = parse(text, origin)
    conn = tree.get("connections", {}).get(name)
    if not isinstance(conn, dict):
        raise SwanctlConfError(f"{origin}: no connection {name!r} under connections {{ }}")
    return _message(conn)


def _message(section: dict) -> dict:
    message: dict = {}
    for key, value in section.items():
        if isinstance(value, dict):
            message[key] = _message(value)
        elif key in LIST_KEYS:
            message[key] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            message[key] = value
    return message
