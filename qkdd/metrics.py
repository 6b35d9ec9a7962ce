"""Every Prometheus metric qkdd exports, in one place, on one dedicated registry.

The families and labels are exactly those of the seed (HIP-0071 "Prometheus Metrics"); process and
platform collectors come on top, and so do the ETSI GS QKD 014 KME's families (`qkd_etsi014_*`) and each
link's reported state (`qkd_link_state`, read from qkdd.health at each scrape). One seed name breaks a
Prometheus naming convention (`qkd_key_bits_generated_total`: promtool asks for the base unit, bytes): it is
exported as the seed names it (DESIGN.md: the seed's metric names, exactly; promtool's finding on it is the
accepted one) and beside it as `qkd_key_generated_bytes_total`; the dashboard (etc/grafana/qkdd.json) plots both.
Label values are link ids from the validated config and fixed words (protocol, severity, status) -- never anything
derived from key material. Code that measures something calls `Metrics.link(link_id)` and uses the returned
LinkMetrics; it never touches the families directly.
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               GCCollector, PlatformCollector, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["Metrics", "LinkMetrics", "TunnelMetrics", "KmeLinkMetrics", "CONTENT_TYPE", "SEVERITIES",
           "PUSH_STATUSES", "ROTATION_RESULTS", "KME_UNAVAILABLE_REASONS", "AppLinkMetrics"]

# The text format generate_latest writes (names here need no escaping), as Prometheus 2.x expects it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEVERITIES = ("warning", "critical")
PUSH_STATUSES = ("success", "failure")
PROTOCOLS = ("bb84", "e91", "cvqkd")
# WireGuard PSK rotations by outcome: installed; the peer refused or never answered; no QKD key was
# available; `wg` failed (retried); the PSK expired and the fallback policy ran (clear or random).
ROTATION_RESULTS = ("success", "refused", "no_key", "install_failed", "expired_clear", "expired_random")
# ETSI 014 Get key requests answered 503: not enough key stored; the slave SAE's KME not connected, refusing
# the reservation, or not confirming it in time (or its session ending first).
KME_UNAVAILABLE_REASONS = ("no_key", "peer_unreachable", "peer_refused", "peer_timeout")
# A reservation is a round trip to the peer KME and one group commit there: 1 ms .. 10 s.
RESERVATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_RESERVATION_BUCKET_LABELS = [floatToGoString(bound) for bound in RESERVATION_BUCKETS_S] + ["+Inf"]
# KMS pushes are HTTPS round trips: 5 ms .. 30 s.
KMS_PUSH_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The registry and the seed's metric families. One instance per daemon (tests make their own)."""

    def __init__(self) -> None:
        # No `*_created` series: they double the families, and counters here start with the process
        # (process_start_time_seconds says when). This switch is process-wide; qkdd owns its process.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        r = self.registry
        # Information-theoretic authentication (qkdd/auth): the pool's size and the bits its tags spent
        self.auth_key_bits_consumed = Counter(
            "qkd_auth_key_bits_consumed_total", "Authentication pool bits spent on Wegman-Carter hash keys and "
            "tag pads", ["link_id"], registry=r)
        self.auth_pool_bits = Gauge("qkd_auth_pool_bits", "Secret bits in the link's authentication pool",
                                    ["link_id"], registry=r)
        # Key generation
        self.keys_generated = Counter(
            "qkd_keys_generated_total", "Keys distilled and stored", ["link_id", "protocol"], registry=r)
        self.key_bits_generated = Counter(
            "qkd_key_bits_generated_total", "Secret key distilled and stored, bits", ["link_id"], registry=r)
        self.key_bytes_generated = Counter(
            "qkd_key_generated_bytes_total", "Secret key distilled and stored, bytes (the seed's "
            "qkd_key_bits_generated_total / 8)", ["link_id"], registry=r)
        self.secure_key_rate_bps = Gauge(
            "qkd_secure_key_rate_bps", "Secret key rate after error correction and privacy amplification, "
            "bits per second", ["link_id"], registry=r)
        self.raw_key_rate_bps = Gauge(
            "qkd_raw_key_rate_bps", "Raw (sifted) key rate, bits per second", ["link_id"], registry=r)
        # Channel quality
        self.qber = Gauge("qkd_qber", "Quantum bit error rate of the last frame (fraction)", ["link_id"],
                          registry=r)
        self.channel_loss_db = Gauge("qkd_channel_loss_db", "Quantum channel loss in dB", ["link_id"],
                                     registry=r)
        self.photon_rate_hz = Gauge("qkd_photon_rate_hz", "Detected photon rate in Hz", ["link_id"], registry=r)
        self.visibility = Gauge("qkd_visibility", "Interference visibility (fraction)", ["link_id"], registry=r)
        self.chsh_value = Gauge("qkd_chsh_value", "CHSH Bell value S of the last E91 frame (2: local bound, "
                                "2 sqrt 2: Tsirelson bound)", ["link_id"], registry=r)
        # Alarms
        self.qber_threshold_exceeded = Counter(
            "qkd_qber_threshold_exceeded_total", "Frames whose QBER reached the warning or critical band",
            ["link_id", "severity"], registry=r)
        self.key_generation_halted = Counter(
            "qkd_key_generation_halted_total", "Times key generation was halted on a link", ["link_id"],
            registry=r)
        # Device health
        self.device_temperature_celsius = Gauge(
            "qkd_device_temperature_celsius", "Device temperature in degrees Celsius", ["link_id"], registry=r)
        self.device_uptime_seconds = Gauge(
            "qkd_device_uptime_seconds", "Device uptime in seconds", ["link_id"], registry=r)
        # Key store fill (qkdd's own, same prefix): measured at each frame stored and while paused
        self.keystore_fill_ratio = Gauge(
            "qkd_keystore_fill_ratio", "Key store fill against its configured capacity, the fuller of the link's "
            "key bits and the store's bytes (fraction; generation pauses at 1, 0 with no bound)", ["link_id"],
            registry=r)
        self.keystore_key_bytes = Gauge(
            "qkd_keystore_key_bytes", "Key material the link holds in the key store (pending, available and "
            "reserved keys), bytes", ["link_id"], registry=r)
        # no labels: registered at its first measurement, so that like the others it is absent until then
        self.keystore_bytes = Gauge(
            "qkd_keystore_bytes", "Data in the key store's file (every link, tombstones of delivered keys, the "
            "ETSI 014 ledger when it shares the file), bytes", registry=None)
        self._keystore_bytes_registered = False
        # SQLite's heap (the key store's page cache, bounded by [keystore] cache_mib, is most of it): read at
        # each scrape; absent where the SQLite library gives no sqlite3_status64
        r.register(_SqliteMemoryCollector())
        # KMS integration
        self.kms_key_push = Counter(
            "qkd_kms_key_push_total", "Key pushes to the KMS by outcome", ["link_id", "status"], registry=r)
        self.kms_key_push_latency_seconds = Histogram(
            "qkd_kms_key_push_latency_seconds", "Time to push one key to the KMS", ["link_id"],
            buckets=KMS_PUSH_LATENCY_BUCKETS_S, registry=r)
        # WireGuard PSK rotation (not in the seed; qkdd's own, same prefix)
        self.wireguard_rotations = Counter(
            "qkd_wireguard_psk_rotations_total", "WireGuard pre-shared-key rotations by result",
            ["tunnel", "result"], registry=r)
        self.wireguard_psk_age_seconds = Gauge(
            "qkd_wireguard_psk_age_seconds", "Seconds since the current QKD pre-shared key was installed",
            ["tunnel"], registry=r)
        self.wireguard_handshake_age_seconds = Gauge(
            "qkd_wireguard_handshake_age_seconds", "Seconds since the last WireGuard handshake with the peer "
            "(from wg show latest-handshakes)", ["tunnel", "interface", "peer"], registry=r)
        # Other key consumers (KMS push, IKEv2 PPK): the same rotation results (qkdd's own, same prefix)
        self.consumer_rotations = Counter(
            "qkd_consumer_key_rotations_total", "Key rotations of a KMS push or IKEv2 PPK consumer by result",
            ["kind", "consumer", "result"], registry=r)
        self.consumer_key_age_seconds = Gauge(
            "qkd_consumer_key_age_seconds", "Seconds since the consumer's current QKD key was installed",
            ["kind", "consumer"], registry=r)
        self._links: dict[str, LinkMetrics] = {}
        self._tunnels: dict[str, TunnelMetrics] = {}
        self._consumers: dict[tuple[str, str], ConsumerMetrics] = {}
        # ETSI GS QKD 014 KME: plain counts per peer link, read at each scrape (_KmeCollector)
        self._kme_links: dict[str, KmeLinkMetrics] = {}
        r.register(_KmeCollector(self._kme_links))
        # ETSI 004 key streams and SKIP keys: plain counts per link, read at each scrape (_AppsCollector)
        self._app_links: dict[str, "AppLinkMetrics"] = {}
        self._skip_refusals: dict[str, int] = {}
        r.register(_AppsCollector(self._app_links, self._skip_refusals))

    def link(self, link_id: str, protocol: str = "bb84", *, kms: bool = False) -> "LinkMetrics":
        """The metrics of one link. Counters start at zero for a configured link (so rates work from
        the first scrape); gauges appear only once something is measured."""
        if link_id not in self._links:
            if protocol not in PROTOCOLS:
                raise ValueError(f"unknown protocol {protocol!r}")
            self.keys_generated.labels(link_id, protocol)
            self.key_bits_generated.labels(link_id)
            self.key_bytes_generated.labels(link_id)
            for severity in SEVERITIES:
                self.qber_threshold_exceeded.labels(link_id, severity)
            self.key_generation_halted.labels(link_id)
            if kms:
                for status in PUSH_STATUSES:
                    self.kms_key_push.labels(link_id, status)
            self._links[link_id] = LinkMetrics(self, link_id, protocol)
        return self._links[link_id]

    def tunnel(self, tunnel: str, interface: str, peer_public_key: str) -> "TunnelMetrics":
        """The metrics of one WireGuard tunnel; every rotation result starts at zero."""
        if tunnel not in self._tunnels:
            for result in ROTATION_RESULTS:
                self.wireguard_rotations.labels(tunnel, result)
            self._tunnels[tunnel] = TunnelMetrics(self, tunnel, interface, peer_public_key)
        return self._tunnels[tunnel]

    def consumer(self, kind: str, name: str) -> "ConsumerMetrics":
        """The metrics of one KMS push ("kms") or IKEv2 PPK ("ipsec") consumer; every result starts at zero."""
        if (kind, name) not in self._consumers:
            for result in ROTATION_RESULTS:
                self.consumer_rotations.labels(kind, name, result)
            self._consumers[(kind, name)] = ConsumerMetrics(self, kind, name)
        return self._consumers[(kind, name)]

    def kme_link(self, link_id: str) -> "KmeLinkMetrics":
        """The ETSI 014 KME's metrics for the peer KME reached over `link_id`; every series starts at zero."""
        if link_id not in self._kme_links:
            self._kme_links[link_id] = KmeLinkMetrics(link_id)
        return self._kme_links[link_id]

    def app_link(self, link_id: str) -> "AppLinkMetrics":
        """The ETSI 004 and SKIP metrics of one link (`qkd_etsi004_*`, `qkd_skip_*`); every series starts at 0."""
        if link_id not in self._app_links:
            self._app_links[link_id] = AppLinkMetrics(link_id)
        return self._app_links[link_id]

    def skip_server(self) -> None:
        """A SKIP server runs: its refusals by HTTP status start at zero."""
        for code in SKIP_REFUSAL_CODES:
            self._skip_refusals.setdefault(code, 0)

    def skip_refused(self, code: int) -> None:
        """A SKIP request answered with an error (HTTP status `code`); not per link (an unknown remote system
        names none)."""
        name = str(code)
        if name not in SKIP_REFUSAL_CODES:
            raise ValueError(f"unexpected SKIP status {code}")
        self._skip_refusals[name] = self._skip_refusals.get(name, 0) + 1

    def relay(self) -> "RelayMetrics":
        """The relay network's `qkd_relay_*` families, registered at the first call (relay nodes only)."""
        if getattr(self, "_relay", None) is None:
            self._relay = RelayMetrics(self.registry)
        return self._relay

    def keystore_size(self, store_bytes: int) -> None:
        """The key store's data in bytes (one store per daemon, so no label)."""
        if not self._keystore_bytes_registered:
            self.registry.register(self.keystore_bytes)
            self._keystore_bytes_registered = True
        self.keystore_bytes.set(store_bytes)

    def watch_health(self, health) -> None:
        """Export each link's reported state from `health` (qkdd.health.Health) as `qkd_link_state`."""
        self.registry.register(_LinkStateCollector(health))

    def watch_loop(self, watch) -> None:
        """Export the event loop's stalls from `watch` (qkdd.loop_watch.LoopWatch)."""
        self.registry.register(_LoopCollector(watch))

    def exposition(self) -> bytes:
        """The text exposition format (version 0.0.4) of everything registered."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class LinkMetrics:
    """What the link engine, device drivers and consumers report for one link."""

    metrics: Metrics
    link_id: str
    protocol: str

    def keys_stored(self, count: int, key_bits: int) -> None:
        """`count` keys of `key_bits` bits each stored (one frame's: one call, not one per key)."""
        m = self.metrics
        m.keys_generated.labels(self.link_id, self.protocol).inc(count)
        m.key_bits_generated.labels(self.link_id).inc(count * key_bits)
        m.key_bytes_generated.labels(self.link_id).inc(count * key_bits / 8)

    def rates(self, *, raw_bps: float, secure_bps: float) -> None:
        self.metrics.raw_key_rate_bps.labels(self.link_id).set(raw_bps)
        self.metrics.secure_key_rate_bps.labels(self.link_id).set(secure_bps)

    def channel(self, *, qber: float | None = None, loss_db: float | None = None,
                photon_rate_hz: float | None = None, visibility: float | None = None) -> None:
        m = self.metrics
        for gauge, value in ((m.qber, qber), (m.channel_loss_db, loss_db),
                             (m.photon_rate_hz, photon_rate_hz), (m.visibility, visibility)):
            if value is not None:
                gauge.labels(self.link_id).set(value)

    def chsh(self, s: float) -> None:
        self.metrics.chsh_value.labels(self.link_id).set(s)

    def qber_alarm(self, severity: Literal["warning", "critical"]) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}")
        self.metrics.qber_threshold_exceeded.labels(self.link_id, severity).inc()

    def halted(self) -> None:
        self.metrics.key_generation_halted.labels(self.link_id).inc()

    def auth_consumed(self, bits: int) -> None:
        self.metrics.auth_key_bits_consumed.labels(self.link_id).inc(bits)

    def auth_pool(self, bits: int) -> None:
        self.metrics.auth_pool_bits.labels(self.link_id).set(bits)

    def device(self, *, temperature_celsius: float | None = None, uptime_s: float | None = None) -> None:
        if temperature_celsius is not None:
            self.metrics.device_temperature_celsius.labels(self.link_id).set(temperature_celsius)
        if uptime_s is not None:
            self.metrics.device_uptime_seconds.labels(self.link_id).set(uptime_s)

    def store_fill(self, *, key_bits: int, store_bytes: int, ratio: float) -> None:
        m = self.metrics
        m.keystore_fill_ratio.labels(self.link_id).set(ratio)
        m.keystore_key_bytes.labels(self.link_id).set(key_bits // 8)
        m.keystore_size(store_bytes)

    def kms_push(self, *, ok: bool, latency_s: float) -> None:
        self.metrics.kms_key_push.labels(self.link_id, "success" if ok else "failure").inc()
        self.metrics.kms_key_push_latency_seconds.labels(self.link_id).observe(latency_s)


@dataclass(frozen=True)
class TunnelMetrics:
    """What the WireGuard consumer reports for one tunnel (labels: names and a public key, never a PSK)."""

    metrics: Metrics
    tunnel: str
    interface: str
    peer_public_key: str

    def rotation(self, result: str) -> None:
        if result not in ROTATION_RESULTS:
            raise ValueError(f"unknown rotation result {result!r}")
        self.metrics.wireguard_rotations.labels(self.tunnel, result).inc()

    def psk_age(self, age_s: float | None) -> None:
        gauge = self.metrics.wireguard_psk_age_seconds
        if age_s is None:                 # no QKD key installed (fallback): the series disappears
            try:
                gauge.remove(self.tunnel)
            except KeyError:
                pass
        else:
            gauge.labels(self.tunnel).set(age_s)

    def handshake_age(self, age_s: float) -> None:
        self.metrics.wireguard_handshake_age_seconds.labels(self.tunnel, self.interface,
                                                           self.peer_public_key).set(age_s)


@dataclass(frozen=True)
class ConsumerMetrics:
    """What a KMS push or IKEv2 PPK consumer reports (labels: its kind and name, never key material)."""

    metrics: Metrics
    kind: str
    name: str

    def rotation(self, result: str) -> None:
        if result not in ROTATION_RESULTS:
            raise ValueError(f"unknown rotation result {result!r}")
        self.metrics.consumer_rotations.labels(self.kind, self.name, result).inc()

    def psk_age(self, age_s: float | None) -> None:
        gauge = self.metrics.consumer_key_age_seconds
        if age_s is None:
            try:
                gauge.remove(self.kind, self.name)
            except KeyError:
                pass
        else:
            gauge.labels(self.kind, self.name).set(age_s)

    def handshake_age(self, age_s: float) -> None:
        pass                              # no handshake to watch (WireGuard only)


class KmeLinkMetrics:
    """What the ETSI 014 KME reports for one peer KME. Plain counts, added to by the KME and read by the
    registry at each scrape, both in the daemon's trio thread: a Get key costs a few additions, not a
    locked update per series (prometheus_client's documented custom-collector pattern)."""

    def __init__(self, link_id: str) -> None:
        self.link_id = link_id
        self.keys = {"master": 0, "slave": 0}
        self.unavailable_by_reason = dict.fromkeys(KME_UNAVAILABLE_REASONS, 0)
        self.reservation_buckets = [0] * (len(RESERVATION_BUCKETS_S) + 1)     # per bucket, +Inf last
        self.reservation_sum_s = 0.0

    def keys_handed(self, end: Literal["master", "slave"], count: int) -> None:
        self.keys[end] += count

    def unavailable(self, reason: str) -> None:
        if reason not in self.unavailable_by_reason:
            raise ValueError(f"unknown reason {reason!r}")
        self.unavailable_by_reason[reason] += 1

    def reservation_confirmed(self, seconds: float) -> None:
        self.reservation_buckets[bisect.bisect_left(RESERVATION_BUCKETS_S, seconds)] += 1
        self.reservation_sum_s += seconds


class _KmeCollector:
    """The `qkd_etsi014_*` families from every KmeLinkMetrics, built at each scrape."""

    def __init__(self, links: dict[str, KmeLinkMetrics]) -> None:
        self._links = links

    def collect(self):
        keys = CounterMetricFamily(
            "qkd_etsi014_keys", "Keys handed to SAEs over ETSI GS QKD 014: by the master SAE's KME (Get key, "
            "end=master) or the slave SAE's (Get key with key IDs, end=slave)", labels=["link_id", "end"])
        unavailable = CounterMetricFamily(
            "qkd_etsi014_unavailable", "ETSI 014 Get key requests answered 503, by cause",
            labels=["link_id", "reason"])
        reservation = HistogramMetricFamily(
            "qkd_etsi014_reservation_seconds", "Time from sending a reservation to the slave SAE's KME to its "
            "confirmation", labels=["link_id"])
        for link in self._links.values():
            for end, count in link.keys.items():
                keys.add_metric([link.link_id, end], count)
            for reason, count in link.unavailable_by_reason.items():
                unavailable.add_metric([link.link_id, reason], count)
            cumulative = itertools.accumulate(link.reservation_buckets)
            reservation.add_metric([link.link_id], list(zip(_RESERVATION_BUCKET_LABELS, cumulative)),
                                   link.reservation_sum_s)
        yield from (keys, unavailable, reservation)


class _LinkStateCollector:
    """`qkd_link_state{link_id, state}`: 1 for each link's reported state (qkdd.health), 0 for every other
    state and alarm it could be in, so that an alert can ask `qkd_link_state{state="fallback"} == 1`."""

    def __init__(self, health) -> None:
        self._health = health

    def collect(self):
        from qkdd.health import LINK_ALARMS, LINK_STATES
        family = GaugeMetricFamily("qkd_link_state", "The link's reported state (1) among all it could be in (0): "
                                   "its engine's state, or the alarm that stands in for it",
                                   labels=["link_id", "state"])
        for link_id, state in self._health.states()[1].items():
            for candidate in (*LINK_STATES, *LINK_ALARMS):
                family.add_metric([link_id, candidate], 1.0 if candidate == state else 0.0)
        yield family


class _LoopCollector:
    """`qkd_event_loop_stall_max_seconds` and `qkd_event_loop_stalls_total`: the longest time the event loop ran
    without polling I/O since start, and how often it ran longer than 50 ms (qkdd.loop_watch)."""

    def __init__(self, watch) -> None:
        self._watch = watch

    def collect(self):
        worst = GaugeMetricFamily("qkd_event_loop_stall_max_seconds", "Longest time the event loop ran without "
                                  "polling I/O (no listener answered meanwhile), seconds since start")
        worst.add_metric([], self._watch.worst_stall_s)
        yield worst
        cpu = GaugeMetricFamily("qkd_event_loop_stall_max_cpu_seconds", "Most CPU time the event loop's thread "
                                "spent in one such stretch (the rest it waited for the GIL or a CPU), seconds")
        cpu.add_metric([], self._watch.worst_stall_cpu_s)
        yield cpu
        stalls = CounterMetricFamily("qkd_event_loop_stalls", "Times the event loop ran longer than 50 ms without "
                                     "polling I/O")
        stalls.add_metric([], float(self._watch.stalls))
        yield stalls


class _SqliteMemoryCollector:
    """`qkd_sqlite_memory_bytes`: what SQLite's allocator holds now over every connection of the process
    (qkdd.sqlite_memory); nothing where that cannot be read."""

    def collect(self):
        from qkdd.sqlite_memory import sqlite_memory_bytes
        used = sqlite_memory_bytes()
        if used is None:
            return
        family = GaugeMetricFamily("qkd_sqlite_memory_bytes", "Heap memory SQLite holds in this process (the key "
                                   "store's page cache, bounded by [keystore] cache_mib, schemas, statements), bytes")
        family.add_metric([], float(used[0]))
        yield family


# Relayed keys: one hop on a LAN takes milliseconds, a long chain or a loaded relay seconds.
RELAY_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RELAY_HOP_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 32)
RELAY_RESULTS = ("delivered", "aborted")


