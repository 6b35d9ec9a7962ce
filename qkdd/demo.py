"""`make demo`: start qkdd with the example config, show /healthz, /v1/links and /metrics, stop it.

The daemon runs as a child process with the example configuration (etc/qkdd/qkdd.toml), a temporary
state directory and ephemeral loopback ports (environment overrides), and a notify socket, the way
systemd would run it: the demo waits for READY=1, queries it, sends SIGTERM and expects exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "qkdd" / "qkdd.toml"
READY_TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdd.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(EXAMPLE_CONFIG), help="config file (default: the example)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qkdd-demo-") as workdir:
        return run_demo(Path(args.config), Path(workdir))


def run_demo(config: Path, workdir: Path) -> int:
    notify_path = str(workdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("QKD_", "KMS_"))}
        env.update(QKD_STATE_DIR=str(workdir / "state"), QKD_API_LISTEN="127.0.0.1:0",
                   QKD_HEALTH_LISTEN="127.0.0.1:0", NOTIFY_SOCKET=notify_path)
        command = [sys.executable, "-m", "qkdd", "run", "--config", str(config)]
        print(f"$ QKD_STATE_DIR={workdir}/state QKD_API_LISTEN=127.0.0.1:0 QKD_HEALTH_LISTEN=127.0.0.1:0 "
              f"qkdd run --config {config}")
        daemon = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        log = _DaemonLog(daemon)
        try:
            status = _wait_ready(notify, daemon)
            if status is None:
                print("qkdd did not become ready", file=sys.stderr)
                return 1
            log.print_new()
            print(f"\nsystemd notify: READY=1, STATUS={status}")
            api, health = _addresses(status)
            _show(health, api)
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
            log.finish()
        print("\n$ kill -TERM <qkdd>")
        log.print_new()
        print(f"qkdd stopped with exit status {code}")
        return 0 if code == 0 else 1


def _wait_ready(notify: socket.socket, daemon: subprocess.Popen) -> str | None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and daemon.poll() is None:
        notify.settimeout(0.2)
        try:
            message = notify.recv(4096).decode()
        except socket.timeout:
            continue
        lines = message.split("\n")
        if "READY=1" in lines:
            return next((line[len("STATUS="):] for line in lines if line.startswith("STATUS=")), "")
    return None


def _addresses(status: str) -> tuple[str, str]:
    api = re.search(r"api (\S+?),", status)
    health = re.search(r"health (\S+)$", status)
    if not (api and health):
        raise RuntimeError(f"cannot find the listener addresses in STATUS={status!r}")
    return api.group(1), health.group(1)


def _show(health: str, api: str) -> None:
    with httpx.Client(timeout=5) as client:
        response = client.get(f"http://{health}/healthz")
        print(f"\n$ curl http://{health}/healthz        -> {response.status_code}")
        print(json.dumps(response.json(), indent=2))
        response = client.get(f"http://{api}/v1/links")
        print(f"\n$ curl http://{api}/v1/links        -> {response.status_code}")
        print(json.dumps(response.json(), indent=2))
        response = client.get(f"http://{health}/metrics")
        print(f"\n$ curl http://{health}/metrics        -> {response.status_code} "
              f"({response.headers['content-type']}), a few lines:")
        shown = [line for line in response.text.splitlines()
                 if line.startswith(("qkd_", "# TYPE qkd_", "process_resident_memory_bytes", "process_open_fds"))]
        print("\n".join(shown[:16]))


class _DaemonLog:
    """Collects the daemon's stderr in a thread; the demo prints it between its own sections."""

    def __init__(self, daemon: subprocess.Popen):
        self._lines: list[str] = []
        self._printed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(daemon,), daemon=True)
        self._thread.start()

    def _read(self, daemon: subprocess.Popen) -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            with self._lock:
                self._lines.append(line.rstrip())

    def finish(self) -> None:
        self._thread.join(5)

    def print_new(self) -> None:
        with self._lock:
            new, self._printed = self._lines[self._printed:], len(self._lines)
        for line in new:
            print(f"  qkdd | {line}")


if __name__ == "__main__":
    sys.exit(main())
