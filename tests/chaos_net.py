"""The chaos tests' network: two namespaces joined by two veth pairs, and the faults applied to them.

The classical channel (the daemons' peer session) runs over one pair, the simulated quantum channel over
the other (a fiber is not the classical network: faults are applied to the classical pair only). This
kernel has no `netem`, so faults are made of what it has: `iptables -m statistic` drops a share of the
packets (loss), `iptables -j DROP` on one or both ends' input cuts the path (partition, asymmetric
partition), `tc tbf` caps the bandwidth, and an `htb` class fed by `iptables -m statistic -j CLASSIFY`
delays a share of the packets behind the rest (real TCP segment reordering). Latency is added in user
space (bench/chaos_proxy.py). Addresses are test addresses inside namespaces these tests create
(10.233.N.0/24 classical, 10.234.N.0/24 fiber); nothing leaves them.

Clients reach the daemons' APIs (on each namespace's loopback) from this process: `hop(netns)` moves the
calling thread into a namespace (setns(2) acts on one thread), and a socket stays in the namespace it was
made in.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.wireguard_support import run

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_thread_netns = threading.local()
ROOT_NETNS_PATH = "/proc/1/ns/net"

TOOLS = ("ip", "iptables", "tc", "mount", "umount")


def missing_requirements() -> str | None:
    """Why the chaos tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, tc, tmpfs mounts)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/system-packages.txt)"
    probe = subprocess.run(["iptables", "-m", "statistic", "-h"], capture_output=True)
    if probe.returncode != 0:
        return "needs iptables with the statistic match"
    return None


def hop(netns: str | None) -> None:
    """Move the calling thread into network namespace `netns` (None: the host's). Sockets the thread makes
    from now on belong to it; sockets made before stay where they were made."""
    if getattr(_thread_netns, "name", None) == netns:
        return
    path = ROOT_NETNS_PATH if netns is None else f"/var/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)
    _thread_netns.name = netns


@dataclass
class Side:
    netns: str
    classical_if: str
    classical_ip: str
    fiber_if: str
    fiber_ip: str

    def ns(self, *args: str, check: bool = True) -> str:
        return run("ip", "netns", "exec", self.netns, *args, check=check)


class NetnsPair:
    """Namespaces `a` and `b`, a classical and a fiber veth pair between them. Faults act on the classical
    pair; `clear()` removes every one of them."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        subnet = 1 + os.getpid() % 250
        self.a = Side(f"qkch{tag}a", f"qkc{tag}a", f"10.233.{subnet}.1", f"qkf{tag}a", f"10.234.{subnet}.1")
        self.b = Side(f"qkch{tag}b", f"qkc{tag}b", f"10.233.{subnet}.2", f"qkf{tag}b", f"10.234.{subnet}.2")

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.a, self.b)

    def up(self) -> "NetnsPair":
        for side in self.sides:
            run("ip", "netns", "add", side.netns)
            run("ip", "-n", side.netns, "link", "set", "lo", "up")
        for kind in ("classical", "fiber"):
            a_if, b_if = getattr(self.a, f"{kind}_if"), getattr(self.b, f"{kind}_if")
            run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
            for side, interface in ((self.a, a_if), (self.b, b_if)):
                run("ip", "link", "set", interface, "netns", side.netns)
                run("ip", "-n", side.netns, "addr", "add", f"{getattr(side, f'{kind}_ip')}/24", "dev", interface)
                run("ip", "-n", side.netns, "link", "set", interface, "up")
        return self

    def down(self) -> None:
        for side in self.sides:
            run("ip", "netns", "del", side.netns, check=False)

    # -- faults on the classical pair -------------------------------------------------------------------

    def loss(self, fraction: float) -> None:
        """Each end drops `fraction` of the packets it receives on the classical pair (both directions)."""
        for side in self.sides:
            side.ns("iptables", "-A", "INPUT", "-i", side.classical_if, "-m", "statistic", "--mode", "random",
                    "--probability", f"{fraction:.4f}", "-j", "DROP")

    def partition(self, *, a_hears_b: bool = False, b_hears_a: bool = False) -> None:
        """Cut the classical pair: a side that does not hear the other drops all it receives from it
        (both False: a full partition; one True: an asymmetric one)."""
        for side, hears in ((self.a, a_hears_b), (self.b, b_hears_a)):
            if not hears:
                side.ns("iptables", "-A", "INPUT", "-i", side.classical_if, "-j", "DROP")

    def bandwidth(self, rate: str) -> None:
        """Cap each end's sending rate on the classical pair (tc tbf), e.g. "2mbit"."""
        for side in self.sides:
            side.ns("tc", "qdisc", "replace", "dev", side.classical_if, "root", "tbf", "rate", rate,
                    "burst", "32kbit", "latency", "400ms")

    def reorder(self, fraction: float, slow_rate: str = "1mbit") -> None:
        """Each end sends `fraction` of its classical packets through a slow htb class, so later packets
        overtake them (segment reordering that TCP below the daemons must repair)."""
        for side in self.sides:
            dev = side.classical_if
            side.ns("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
            side.ns("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit")
            side.ns("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", slow_rate,
                    "ceil", slow_rate)
            side.ns("iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", dev, "-m", "statistic", "--mode",
                    "random", "--probability", f"{fraction:.4f}", "-j", "CLASSIFY", "--set-class", "1:20")

    def clear(self) -> None:
        for side in self.sides:
            side.ns("iptables", "-F", "INPUT")
            side.ns("iptables", "-t", "mangle", "-F", "POSTROUTING")
            side.ns("tc", "qdisc", "del", "dev", side.classical_if, "root", check=False)

    def reordered_segments(self) -> int:
        """TCP's count of reordering it detected, both namespaces together (nstat TcpExtTCPSACKReorder and
        out-of-order queue entries)."""
        total = 0
        for side in self.sides:
            out = side.ns("nstat", "-az", "TcpExtTCPSACKReorder", "TcpExtTCPOFOQueue", check=False)
            for line in out.splitlines():
                fields = line.split()
                if len(fields) >= 2 and fields[0].startswith("TcpExt") and fields[1].isdigit():
                    total += int(fields[1])
        return total


class Tmpfs:
    """A small tmpfs mounted at `path` (a key store's filesystem that can be filled)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.filler = path / "filler"
        self.mounted = False

    def mount(self) -> "Tmpfs":
        self.path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0700", "tmpfs", str(self.path))
        self.mounted = True
        return self

    def fill(self) -> int:
        """Write a filler file until the filesystem is full; returns its size in bytes."""
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(self.filler, "ab", buffering=0) as handle:
            while True:
                try:
                    written += handle.write(chunk)
                except OSError:
                    break
            while True:                      # the last partial block
                try:
                    written += handle.write(b"\0" * 4096)
                except OSError:
                    break
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            run("umount", "-l", str(self.path), check=False)
            self.mounted = False