class RelayMetrics:
    """`qkd_relay_*`: requests at the source by result, their hops and latency, messages passed on by
    relays and destinations, link-state announcements by result, and link key bits each hop consumed."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter("qkd_relay_requests_total", "Relay key requests at this source node by result",
                                ["result"], registry=r)
        for result in RELAY_RESULTS:
            self.requests.labels(result)
        self.hops = Histogram("qkd_relay_hops", "Hops of the routes relay requests took", buckets=RELAY_HOP_BUCKETS,
                              registry=r)
        self.latency = Histogram("qkd_relay_latency_seconds", "Time from a relay request to its confirmed key "
                                 "(or its abort) at the source", buckets=RELAY_LATENCY_BUCKETS_S, registry=r)
        self.passed_on = Counter("qkd_relay_passed_total", "Relay requests this node took part in as relay or "
                                 "destination, by role and result", ["role", "result"], registry=r)
        self.refused_messages = Counter("qkd_relay_refused_messages_total", "Relay messages refused (malformed, "
                                        "replayed, wrong link or state)", registry=r)
        self.announcements = Counter("qkd_relay_announcements_total", "Link-state announcements received, by "
                                     "result (accepted or the refusal)", ["result"], registry=r)
        self.consumed_bits = Counter("qkd_relay_key_bits_consumed_total", "Link key bits taken and erased by "
                                     "relayed requests, by link", ["link_id"], registry=r)

    def request(self, result: str, hops: int, latency_s: float) -> None:
        self.requests.labels(result).inc()
        self.hops.observe(hops)
        self.latency.observe(latency_s)

    def passed(self, role: str, result: str) -> None:
        self.passed_on.labels(role, result).inc()

    def refused(self) -> None:
        self.refused_messages.inc()

    def announcement(self, result: str) -> None:
        self.announcements.labels(result).inc()

    def consumed(self, link_id: str, bits: int) -> None:
        self.consumed_bits.labels(link_id).inc(bits)


# ETSI 004 GET_KEY: pacing (max_bps), then the wait for keys and the peer, up to the stream's timeout; SKIP's
# GET /key: one reservation round trip. 1 ms .. 60 s.
APP_WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_APP_WAIT_BUCKET_LABELS = [floatToGoString(bound) for bound in APP_WAIT_BUCKETS_S] + ["+Inf"]
# Every GS QKD 004 status but 0, by its name in clause 6.1 table 2 (qkdd.etsi004.wire.Status), lower case.
ETSI004_REFUSALS = ("peer_not_connected", "insufficient_key", "peer_application_not_connected",
                    "no_qkd_connection", "ksid_in_use", "timeout", "qos_not_met", "metadata_size_insufficient")
SKIP_REQUESTS = ("new", "by_id")          # GET /key, GET /key/{keyId}
SKIP_REFUSAL_CODES = ("400", "404", "503")


class _Wait:
    """One histogram's plain counts (bucket counts, +Inf last, and the sum)."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(APP_WAIT_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(APP_WAIT_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def samples(self) -> list[tuple[str, int]]:
        return list(zip(_APP_WAIT_BUCKET_LABELS, itertools.accumulate(self.buckets)))


