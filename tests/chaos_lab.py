"""Two qkdd daemons on a live simulated link in two network namespaces, consumers at both ends, and the
knobs the chaos scenarios turn (bench/chaos.py, tests/test_chaos_netns.py).

Alice (namespace a) runs the simulated source and listens for the classical channel on her classical
veth address; Bob (namespace b) dials it through the delay proxy (bench/chaos_proxy.py, in his
namespace, on 127.0.0.1), whose path settings the scenarios change at run time. The quantum channel runs
over the second veth pair, which no fault touches. Each daemon's state directory is a small tmpfs of its
own (a full filesystem is one of the faults), its key store seeded with the same keys at both ends before
start (`seed_stores`). Both daemons run under libfaketime when it is installed,
with an offset read from a file (0 until a scenario steps the clock), and the monotonic clock left real.
The API listens on each namespace's loopback, over mTLS with the SAEs `sae-a` (at Alice's KME) and
`sae-b` (at Bob's); certificates are issued two hours back, as a deployment's are, so that a clock stepped
back an hour still finds them valid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from qkdd.hal.sim.settings import MAX_FRAME_SLOTS
from qkdd.keystore import KeyStore, create_kek
from qkdd.keystore.kek import KEK_FILE
from qkdd.link.service import KEYSTORE_FILE
from qkdd.loop_watch import TRACE_ENV
from qkdd.peer import generate_identity, save_private_key, save_public_key
from qkdd.pki import pki_paths
from tests.chaos_load import Book, Driver, EndApi, Flow, audit_stores
from tests.chaos_net import NetnsPair, Tmpfs, hop
from tests.wireguard_support import QkddInNetns, wait_for

LINK_ID = "chaos"
PEER_PORT = 7443            # Alice's classical channel, on her classical veth address
PROXY_PORT = 7444           # the delay proxy in Bob's namespace
QUANTUM_PORT = 7081         # the simulated device's quantum channel, on Alice's fiber veth address
API_PORT, HEALTH_PORT = 8071, 8072
STORE_FS_BYTES = 64 << 20   # each end's state directory (tmpfs)
FAKETIME_LIBS = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))     # Debian's libfaketime
FAKETIME_LIB = FAKETIME_LIBS[0] if FAKETIME_LIBS else None
PKI_ISSUED_BEFORE = "-2h"
STALL_TRACE_S = 0.25      # a tick still running after this long has its stack sampled
KEY_BYTES = 32
SEEDED_EXPIRY_S = 86400.0   # as the link's default key_expiry_s
ENDS = {"a": ("alice", "kme-a", "sae-a"), "b": ("bob", "kme-b", "sae-b")}


def in_thread(call):
    """call() in a thread of its own and its result: a thread that enters a namespace (chaos_net.hop) is
    never this process's main thread, whose children must start in the host's namespace."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def seed_stores(state_dirs: list[Path], count: int) -> None:
    """The same `count` committed keys in both ends' stores (the first end may hand out the even ones, the
    other the odd ones), written through the real KeyStore API before the daemons start: the consumers then
    measure whether the service answers, not how fast this busy machine makes keys (the live link adds
    its own all the while)."""
    keys = [(str(uuid.uuid4()), os.urandom(KEY_BYTES)) for _ in range(count)]
    for index, state_dir in enumerate(state_dirs):
        store = KeyStore(str(state_dir / KEYSTORE_FILE), create_kek(str(state_dir / KEK_FILE)))
        try:
            store.put_pending(LINK_ID, 0, keys, expires_at=time.time() + SEEDED_EXPIRY_S,
                              allocatable=[(n % 2 == 0) == (index == 0) for n in range(count)])
            store.commit_frame(LINK_ID, 0)
        finally:
            store.close()


def faketime_available() -> bool:
    return FAKETIME_LIB is not None and shutil.which("faketime") is not None


