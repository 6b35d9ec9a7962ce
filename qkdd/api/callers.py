"""Who may call the routes of port 8071 that are not for everyone.

A list of client identities in the config (`api.admin_clients`, `api.key_clients`) names the callers by
their verified client certificate: "sha256:<hex fingerprint of the DER certificate>" or "cn:<common
name>". The admin routes (sim control) need a listed certificate. The /v1 key routes, which hand out key
material, need a certificate in `api.key_clients`; with that list empty they answer loopback clients only
(applications on the daemon's own host), so a daemon listening on every address over plain HTTP, as the
example configuration does, hands no key to the network. Behind a reverse proxy on the same host every
caller looks local: list the proxy's client certificate instead.
"""
from __future__ import annotations

import ipaddress

from qkdd.http.messages import HTTPError, PeerCertificate, Request


def listed_entry(cert: PeerCertificate | None, entries: tuple[str, ...]) -> str | None:
    """The entry of `entries` that names `cert`, or None."""
    if cert is None:
        return None
    candidates = {f"sha256:{cert.sha256_fingerprint.lower()}"}
    if cert.common_name:
        candidates.add(f"cn:{cert.common_name}")
    return next((entry for entry in entries if entry in candidates), None)


def require_listed(request: Request, entries: tuple[str, ...], what: str, setting: str) -> str:
    """The entry naming the request's client certificate; 401 without a certificate, 403 if unlisted."""
    cert = request.peer_cert
    if cert is None:
        raise HTTPError(401, f"{what}: a client certificate listed in {setting} is required")
    entry = listed_entry(cert, entries)
    if entry is None:
        raise HTTPError(403, f"{what}: this client certificate is not listed",
                        [{"certificate": f"subject {cert.subject} is not listed in {setting}"}])
    return entry


def require_key_client(request: Request, key_clients: tuple[str, ...]) -> None:
    """A /v1 key route's caller: listed in `key_clients`, or with that list empty, on loopback."""
    if key_clients:
        require_listed(request, key_clients, "key route", "api.key_clients")
    elif not _is_loopback(request.client):
        raise HTTPError(403, "key route: only clients on this host may take keys",
                        [{"certificate": "list the callers' client certificates in api.key_clients to serve "
                                         "other hosts"}])


def _is_loopback(client: tuple[str, int] | None) -> bool:
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client[0].split("%", 1)[0])
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None   # [::] listeners
    return (mapped or address).is_loopback
