"""Two strongSwan charon daemons (charon-systemd, Debian's strongswan packages) in two network namespaces
joined by a veth pair, for the IKEv2 PPK tests. ESP runs in user space (the kernel-libipsec plugin and a
TUN device), since the kernel may lack ESP; each daemon has its own strongswan.conf, VICI socket and log
file, and its swanctl.conf loaded with the real `swanctl --load-all`."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

CHARON = "/usr/sbin/charon-systemd"
LIBIPSEC_PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"
VICI_PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-vici.so"
PSK = "a-classical-psk-only-for-this-test"


def missing_requirements() -> str | None:
    """Why the charon tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (kernel-libipsec needs TUN)"
    for path, package in ((CHARON, "charon-systemd"), (LIBIPSEC_PLUGIN, "libcharon-extra-plugins"),
                          (VICI_PLUGIN, "strongswan-swanctl")):
        if not os.path.exists(path):
            return f"{path} missing (Debian package {package}, scripts/system-packages.txt)"
    for tool in ("ip", "swanctl", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        import vici  # noqa: F401
    except ImportError:
        return "the vici package is not installed"
    return None


def run(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result


STRONGSWAN_CONF = """\
charon-systemd {{
  load = random nonce openssl aes sha1 sha2 hmac kdf gcm pem pkcs1 x509 pubkey kernel-libipsec kernel-netlink \
         socket-default vici
  port = 500
  port_nat_t = 4500
  retransmit_tries = 2
  retransmit_timeout = 1.0
  journal {{
    default = -1
  }}
  filelog {{
    main {{
      path = {log}
      time_format = %T
      flush_line = yes
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici}
    }}
    kernel-netlink {{
      fwmark = !0x42
    }}
    socket-default {{
      fwmark = 0x42
    }}
    kernel-libipsec {{
      allow_peer_ts = yes
    }}
  }}
}}
"""

SWANCTL_CONF = """\
# {name}: IKEv2 with a PSK, and a post-quantum PPK (RFC 8784) required: the consumer sets ppk_id.
connections {{
  qkd {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = aes256-sha256-x25519
    ppk_required = yes
    local {{
      auth = psk
      id = {me_id}
    }}
    remote {{
      auth = psk
      id = {peer_id}
    }}
    children {{
      net {{
        local_ts = {me}/32
        remote_ts = {peer}/32
        esp_proposals = aes256gcm16
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-qkd {{
    id-a = site-a
    id-b = site-b
    secret = "{psk}"
  }}
}}
"""


class CharonEnd:
    def __init__(self, root: Path, netns: str, name: str, veth: str, ip: str, peer_ip: str, peer_name: str):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.netns, self.name, self.veth, self.ip, self.peer_ip = netns, name, veth, ip, peer_ip
        self.vici = str(self.dir / "charon.vici")
        self.log_path = self.dir / "charon.log"
        self.conf = self.dir / "strongswan.conf"
        self.swanctl_conf = self.dir / "swanctl.conf"
        self.conf.write_text(STRONGSWAN_CONF.format(log=self.log_path, vici=self.vici))
        self.swanctl_conf.write_text(SWANCTL_CONF.format(name=name, me=ip, peer=peer_ip, me_id=name, peer_id=peer_name,
                                                         psk=PSK))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["ip", "netns", "exec", self.netns, "env", f"STRONGSWAN_CONF={self.conf}",
                                         CHARON], stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr", "wb"))
        deadline = time.monotonic() + 20
        while not self._vici_answers():
            if self.process.poll() is not None:
                raise AssertionError(f"charon in {self.netns} exited {self.process.returncode}: "
                                     f"{(self.dir / 'stderr').read_text()[-500:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"charon in {self.netns}: no VICI socket within 20 s")
            time.sleep(0.05)
        run("swanctl", "--load-all", "--noprompt", "--uri", f"unix://{self.vici}", "--file", str(self.swanctl_conf))

    def _vici_answers(self) -> bool:
        if not os.path.exists(self.vici):
            return False
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(self.vici)
                return True
            except OSError:
                return False

    def session(self):
        import vici
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(self.vici)
        return vici.Session(sock)

    def ike_sas(self) -> list[dict]:
        """Every IKE SA: {uniqueid, state, ppk, children: {name: {state, packets_in, packets_out}}}."""
        found = []
        for entry in self.session().list_sas():
            for _, sa in entry.items():
                children = {name: {"state": child["state"].decode(), "packets_in": int(child.get("packets-in", 0)),
                                   "packets_out": int(child.get("packets-out", 0))}
                            for name, child in sa.get("child-sas", {}).items()}
                found.append({"uniqueid": sa["uniqueid"].decode(), "state": sa["state"].decode(),
                              "ppk": sa.get("ppk", b"no").decode(), "children": children})
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ping_peer(self, count: int = 2) -> bool:
        result = subprocess.run(["ip", "netns", "exec", self.netns, "ping", "-c", str(count), "-W", "2", "-i", "0.2",
                                 self.peer_ip], capture_output=True, timeout=30)
        return result.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class CharonPair:
    """site-a (10.77.x.1, the initiator) and site-b (10.77.x.2) in namespaces of their own."""

    def __init__(self, root: Path):
        tag = uuid.uuid4().hex[:6]
        self.netns = (f"qkdsa{tag}", f"qkdsb{tag}")
        self.veth = (f"qsa{tag}", f"qsb{tag}")
        subnet = 10 + int(tag[:2], 16) % 200
        ips = (f"10.77.{subnet}.1", f"10.77.{subnet}.2")
        self.a = CharonEnd(root, self.netns[0], "site-a", self.veth[0], ips[0], ips[1], "site-b")
        self.b = CharonEnd(root, self.netns[1], "site-b", self.veth[1], ips[1], ips[0], "site-a")

    def up(self) -> "CharonPair":
        try:
            for netns in self.netns:
                run("ip", "netns", "add", netns)
                run("ip", "-n", netns, "link", "set", "lo", "up")
            run("ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
            for end in (self.a, self.b):
                run("ip", "link", "set", end.veth, "netns", end.netns)
                run("ip", "-n", end.netns, "addr", "add", f"{end.ip}/24", "dev", end.veth)
                run("ip", "-n", end.netns, "link", "set", end.veth, "up")
            for end in (self.a, self.b):
                end.start()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for end in (self.a, self.b):
            end.stop()
        for netns in self.netns:
            run("ip", "netns", "del", netns, check=False)
