"""Keys handed out under chaos: consumers at both ends of a live link, a book of every key they got, and
an audit of the two ends' key stores.

A *flow* hands keys from one end to the other, as real consumers do: `/v1` (POST /v1/keys/request at the
requesting end, GET /v1/keys/{id} at the other) or ETSI GS QKD 014 (enc_keys by the master SAE at its KME,
dec_keys by the slave SAE at the other). The driver starts one exchange per flow every `interval_s`, each
in a thread of its own (an exchange held up by a fault does not hold up the next), and the fetching half
retries until it gets an answer, so a key handed out at one end is fetched at the other once that end can
answer. The book counts what each end handed out and finds keys served twice (one key id handed out by
two requests or two fetches, one key's material under two ids) and fetch answers that differ from the
request's. The audit compares the stores' inventories (key id -> state), read from their SQLite files.
"""
from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.chaos_net import hop

KEY_BITS = 256
FETCH_RETRY_S = 0.2
HOLDS_MATERIAL = ("available", "reserved")
# A key id in one of these states at one end must exist at the other (pending keys are a frame in flight:
# the other end may not have stored it yet, or a resynchronisation will discard it).
MUST_BE_AT_BOTH = ("available", "reserved", "delivered")


# -- the book of keys handed out ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Handout:
    at_s: float           # time.monotonic() when the answer came
    end: str              # "a" or "b": the daemon that answered
    interface: str        # "v1" or "etsi014"
    role: str             # "request" (a new key) or "fetch" (a key the other end handed out, by id)
    key_id: str
    digest: str           # SHA-256 of the material (the book keeps no key)


class Book:
    """Every key handed out, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handouts: list[Handout] = []
        self.fetch_outcomes: Counter[str] = Counter()
        self.fetch_log: list[tuple[float, str]] = []

    def record(self, end: str, interface: str, role: str, key_id: str, material: bytes) -> None:
        handout = Handout(time.monotonic(), end, interface, role, key_id, hashlib.sha256(material).hexdigest())
        with self._lock:
            self.handouts.append(handout)

    def fetch_outcome(self, outcome: str) -> None:
        with self._lock:
            self.fetch_outcomes[outcome] += 1
            self.fetch_log.append((time.monotonic(), outcome))

    def fetch_refusals(self, since_s: float = 0.0) -> dict[str, int]:
        """Fetches since `since_s` the taking end refused, by outcome. "after a dropped answer": an earlier
        attempt of the same fetch lost its connection (the end was killed), so the key may have been
        delivered then and its answer lost with the process: at most once, not twice."""
        with self._lock:
            return dict(Counter(outcome for at_s, outcome in self.fetch_log if at_s >= since_s and outcome != "ok"))

    def snapshot(self) -> list[Handout]:
        with self._lock:
            return list(self.handouts)

    def handed_out(self, since_s: float = 0.0, until_s: float = float("inf")) -> dict[str, int]:
        counts = {"a": 0, "b": 0}
        for handout in self.snapshot():
            if since_s <= handout.at_s < until_s:
                counts[handout.end] += 1
        return counts


def served_twice(handouts: list[Handout]) -> list[str]:
    """Key ids handed out more than once: by two requests, by two fetches, or whose material was also
    handed out under another id."""
    by_id_role: Counter[tuple[str, str, str]] = Counter((h.interface, h.key_id, h.role) for h in handouts)
    twice = {key_id for (_, key_id, _), count in by_id_role.items() if count > 1}
    ids_of_digest: dict[str, set[str]] = defaultdict(set)
    for handout in handouts:
        ids_of_digest[handout.digest].add(handout.key_id)
    for ids in ids_of_digest.values():
        if len(ids) > 1:
            twice.update(ids)
    return sorted(twice)


def mismatched(handouts: list[Handout]) -> list[str]:
    """Key ids whose fetch at one end gave other material than the request at the other."""
    digests: dict[tuple[str, str], set[str]] = defaultdict(set)
    for handout in handouts:
        digests[(handout.interface, handout.key_id)].add(handout.digest)
    return sorted(key_id for (_, key_id), found in digests.items() if len(found) > 1)


# -- the store audit ---------------------------------------------------------------------------------------

def read_inventory(db_path: Path) -> dict[str, str]:
    """key id -> state of every row of a daemon's key store, read beside the running daemon (WAL)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT key_id, state FROM keys"))
    finally:
        db.close()


