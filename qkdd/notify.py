"""systemd service notifications (sd_notify(3)) through sdnotify: READY, STATUS, WATCHDOG, STOPPING.

Without NOTIFY_SOCKET every call is a no-op. The watchdog interval is half of WATCHDOG_USEC, and only
when WATCHDOG_PID is unset or names this process (systemd sets it for the main PID). The variables are
removed from the environment once read, so child processes (e.g. `wg`) do not inherit them.
"""
from __future__ import annotations

import logging
import os
from typing import MutableMapping

import sdnotify
import trio

log = logging.getLogger("qkdd.notify")

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self) -> None:
        environ = os.environ                     # sdnotify reads NOTIFY_SOCKET from here too
        self.socket_path = environ.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = _watchdog_interval_s(environ)
        self._notifier = sdnotify.SystemdNotifier() if self.socket_path else None
        if self._notifier is not None and self._notifier.socket is not None:
            # A datagram to a full receive queue must not block the event loop; it is dropped instead.
            self._notifier.socket.setblocking(False)
        elif self.socket_path:
            log.warning("cannot reach NOTIFY_SOCKET", extra={"notify_socket": self.socket_path})
        for name in _VARIABLES:
            environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        return self._notifier is not None and self._notifier.socket is not None

    def send(self, *assignments: str) -> None:
        """Send `KEY=VALUE` lines in one datagram."""
        if self.enabled:
            self._notifier.notify("\n".join(assignments))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={_one_line(status)}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog every half interval until cancelled (returns at once when there is none)."""
        if self.watchdog_interval_s is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await trio.sleep(self.watchdog_interval_s)


def _watchdog_interval_s(environ: MutableMapping[str, str]) -> float | None:
    usec_text = environ.get("WATCHDOG_USEC", "")
    pid_text = environ.get("WATCHDOG_PID", "")
    if not usec_text:
        return None
    if pid_text and pid_text.strip() != str(os.getpid()):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC", extra={"value": usec_text[:32]})
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1e6


def _one_line(text: str) -> str:
    return " ".join(text.split())