class AppLinkMetrics:
    """What the ETSI 004 server and the SKIP server report for one link: plain counts added to in the
    daemon's trio thread and read at each scrape (as KmeLinkMetrics). Nothing here names a key, a key id or
    a key stream id."""

    def __init__(self, link_id: str) -> None:
        self.link_id = link_id
        self.streams_open = 0
        self.chunks = 0
        self.chunk_bytes = 0
        self.expired_chunks = 0
        self.refusals = dict.fromkeys(ETSI004_REFUSALS, 0)
        self.get_key_wait = _Wait()
        self.skip_keys = dict.fromkeys(SKIP_REQUESTS, 0)
        self.skip_key_bytes = 0
        self.skip_wait = _Wait()

    # -- ETSI 004 ----------------------------------------------------------------------------------------
    def streams(self, count: int) -> None:
        self.streams_open = count

    def chunk_delivered(self, chunk_bytes: int, wait_s: float) -> None:
        self.chunks += 1
        self.chunk_bytes += chunk_bytes
        self.get_key_wait.observe(wait_s)

    def refused(self, status_name: str) -> None:
        if status_name not in self.refusals:
            raise ValueError(f"unknown ETSI 004 refusal {status_name!r}")
        self.refusals[status_name] += 1

    def expired(self, chunks: int) -> None:
        self.expired_chunks += chunks

    # -- SKIP ----------------------------------------------------------------------------------------------
    def skip_key(self, request: str, key_bytes: int, wait_s: float | None = None) -> None:
        if request not in self.skip_keys:
            raise ValueError(f"unknown SKIP request {request!r}")
        self.skip_keys[request] += 1
        self.skip_key_bytes += key_bytes
        if wait_s is not None:
            self.skip_wait.observe(wait_s)


