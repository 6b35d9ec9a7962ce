"""Who may call the routes of port 8071 that are not for everyone: the access checks the API's routes carry
(qkdd.http.router), which the listener runs on the request head, before a byte of the body is read.

Two lists in the config name callers by their verified client certificate, each entry "sha256:<hex
fingerprint of the DER certificate>" or "cn:<common name>" (a certificate whose subject has two CNs has
no common name). Each list guards one kind of route; a list left empty stands for the daemon's own
host, i.e. loopback clients:

    routes                                                  who may call them
    /v1 key routes (POST /v1/keys/request, GET /v1/keys/x)  api.key_clients; empty: loopback clients
    routes that change state (calibrate, sim control)       api.admin_clients; empty: loopback clients
    link and QBER reads (GET /v1/links, /v1/links/...)      whoever either row above lets through

A listed certificate is needed even on loopback once its list is set. So a daemon listening on every
address over plain HTTP hands no key, no QBER series and no control to the network. Behind a reverse
proxy on the same host every caller looks local: list the proxy's client certificate instead. The
ETSI GS QKD 014 routes admit the SAEs the KME serves (qkdd.api.etsi014); /healthz and /metrics are on
port 8072, for whoever can reach its address (the local host in the packaged configuration).
"""
from __future__ import annotations

import ipaddress
from typing import Protocol

from qkdd.config import ApiListenerConfig
from qkdd.http.messages import Access, HTTPError, PeerCertificate

KEY_CLIENTS, ADMIN_CLIENTS = "api.key_clients", "api.admin_clients"


class CallerLike(Protocol):
    """A Caller (before the body is read) or a Request: the peer address and client certificate."""

    @property
    def client(self) -> tuple[str, int] | None: ...

    @property
    def peer_cert(self) -> PeerCertificate | None: ...


def listed_entry(cert: PeerCertificate | None, entries: tuple[str, ...]) -> str | None:
    """The entry of `entries` that names `cert`, or None."""
    if cert is None:
        return None
    candidates = {f"sha256:{cert.sha256_fingerprint.lower()}"}
    if cert.common_name:
        candidates.add(f"cn:{cert.common_name}")
    return next((entry for entry in entries if entry in candidates), None)


def refusal(caller: CallerLike, entries: tuple[str, ...], what: str, setting: str) -> HTTPError | None:
    """Why `caller` may not use a route guarded by `entries` (401 without a certificate, 403 otherwise);
    None when it may: a listed certificate, or with `entries` empty, a loopback client."""
    if not entries:
        if is_loopback(caller.client):
            return None
        return HTTPError(403, f"{what}: only clients on this host may call it",
                         [{"certificate": f"list the callers' client certificates in {setting} to serve other hosts"}])
    cert = caller.peer_cert
    if cert is None:
        return HTTPError(401, f"{what}: a client certificate listed in {setting} is required")
    if listed_entry(cert, entries) is None:
        return HTTPError(403, f"{what}: this client certificate is not listed",
                         [{"certificate": f"subject {cert.subject} is not listed in {setting}"}])
    return None


def _listed_access(entries, what: str, setting: str) -> Access:
    """Callers whose certificate `entries` lists, or with it empty, loopback clients."""
    def check(caller: CallerLike) -> None:
        refused = refusal(caller, entries, what, setting)
        if refused is not None:
            raise refused
    return check


def key_access(api: ApiListenerConfig) -> Access:
    """The /v1 key routes: `api.key_clients`, or with it empty, loopback clients."""
    return _listed_access(api.key_clients, "key route", KEY_CLIENTS)


def admin_access(api: ApiListenerConfig) -> Access:
    """Routes that change state: `api.admin_clients`, or with it empty, loopback clients."""
    return _listed_access(api.admin_clients, "admin route", ADMIN_CLIENTS)


def reader_access(api: ApiListenerConfig) -> Access:
    """Link and QBER reads: whoever may take keys or administer."""
    def check(caller: CallerLike) -> None:
        as_key_client = refusal(caller, api.key_clients, "link route", KEY_CLIENTS)
        if as_key_client is None or refusal(caller, api.admin_clients, "link route", ADMIN_CLIENTS) is None:
            return
        if caller.peer_cert is None and (api.key_clients or api.admin_clients):
            raise HTTPError(401, f"link route: a client certificate listed in {KEY_CLIENTS} or {ADMIN_CLIENTS} "
                                 "is required")
        raise HTTPError(403, "link route: this caller may neither take keys nor administer",
                        [{"certificate": f"list its client certificate in {KEY_CLIENTS} or {ADMIN_CLIENTS}; "
                                         "with a list empty, clients on this host pass that list"}])
    return check


def require_key_client(caller: CallerLike, key_clients: tuple[str, ...]) -> None:
    """A /v1 key route's caller: listed in `key_clients`, or with that list empty, on loopback."""
    refused = refusal(caller, key_clients, "key route", KEY_CLIENTS)
    if refused is not None:
        raise refused


def is_loopback(client: tuple[str, int] | None) -> bool:
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client[0].split("%", 1)[0])
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None   # [::] listeners
    return (mapped or address).is_loopback
