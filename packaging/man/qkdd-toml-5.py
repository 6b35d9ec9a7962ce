"""Write the man page qkdd.toml(5) from the commented example configuration etc/qkdd/qkdd.toml, which names
every key the daemon accepts (tests/test_config.py holds it to that): each key with its example value and
comment, grouped by table. Run `make man` after changing the example; tests/test_man_pages.py checks that
the page is current."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = re.compile(r"^#?\s*(\[\[?[a-z0-9_.]+\]\]?)")
KEY = re.compile(r"^#?\s*([a-z_0-9]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
CONTINUATION = re.compile(r"^\s+#\s?(.*)$")

HEADER = r""".TH QKDD.TOML 5 "2026-12-06" "qkdd 0.1.0" "File Formats"
.SH NAME
qkdd.toml \- configuration of the qkdd quantum key distribution agent
.SH SYNOPSIS
.I /etc/qkdd/qkdd.toml
.SH DESCRIPTION
.BR qkdd (8)
reads one TOML file at start,
.I /etc/qkdd/qkdd.toml
or the file
.B qkdd run \-\-config
names.
Every key is optional unless marked required; an unknown key, a wrong type or a value out of range stops
the daemon with one line
.B config error:
.I key: what
and exit status 2.
.B qkdd check\-config
prints the effective configuration (the file plus the environment, secrets shown as ***).
A link the daemon will not run (a driver or protocol without a link engine, which today is everything
but driver sim with protocol bb84, or no peer identities) is accepted with a warning and stays
.I configured
in /healthz, which names the reason.
.SH ENVIRONMENT
These variables override the file (an empty value counts as unset):
.TP
.BR QKD_API_LISTEN ", " QKD_HEALTH_LISTEN
api.listen and health.listen, host:port.
.TP
.BR QKD_STATE_DIR ", " QKD_LOG_LEVEL
daemon.state_dir and daemon.log_level.
.TP
.BR KMS_CLIENT_ID ", " KMS_CLIENT_SECRET
kms.client_id and kms.client_secret (the secret also comes from the systemd credential kms\-client\-secret).
.TP
.BR QKD_LINK_ID ", " QKD_LINK_ROLE ", " QKD_DRIVER ", " QKD_DEVICE_ADDR ", " QKD_PROTOCOL ", " \
QKD_QBER_THRESHOLD ", " QKD_KEY_ROTATION_INTERVAL
the first [[links]] entry (created when there is none).
.SH KEYS
Each table with its keys, an example value and what it does, as in the commented example the package
installs as
.IR /etc/qkdd/qkdd.toml .
"""
FOOTER = r""".SH NOTES
The [kms] table is read and validated, but this version pushes no keys to a KMS: nothing uses it yet.
.SH SEE ALSO
.BR qkdd (8),
.BR qkdctl (1),
.I /usr/share/doc/qkdd/README.md
"""


def escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def render(example: str) -> str:
    """Tables become subsections and keys tagged paragraphs; a comment block just above a table or a key
    (a block of whole-line comments that are not commented-out keys) is its text, with the key's own
    trailing comment (and its continuation lines) after it."""
    out: list = [HEADER]
    block: list[str] = []                 # whole-line comments since the last table or key
    current: list[str] | None = None      # the text of the key whose continuation lines may follow
    seen_table = False
    for line in example.splitlines():
        table = TABLE.match(line)
        if table:
            out.append(f".SS {escape(table.group(1))}\n")
            if block and seen_table:
                out.append(escape(" ".join(block)) + "\n")
            block, current, seen_table = [], None, True
            continue
        if current is not None and CONTINUATION.match(line):
            current.append(CONTINUATION.match(line).group(1).strip())
            continue
        key = KEY.match(line)
        if key and seen_table and not line.startswith("#   "):
            name, value, comment = key.groups()
            current = block + ([comment.strip()] if comment else [])
            out.append({"name": name, "value": value, "text": current})
            block = []
            continue
        current = None
        if line.startswith("#"):
            block.append(line.lstrip("#").strip())
        else:
            block = []
    lines = []
    for item in out:
        if isinstance(item, str):
            lines.append(item)
            continue
        lines.append(f".TP\n.B {escape(item['name'])}\n")
        said = " ".join(part for part in item["text"] if part)
        value = f"Example: {escape(item['value'])}" if item["value"] else ""
        lines.append(escape(said) + ("\n.br\n" if said else "") + value + "\n")
    return "".join(lines) + FOOTER


def main() -> int:
    sys.stdout.write(render((ROOT / "etc/qkdd/qkdd.toml").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