class _AppsCollector:
    """The `qkd_etsi004_*` and `qkd_skip_*` families from every AppLinkMetrics, built at each scrape."""

    def __init__(self, links: dict[str, AppLinkMetrics], skip_refusals: dict[str, int]) -> None:
        self._links = links
        self._skip_refusals = skip_refusals

    def collect(self):
        streams = GaugeMetricFamily("qkd_etsi004_streams", "ETSI GS QKD 004 key streams open at this end",
                                    labels=["link_id"])
        chunks = CounterMetricFamily("qkd_etsi004_chunks", "ETSI 004 key chunks handed to applications (GET_KEY "
                                     "answered with status 0)", labels=["link_id"])
        chunk_bytes = CounterMetricFamily("qkd_etsi004_key_bytes", "Key handed to applications in ETSI 004 chunks, "
                                          "bytes (bits / 8)", labels=["link_id"])
        refusals = CounterMetricFamily("qkd_etsi004_refusals", "ETSI 004 requests answered with a status other "
                                       "than 0, by status (GS QKD 004 clause 6.1)", labels=["link_id", "status"])
        expired = CounterMetricFamily("qkd_etsi004_expired_chunks", "ETSI 004 chunks erased unfetched when their "
                                      "stream's TTL ran out (at start-up too, for a TTL that ran out while the "
                                      "daemon was down)", labels=["link_id"])
        wait = HistogramMetricFamily("qkd_etsi004_get_key_wait_seconds", "Time from a GET_KEY to its chunk: "
                                     "pacing to max_bps, then the wait for keys and the other end",
                                     labels=["link_id"])
        skip_keys = CounterMetricFamily("qkd_skip_keys", "Keys handed to routers over SKIP: new keys (GET /key) "
                                        "and keys fetched by id (GET /key/{keyId})", labels=["link_id", "request"])
        skip_bytes = CounterMetricFamily("qkd_skip_key_bytes", "Key handed to routers over SKIP, bytes (bits / 8)",
                                         labels=["link_id"])
        skip_wait = HistogramMetricFamily("qkd_skip_key_wait_seconds", "Time to answer a router's GET /key (the "
                                          "reservation round trip to the other end)", labels=["link_id"])
        skip_refusals = CounterMetricFamily("qkd_skip_refusals", "SKIP requests answered with an error, by HTTP "
                                            "status (400 bad request, 404 unknown key or system, 503 no key)",
                                            labels=["code"])
        for link in self._links.values():
            streams.add_metric([link.link_id], link.streams_open)
            chunks.add_metric([link.link_id], link.chunks)
            chunk_bytes.add_metric([link.link_id], link.chunk_bytes)
            for status, count in link.refusals.items():
                refusals.add_metric([link.link_id, status], count)
            expired.add_metric([link.link_id], link.expired_chunks)
            wait.add_metric([link.link_id], link.get_key_wait.samples(), link.get_key_wait.sum_s)
            for request, count in link.skip_keys.items():
                skip_keys.add_metric([link.link_id, request], count)
            skip_bytes.add_metric([link.link_id], link.skip_key_bytes)
            skip_wait.add_metric([link.link_id], link.skip_wait.samples(), link.skip_wait.sum_s)
        for code, count in sorted(self._skip_refusals.items()):
            skip_refusals.add_metric([code], count)
        yield from (streams, chunks, chunk_bytes, refusals, expired, wait, skip_keys, skip_bytes, skip_wait,
                    skip_refusals)
