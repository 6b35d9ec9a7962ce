"""Run `qkdd run` as a real subprocess on ephemeral ports and learn its addresses from its log.

The daemon is configured with port 0 on both listeners; its "ready" log line names the bound
addresses (api_address=..., health_address=...). stderr is read by a thread into a list of lines.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 20.0


def base_config(state_dir: Path, *, api_extra: str = "", health_extra: str = "", links: str | None = None,
                log_level: str = "info") -> str:
    """A config text on 127.0.0.1 port 0 with one simulated link unless `links` says otherwise."""
    if links is None:
        links = '[[links]]\nlink_id = "sim-1"\nrole = "alice"\ndriver = "sim"\npeer_addr = "127.0.0.1:7071"\n'
    return (f'[daemon]\nstate_dir = "{state_dir}"\nlog_level = "{log_level}"\n\n'
            f'[api]\nlisten = "127.0.0.1:0"\n{api_extra}\n\n'
            f'[health]\nlisten = "127.0.0.1:0"\n{health_extra}\n\n{links}')


def clean_env(**overrides: str) -> dict[str, str]:
    """The test environment without any QKD_/KMS_/systemd variables, plus `overrides`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("QKD_", "KMS_")) and key not in (
               "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM")}
    env.update(overrides)
    return env


def run_qkdd(*args: str, env: dict[str, str] | None = None, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkdd", *args], capture_output=True, text=True,
                          env=env if env is not None else clean_env(), timeout=timeout_s)


class Daemon:
    def __init__(self, config_text: str, workdir: Path, env: dict[str, str] | None = None, *,
                 api_tls: bool = False):
        self.api_tls = api_tls
        self.config_path = workdir / "qkdd.toml"
        self.config_path.write_text(config_text)
        self.env = env if env is not None else clean_env()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen | None = None
        self._eof = False                     # stderr closed: the process has exited
        self.api_address: tuple[str, int] | None = None
        self.health_address: tuple[str, int] | None = None

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self, *, wait_ready: bool = True) -> "Daemon":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qkdd", "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=self.env)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if wait_ready:
            line = self.wait_for(r"msg=ready ")
            self.api_address = _address(line, "api_address")
            self.health_address = _address(line, "health_address")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"qkdd did not exit within {timeout_s} s; log:\n{self.log}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # -- log ----------------------------------------------------------------------------------------

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """The first log line matching `pattern`, waiting up to `timeout_s` for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and self._eof):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n{''.join(self.lines)}")
                self._changed.wait(min(remaining, 0.1))

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    # -- addresses ----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api_tls else "http"
        return f"{scheme}://{self.api_address[0]}:{self.api_address[1]}"

    @property
    def health_url(self) -> str:
        return f"http://{self.health_address[0]}:{self.health_address[1]}"


def _address(line: str, key: str) -> tuple[str, int]:
    match = re.search(rf"{key}=(\S+):(\d+)", line)
    assert match, f"no {key} in {line!r}"
    return match.group(1), int(match.group(2))


def wait_until(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll `predicate` every 0.2 s until it holds (an HTTP error from a daemon still starting counts as
    not yet); AssertionError naming `what` after `timeout_s`."""
    import httpx
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