class Lab:
    def __init__(self, workdir: Path, *, frame_detections: int = 250_000, clock_hz: float = 2e7,
                 seeded_keys: int = 30_000, interval_s: float = 0.5, fetch_deadline_s: float = 30.0,
                 extra_config: str = "") -> None:
        self.workdir = workdir
        self.frame_detections = frame_detections      # a frame ends at this many detections at Bob
        self.clock_hz = clock_hz                      # the source's pace: frames keep coming, at a modest rate
        self.seeded_keys = seeded_keys
        self.interval_s = interval_s
        self.fetch_deadline_s = fetch_deadline_s
        self.extra_config = extra_config              # TOML appended to both daemons' configurations
        self.net = NetnsPair()
        self.tmpfs = {end: Tmpfs(workdir / f"store-{end}", STORE_FS_BYTES) for end in ENDS}
        self.daemons: dict[str, QkddInNetns] = {}
        self.clock_files = {end: workdir / f"clock-{end}" for end in ENDS}
        self.proxy_settings = workdir / "proxy.json"
        self.proxy: subprocess.Popen | None = None
        self.book = Book()
        self.driver: Driver | None = None
        self.pki = None
        self.apis: dict[str, EndApi] = {}
        self._http: list[httpx.Client] = []
        self.restarts = {end: 0 for end in ENDS}

    # -- set-up and tear-down ----------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        self.net.up()
        self._issue_pki()
        for end in ENDS:
            identity = generate_identity()
            save_private_key(identity, self.workdir / f"{end}.key")
            save_public_key(identity.public_key(), self.workdir / f"{end}.pub")
            self.tmpfs[end].mount()
            (self.tmpfs[end].path / "state").mkdir(mode=0o700)
            self.clock_files[end].write_text("+0\n")
        seed_stores([self.tmpfs[end].path / "state" for end in ENDS], self.seeded_keys)
        self.proxy_settings.write_text("{}")
        self._start_proxy()
        for end in ENDS:
            self.daemons[end] = QkddInNetns(self.side(end).netns, self._write_config(end),
                                            self.workdir / f"{ENDS[end][0]}.log", env=self._daemon_env(end))
            self.daemons[end].start(wait_ready=False)
        for daemon in self.daemons.values():
            daemon.wait_ready()
        self.driver = Driver(self._flows(), interval_s=self.interval_s)

    def down(self) -> None:
        """Stop everything this lab started; each step runs even when one before it failed."""
        steps = []
        if self.driver is not None:
            steps.append(self.driver.stop)
        steps += [daemon.stop for daemon in self.daemons.values()]
        steps.append(self._stop_proxy)
        steps += [client.close for client in self._http]
        steps += [tmpfs.unmount for tmpfs in self.tmpfs.values()]
        steps.append(self.net.down)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:             # noqa: BLE001 - reported after the rest is cleaned up
                errors.append(exc)
        if errors:
            raise errors[0]

    def _stop_proxy(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()

    def side(self, end: str):
        return self.net.a if end == "a" else self.net.b

    def _issue_pki(self) -> None:
        """The development PKI, issued two hours back when libfaketime is there (see the module docstring)."""
        directory = self.workdir / "pki"
        code = ("import sys; from qkdd.pki import init_pki; "
                "init_pki(sys.argv[1], ['kme-a', 'kme-b'], ['sae-a', 'sae-b', 'admin'])")
        env = dict(os.environ)
        if faketime_available():
            # the library itself, not the faketime wrapper, whose semaphores a killed run leaves behind
            # (a later process with the same pid then fails with "sem_open: File exists")
            env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME=PKI_ISSUED_BEFORE)
        result = subprocess.run([sys.executable, "-c", code, str(directory)], env=env, capture_output=True,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"issuing the lab's PKI failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace')[-2000:]}")
        self.pki = pki_paths(directory, ["kme-a", "kme-b"], ["sae-a", "sae-b", "admin"])

    def _start_proxy(self) -> None:
        log = open(self.workdir / "proxy.log", "ab")
        self.proxy = subprocess.Popen(
            ["ip", "netns", "exec", self.net.b.netns, sys.executable, "-m", "bench.chaos_proxy",
             "--listen", f"127.0.0.1:{PROXY_PORT}", "--connect", f"{self.net.a.classical_ip}:{PEER_PORT}",
             "--settings", str(self.proxy_settings)], stdout=log, stderr=log)
        log.close()
        wait_for("the delay proxy", lambda: "listening" in (self.workdir / "proxy.log").read_text()
                 or self.proxy.poll() is not None)
        assert self.proxy.poll() is None, (self.workdir / "proxy.log").read_text()

    def _daemon_env(self, end: str) -> dict[str, str]:
        # A stalled event loop's warning line carries where it spent the time (qkdd/loop_watch.py), for a
        # failed verdict's log_warnings.
        traced = {TRACE_ENV: str(STALL_TRACE_S)}
        if not faketime_available():
            return traced
        # The monotonic clock stays real (trio's timers); only the wall clock is stepped. The offset file
        # is read at most once a second.
        return {**traced, "LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(self.clock_files[end]),
                "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_CACHE_DURATION": "1"}

    def _write_config(self, end: str) -> Path:
        role, kme, _ = ENDS[end]
        other = "b" if end == "a" else "a"
        server = self.pki.kmes[kme]
        channel = (f'peer_listen = "{self.net.a.classical_ip}:{PEER_PORT}"' if end == "a"
                   else f'peer_addr = "127.0.0.1:{PROXY_PORT}"')
        saes = "".join(f'[[etsi014.saes]]\nsae_id = "{ENDS[e][2]}"\nkme_id = "{ENDS[e][1]}"\n' for e in ENDS)
        text = f'''[daemon]
state_dir = "{self.tmpfs[end].path / 'state'}"
log_level = "info"

[api]
listen = "127.0.0.1:{API_PORT}"
admin_clients = ["cn:admin"]
[api.tls]
cert_file = "{server.cert_file}"
key_file = "{server.key_file}"
client_ca_file = "{self.pki.ca_cert_file}"
client_cert = "optional"

[health]
listen = "127.0.0.1:{HEALTH_PORT}"

[[links]]
link_id = "{LINK_ID}"
role = "{role}"
driver = "sim"
{channel}
peer_key_file = "{self.workdir / f'{end}.key'}"
peer_public_key = "{self.workdir / f'{other}.pub'}"
device_addr = "{self.net.a.fiber_ip}:{QUANTUM_PORT}"
frames_in_flight = 2

[links.sim]
distance_km = 25.0
frame_slots = {MAX_FRAME_SLOTS}
max_detections_per_frame = {self.frame_detections}
clock_hz = {self.clock_hz}
realtime = true

[etsi014]
kme_id = "{kme}"
{saes}[[etsi014.peers]]
kme_id = "{ENDS[other][1]}"
link_id = "{LINK_ID}"
{self.extra_config}'''
        path = self.workdir / f"{role}.toml"
        path.write_text(text)
        return path

    # -- consumers -----------------------------------------------------------------------------------------

    def _client(self, identity: str | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert_file))
        if identity is not None:
            issued = self.pki.saes[identity]
            context.load_cert_chain(str(issued.cert_file), str(issued.key_file))
        client = httpx.Client(verify=context, timeout=httpx.Timeout(15.0))
        self._http.append(client)
        return client

    def api(self, end: str) -> EndApi:
        sae = ENDS[end][2]
        return EndApi(end, self.side(end).netns, f"https://127.0.0.1:{API_PORT}",
                      {sae: self._client(sae), "admin": self._client("admin")})

    def _flows(self) -> list[Flow]:
        apis = self.apis = {end: self.api(end) for end in ENDS}
        flows = []
        for giver, taker in (("a", "b"), ("b", "a")):
            for interface in ("v1", "etsi014"):
                flows.append(Flow(f"{interface} {giver}->{taker}", interface, apis[giver], apis[taker], self.book,
                                  link_id=LINK_ID, giver_sae=ENDS[giver][2], taker_sae=ENDS[taker][2],
                                  fetch_deadline_s=self.fetch_deadline_s))
        return flows

    def link_metrics(self, end: str) -> dict:
        api = self.apis[end]
        response = in_thread(lambda: api.call("admin", "GET", f"/v1/links/{LINK_ID}/metrics"))
        response.raise_for_status()
        return response.json()

    # -- faults ----------------------------------------------------------------------------------------------

    def set_path(self, **settings) -> None:
        """The delay proxy's settings (bench/chaos_proxy.py PathSettings); {} for a plain path."""
        tmp = self.proxy_settings.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings))
        os.replace(tmp, self.proxy_settings)

    def step_clock(self, end: str, offset: str) -> None:
        """Set `end`'s wall clock offset, e.g. "+1h", "-1h", "+0" (libfaketime reads it within a second)."""
        tmp = self.clock_files[end].with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.clock_files[end])

    def kill(self, end: str) -> None:
        self.daemons[end].stop(signal.SIGKILL)

    def restart(self, end: str) -> None:
        self.daemons[end].start()
        self.restarts[end] += 1

    def alive(self, end: str) -> bool:
        process = self.daemons[end].process
        return process is not None and process.poll() is None

    def cpu_wait_s(self, end: str) -> tuple[int, float] | None:
        """(pid, seconds) `end`'s daemon's event-loop thread, the one that answers every request and runs the
        peer session, has spent runnable but waiting for a CPU since it started (the kernel's schedstat
        run_delay): time the host kept it off the CPUs. None when it is not running."""
        process = self.daemons[end].process
        if process is None or process.poll() is not None:
            return None
        try:
            waited_ns = int(Path(f"/proc/{process.pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):       # it ended meanwhile
            return None
        return process.pid, waited_ns / 1e9

    def store_path(self, end: str) -> Path:
        return self.tmpfs[end].path / "state" / "keys.sqlite3"

    def audit(self):
        return audit_stores(self.store_path("a"), self.store_path("b"))

    def wait_for_session(self, timeout_s: float = 60.0) -> None:
        """Until both ends' current runs logged a ready session (resynchronised)."""
        wait_for("the link's session at both ends", lambda: all(
            "ready (epoch" in daemon.run_log() for daemon in self.daemons.values()), timeout_s=timeout_s,
            interval_s=0.2)

    def healthz(self, end: str) -> int | None:
        """/healthz's status at `end` (None: no answer)."""
        def get() -> int | None:
            hop(self.side(end).netns)
            try:
                return httpx.get(f"http://127.0.0.1:{HEALTH_PORT}/healthz", timeout=2).status_code
            except httpx.HTTPError:
                return None
        return in_thread(get)
