"""One read of a running daemon, as plain data: its health, and per link the state, the QBER and its band,
the key rates, the key stock and the consumers (KMS pushes by link; WireGuard tunnels on their own)."""
from __future__ import annotations

import time
from typing import Any

from qkdd.link.qber_gate import band_of
from qkdd.operator.client import DaemonClient, DaemonError


def take(client: DaemonClient, *, with_links: bool = True) -> dict[str, Any]:
    """Everything `qkdctl status` shows. The health port must answer; the API may refuse or be absent
    (then `links` holds what /healthz says and `api_error` why the rest is missing)."""
    http_status, health = client.health()
    metrics = client.metrics()
    snapshot: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": health.get("status"), "http_status": http_status, "daemon": health.get("daemon", {}),
        "links": [], "tunnels": _tunnels(metrics), "api_error": None}
    by_health = {link["link_id"]: link for link in health.get("links", [])}
    configured: list[dict] = [{"link_id": link_id} for link_id in by_health]
    if with_links:
        try:
            configured = client.links()
        except DaemonError as exc:
            snapshot["api_error"] = str(exc)
            with_links = False
    for link in configured:
        link_id = link["link_id"]
        row = _link_row(link, by_health.get(link_id, {}), metrics)
        if with_links:
            measured, why = client.link_metrics(link_id)
            _add_measured(row, measured, why)
        snapshot["links"].append(row)
    return snapshot


def _link_row(link: dict, health: dict, metrics: dict) -> dict[str, Any]:
    link_id = link["link_id"]
    row: dict[str, Any] = {
        "link_id": link_id, "role": link.get("role"), "driver": link.get("driver"), "protocol": link.get("protocol"),
        "state": health.get("state", link.get("state")), "healthy": health.get("healthy"),
        "detail": health.get("detail", link.get("detail")), "since": health.get("since"),
        "alarms": health.get("alarms", []), "qber": _value(metrics, "qkd_qber", link_id),
        "secure_key_rate_bps": _value(metrics, "qkd_secure_key_rate_bps", link_id),
        "raw_key_rate_bps": _value(metrics, "qkd_raw_key_rate_bps", link_id),
        "keys_generated": _value(metrics, "qkd_keys_generated_total", link_id),
        "keystore_fill_ratio": _value(metrics, "qkd_keystore_fill_ratio", link_id),
        "keys_available": None, "keys_reserved": None, "keys_pending": None, "metrics_error": None,
        "kms_pushes": {labels["status"]: value for labels, value in metrics.get("qkd_kms_key_push_total", [])
                       if labels.get("link_id") == link_id} or None}
    row["qber_band"] = _band(row["qber"])
    return row


def _add_measured(row: dict[str, Any], measured: dict | None, why: str | None) -> None:
    """The API's own figures win over the scrape's: they are the engine's state at this moment."""
    if measured is None:
        row["metrics_error"] = why
        return
    stored = measured.get("keys_stored") or {}
    row.update(keys_available=stored.get("available", 0), keys_reserved=stored.get("reserved", 0),
               keys_pending=stored.get("pending", 0), keys_generated=measured.get("keys_generated"),
               key_bits_generated=measured.get("key_bits_generated"), frames=measured.get("frames"),
               frames_aborted=measured.get("frames_aborted"))
    if measured.get("qber") is not None:
        row["qber"] = measured["qber"]
        row["qber_band"] = _band(measured["qber"])
    if measured.get("key_rate") is not None:
        row["secure_key_rate_bps"] = measured["key_rate"]
    if measured.get("raw_key_rate") is not None:
        row["raw_key_rate_bps"] = measured["raw_key_rate"]


def _tunnels(metrics: dict) -> list[dict[str, Any]]:
    tunnels: dict[str, dict[str, Any]] = {}
    for labels, value in metrics.get("qkd_wireguard_psk_rotations_total", []):
        tunnel = tunnels.setdefault(labels["tunnel"], {"tunnel": labels["tunnel"], "psk_age_s": None, "rotations": {}})
        tunnel["rotations"][labels["result"]] = value
    for labels, value in metrics.get("qkd_wireguard_psk_age_seconds", []):
        tunnels.setdefault(labels["tunnel"], {"tunnel": labels["tunnel"], "rotations": {}})["psk_age_s"] = value
    return list(tunnels.values())


def _value(metrics: dict, name: str, link_id: str) -> float | None:
    for labels, value in metrics.get(name, []):
        if labels.get("link_id") == link_id:
            return value
    return None


def _band(qber: float | None) -> str | None:
    if qber is None or not 0.0 <= qber <= 1.0:
        return None
    return band_of(qber).value
