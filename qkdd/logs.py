"""Structured single-line logs on stderr: `level=info logger=qkdd.daemon msg="..." key=value ...`.

Extra fields come from `logger.info("msg", extra={...})`. Under journald (JOURNAL_STREAM names our
stderr) each line starts with the sd-daemon(3) priority prefix `<N>` and carries no timestamp (the
journal adds one); elsewhere it starts with an ISO-8601 UTC timestamp. Exceptions are folded into the
line (`exc=`, `traceback=`; an exception group's traceback shows its members), so one event is always one line.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from typing import IO

_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}
# Inside quotes: backslash and quote escaped, and every control character (C0, DEL, C1, the Unicode line
# separators) written as an escape, so a client-supplied value can neither split the line nor reach a
# terminal as a control sequence.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})
_PLAIN = re.compile(r"[-._:/@\[\]+,%0-9A-Za-z]+")      # written without quotes (ASCII; the rest is quoted)
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, journal: bool):
        super().__init__()
        self.journal = journal
        self._second = -1                 # the timestamp of the last line, down to the second
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.journal:
            prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        else:
            prefix = ""
            second = int(record.created)
            if second != self._second:        # strftime once a second, not once a line
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            parts.append(f"ts={self._second_text}.{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname.lower()}", f"logger={record.name}",
                  f"msg={_quote(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key[:1] != "_":
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            parts.append(f"exc={_quote(f'{exc_type.__name__}: {exc}')}")
            if isinstance(exc, BaseExceptionGroup):   # the cause is in the members (trio nurseries): show them
                parts.append(f"traceback={_quote(''.join(traceback.format_exception(exc_type, exc, tb)))}")
            else:
                parts.append(f"traceback={_quote(''.join(traceback.format_tb(tb)))}")
        return prefix + " ".join(parts)


def _quote(value: object) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def stream_is_journal(stream: IO[str]) -> bool:
    """True when `stream` is the journald stream systemd connected us to (JOURNAL_STREAM=dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def configure(level: str = "info", stream: IO[str] | None = None) -> logging.Logger:
    """Route the `qkdd` logger tree to `stream` (stderr) at `level`; returns the `qkdd` logger.

    Lines name no source file, thread or process, so records skip finding them (the stack walk and
    system calls per record: the logging HOWTO's "Optimization" section)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(journal=stream_is_journal(stream)))
    root = logging.getLogger("qkdd")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
    return root
