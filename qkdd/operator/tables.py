"""Plain-text tables of a daemon snapshot (snapshot.py) for a terminal: status, links, keys, health."""
from __future__ import annotations

from typing import Any, Callable, Sequence

Column = tuple[str, Callable[[dict], str]]


def table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """Left-aligned columns, two spaces apart, a header line on top."""
    cells = [[title for title, _ in columns]] + [[fill(row) for _, fill in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def _num(value: Any, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _rate(bps: Any) -> str:
    if bps is None:
        return "-"
    for scale, unit in ((1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def _qber(row: dict) -> str:
    return "-" if row.get("qber") is None else f"{row['qber'] * 100:.2f} %"


def _consumers(row: dict) -> str:
    pushes = row.get("kms_pushes")
    if not pushes:
        return "-"
    return f"kms {pushes.get('success', 0):.0f} ok / {pushes.get('failure', 0):.0f} failed"


STATUS_COLUMNS: list[Column] = [
    ("LINK", lambda r: r["link_id"]), ("STATE", lambda r: r.get("state") or "-"), ("QBER", _qber),
    ("BAND", lambda r: r.get("qber_band") or "-"), ("SECURE", lambda r: _rate(r.get("secure_key_rate_bps"))),
    ("SIFTED", lambda r: _rate(r.get("raw_key_rate_bps"))), ("STOCK", lambda r: _num(r.get("keys_available"))),
    ("FILL", lambda r: _num(r.get("keystore_fill_ratio"), "{:.0%}")), ("CONSUMERS", _consumers),
]
LINK_COLUMNS: list[Column] = [
    ("LINK", lambda r: r["link_id"]), ("ROLE", lambda r: r.get("role") or "-"),
    ("DRIVER", lambda r: r.get("driver") or "-"), ("PROTOCOL", lambda r: r.get("protocol") or "-"),
    ("STATE", lambda r: r.get("state") or "-"), ("SINCE", lambda r: r.get("since") or "-"),
    ("DETAIL", lambda r: r.get("detail") or "-"),
]
KEY_COLUMNS: list[Column] = [
    ("LINK", lambda r: r["link_id"]), ("AVAILABLE", lambda r: _num(r.get("keys_available"))),
    ("RESERVED", lambda r: _num(r.get("keys_reserved"))), ("PENDING", lambda r: _num(r.get("keys_pending"))),
    ("GENERATED", lambda r: _num(r.get("keys_generated"))),
    ("BITS", lambda r: _num(r.get("key_bits_generated"))),
    ("FILL", lambda r: _num(r.get("keystore_fill_ratio"), "{:.0%}")),
]
HEALTH_COLUMNS: list[Column] = [
    ("LINK", lambda r: r["link_id"]), ("STATE", lambda r: r.get("state") or "-"),
    ("HEALTHY", lambda r: {True: "yes", False: "NO"}.get(r.get("healthy"), "-")),
    ("ALARMS", lambda r: ",".join(r.get("alarms") or []) or "-"), ("DETAIL", lambda r: r.get("detail") or "-"),
]
TUNNEL_COLUMNS: list[Column] = [
    ("TUNNEL", lambda r: r["tunnel"]), ("PSK AGE", lambda r: _num(r.get("psk_age_s"), "{:.0f} s")),
    ("ROTATIONS", lambda r: " ".join(f"{k}={v:.0f}" for k, v in sorted(r["rotations"].items()) if v) or "-"),
]


def header(snapshot: dict) -> str:
    daemon = snapshot.get("daemon") or {}
    uptime = daemon.get("uptime_s")
    line = (f"qkdd {daemon.get('state', '?')}, {snapshot.get('status')} (HTTP {snapshot.get('http_status')})"
            + (f", up {uptime:.0f} s" if isinstance(uptime, (int, float)) else "") + f"  at {snapshot.get('time')}")
    if snapshot.get("api_error"):
        line += f"\nAPI not read: {snapshot['api_error']}"
    return line


def status(snapshot: dict) -> str:
    parts = [header(snapshot), "", table(snapshot["links"], STATUS_COLUMNS) if snapshot["links"] else "no links"]
    if snapshot.get("tunnels"):
        parts += ["", table(snapshot["tunnels"], TUNNEL_COLUMNS)]
    return "\n".join(parts)


def links(snapshot: dict) -> str:
    return table(snapshot["links"], LINK_COLUMNS) if snapshot["links"] else "no links"


def keys(snapshot: dict) -> str:
    return table(snapshot["links"], KEY_COLUMNS) if snapshot["links"] else "no links"


def health(snapshot: dict) -> str:
    return header(snapshot) + "\n\n" + (table(snapshot["links"], HEALTH_COLUMNS) if snapshot["links"] else "no links")
