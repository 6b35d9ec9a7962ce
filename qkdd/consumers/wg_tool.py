"""Runs the `wg` tool (wireguard-tools): install or remove a peer's pre-shared key, read handshake times.

The key goes to `wg set IF peer PUB preshared-key /dev/stdin` through a pipe, base64-encoded as wg
expects: never in argv (other users can read /proc/*/cmdline), never in a file, never in a log. Errors
carry wg's own message (which never echoes the key) and the exit status. Only CAP_NET_ADMIN is needed.
"""
from __future__ import annotations

import base64
import re

import trio

from qkdd.consumers.sink import SinkError

PSK_BYTES = 32
WG_TIMEOUT_S = 10.0
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,14}")


class WgError(SinkError):
    """`wg` failed; the message holds wg's stderr and never key material."""


def check_public_key(text: str) -> str | None:
    """What is wrong with a WireGuard public key (44 characters of base64), or None."""
    return None if _PUBLIC_KEY.fullmatch(text) else "must be a WireGuard public key (44 characters of base64)"


def check_interface(text: str) -> str | None:
    return None if _INTERFACE.fullmatch(text) else "must be a network interface name (1-15 characters)"


class WgTool:
    """`wg` for one interface and one peer."""

    def __init__(self, interface: str, peer_public_key: str, *, wg_command: str = "wg") -> None:
        self.interface = interface
        self.peer_public_key = peer_public_key
        self.wg_command = wg_command

    async def set_psk(self, psk: bytes) -> None:
        """Install `psk` (32 bytes) as the peer's pre-shared key."""
        if len(psk) != PSK_BYTES:
            raise ValueError(f"a WireGuard pre-shared key is {PSK_BYTES} bytes")
        await self._run(["set", self.interface, "peer", self.peer_public_key, "preshared-key", "/dev/stdin"],
                        stdin=base64.b64encode(psk) + b"\n")

    async def clear_psk(self) -> None:
        """Remove the peer's pre-shared key: WireGuard falls back to Curve25519 alone."""
        # wg(8): "If /dev/null or another empty file is specified ... the key is removed from the device."
        await self._run(["set", self.interface, "peer", self.peer_public_key, "preshared-key", "/dev/null"],
                        stdin=b"")

    async def latest_handshake_s(self) -> float | None:
        """Unix time of the peer's last handshake, or None when there was none (or the peer is unknown)."""
        output = await self._run(["show", self.interface, "latest-handshakes"], stdin=b"")
        for line in output.decode(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) == 2 and fields[0] == self.peer_public_key:
                seconds = int(fields[1]) if fields[1].isdigit() else 0
                return float(seconds) if seconds > 0 else None
        return None

    async def _run(self, args: list[str], *, stdin: bytes) -> bytes:
        try:
            with trio.fail_after(WG_TIMEOUT_S):
                result = await trio.run_process([self.wg_command, *args], stdin=stdin, capture_stdout=True,
                                                capture_stderr=True, check=False)
        except trio.TooSlowError:
            raise WgError(f"wg {args[0]} {self.interface}: no answer within {WG_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise WgError(f"cannot run {self.wg_command}: {exc.strerror or exc}") from None
        if result.returncode != 0:
            problem = result.stderr.decode(errors="replace").strip().splitlines()
            raise WgError(f"wg {args[0]} {self.interface} exited with {result.returncode}: "
                          f"{problem[-1] if problem else 'no message'}")
        return result.stdout