def expiry_times(db_path: Path) -> dict[str, float]:
    """key id -> expiry time (Unix seconds) of the keys a store holds material of."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT key_id, expires_at FROM keys WHERE state IN (?, ?)", HOLDS_MATERIAL))
    finally:
        db.close()


def expiry_skew_s(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest difference between the two ends' expiry times of one key (0 with no key in common)."""
    return max((abs(expires_at - b[key_id]) for key_id, expires_at in a.items() if key_id in b), default=0.0)


@dataclass
class StoreAudit:
    keys_a: int = 0
    keys_b: int = 0
    lost: list[str] = field(default_factory=list)        # at one end (not pending), absent at the other
    stranded: int = 0          # material at one end, delivered or expired at the other (by design: unused)
    expiry_split: int = 0      # expired at one end while usable at the other
    expiry_skew_s: float = 0.0  # the largest difference of one key's expiry time at the two ends

    @property
    def agree(self) -> bool:
        return not self.lost


def compare_inventories(a: dict[str, str], b: dict[str, str]) -> StoreAudit:
    audit = StoreAudit(keys_a=len(a), keys_b=len(b))
    for here, there in ((a, b), (b, a)):
        for key_id, state in here.items():
            other = there.get(key_id)
            if other is None:
                if state in MUST_BE_AT_BOTH:
                    audit.lost.append(key_id)
            elif state in HOLDS_MATERIAL and other in ("delivered", "expired"):
                audit.stranded += 1
                if other == "expired":
                    audit.expiry_split += 1
    audit.lost.sort()
    return audit


def audit_stores(path_a: Path, path_b: Path, *, confirm_after_s: float = 2.0) -> StoreAudit:
    """Compare both stores; a key found lost is checked again after `confirm_after_s` (the two files are
    read one after the other while frames are being stored), and only what is still lost counts."""
    first = compare_inventories(read_inventory(path_a), read_inventory(path_b))
    if first.lost:
        time.sleep(confirm_after_s)
        second = compare_inventories(read_inventory(path_a), read_inventory(path_b))
        second.lost = sorted(set(first.lost) & set(second.lost))
        first = second
    first.expiry_skew_s = expiry_skew_s(expiry_times(path_a), expiry_times(path_b))
    return first


# -- consumers ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EndApi:
    """How to reach one daemon's API: its namespace, base URL, and an HTTP client per caller identity
    (each client's connections are made inside that namespace)."""
    name: str
    netns: str
    base_url: str
    clients: dict            # identity -> httpx.Client

    def call(self, identity: str, method: str, path: str, body: dict | None = None):
        hop(self.netns)
        client = self.clients[identity]
        return client.request(method, self.base_url + path, json=body)


@dataclass
class Exchange:
    flow: str
    started_s: float
    handed_s: float | None = None        # the giving end answered with a key
    finished_s: float | None = None      # the taking end answered too
    ok: bool = False
    outcome: str = ""


class Flow:
    """One kind of key handed from `giver` to `taker`; `exchange()` does one and says how it went."""

    def __init__(self, name: str, interface: str, giver: EndApi, taker: EndApi, book: Book, *, link_id: str,
                 giver_sae: str, taker_sae: str, fetch_deadline_s: float) -> None:
        self.name = name
        self.interface = interface
        self.giver, self.taker = giver, taker
        self.book = book
        self.link_id = link_id
        self.giver_sae, self.taker_sae = giver_sae, taker_sae
        self.fetch_deadline_s = fetch_deadline_s
        self.stop = threading.Event()

    def exchange(self) -> Exchange:
        record = Exchange(self.name, time.monotonic())
        try:
            key_id, material = self._request()
        except Exception as exc:                       # noqa: BLE001 - every failure is an outcome here
            record.outcome = f"request: {_describe(exc)}"
            return record
        record.handed_s = time.monotonic()
        self.book.record(self.giver.name, self.interface, "request", key_id, material)
        record.outcome = self._fetch(key_id, material)
        record.ok = record.outcome == "ok"
        record.finished_s = time.monotonic()
        return record

    def _request(self) -> tuple[str, bytes]:
        if self.interface == "v1":
            response = self.giver.call(self.giver_sae, "POST", "/v1/keys/request",
                                       {"bits": KEY_BITS, "link_id": self.link_id})
            if response.status_code != 200:
                raise Refused(response.status_code)
            body = response.json()
            return body["key_id"], base64.b64decode(body["key"])
        response = self.giver.call(self.giver_sae, "POST", f"/api/v1/keys/{self.taker_sae}/enc_keys",
                                   {"number": 1, "size": KEY_BITS})
        if response.status_code != 200:
            raise Refused(response.status_code)
        (key,) = response.json()["keys"]
        return key["key_ID"], base64.b64decode(key["key"])

    def _fetch(self, key_id: str, material: bytes) -> str:
        deadline = time.monotonic() + self.fetch_deadline_s
        dropped = False             # an attempt lost its connection: its answer may have been lost with it
        while True:
            try:
                if self.interface == "v1":
                    response = self.taker.call(self.taker_sae, "GET", f"/v1/keys/{key_id}")
                    got = base64.b64decode(response.json()["key"]) if response.status_code == 200 else None
                else:
                    response = self.taker.call(self.taker_sae, "POST", f"/api/v1/keys/{self.giver_sae}/dec_keys",
                                               {"key_IDs": [{"key_ID": key_id}]})
                    got = base64.b64decode(response.json()["keys"][0]["key"]) if response.status_code == 200 else None
                status = response.status_code
            except Exception as exc:                   # noqa: BLE001 - the taker is down or cut off: retry
                status, got = _describe(exc), None
                dropped = dropped or not isinstance(exc, httpx.ConnectError)
            if got is not None:
                self.book.record(self.taker.name, self.interface, "fetch", key_id, got)
                outcome = "ok" if got == material else "mismatch"
                self.book.fetch_outcome(outcome)
                return outcome
            # v1: 404 unknown key, 409 not reserved there, 410 delivered before; ETSI 014: 400 not found
            if status in (404, 409, 410, 400):
                outcome = f"fetch {status}" + (" after a dropped answer" if dropped else "")
                self.book.fetch_outcome(outcome)
                return outcome
            if time.monotonic() > deadline or self.stop.is_set():
                self.book.fetch_outcome("fetch unanswered")
                return f"fetch unanswered ({status})"
            time.sleep(FETCH_RETRY_S)


class Refused(Exception):
    """The giving end answered a key request with an error status (no key: 503, ...)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _describe(exc: Exception) -> str:
    return str(exc.status) if isinstance(exc, Refused) else type(exc).__name__


class Driver:
    """Starts one exchange per flow every `interval_s` (at most `max_in_flight` per flow) until stopped,
    keeping every Exchange."""

    def __init__(self, flows: list[Flow], *, interval_s: float = 0.2, max_in_flight: int = 12) -> None:
        self.flows = flows
        self.interval_s = interval_s
        self.max_in_flight = max_in_flight
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=len(flows) * max_in_flight, thread_name_prefix="chaos-flow")
        self._thread = threading.Thread(target=self._run, name="chaos-driver", daemon=True)

    def start(self) -> "Driver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for flow in self.flows:
            flow.stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for flow in self.flows:
                with self._lock:
                    if self._in_flight[flow.name] >= self.max_in_flight:
                        continue
                    self._in_flight[flow.name] += 1
                self._pool.submit(self._one, flow)
            self._stop.wait(self.interval_s)

    def _one(self, flow: Flow) -> None:
        try:
            record = flow.exchange()
        finally:
            with self._lock:
                self._in_flight[flow.name] -= 1
        with self._lock:
            self.exchanges.append(record)

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def resumed_s(self, fault_end_s: float) -> dict[str, float | None]:
        """Per flow: seconds from `fault_end_s` until the giving end handed out a key for a request made at
        or after it, which the taking end then served too (None: not yet). The taking end's answer may
        come later (its own latency on a busy host), but the service was back when the key was handed out."""
        firsts: dict[str, float | None] = {flow.name: None for flow in self.flows}
        for record in self.snapshot():
            if record.ok and record.started_s >= fault_end_s:
                done = record.handed_s - fault_end_s
                if firsts[record.flow] is None or done < firsts[record.flow]:
                    firsts[record.flow] = done
        return firsts

    def outcomes(self, since_s: float, until_s: float = float("inf")) -> Counter[str]:
        return Counter(record.outcome for record in self.snapshot() if since_s <= record.started_s < until_s)
