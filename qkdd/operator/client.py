"""How qkdctl reaches a running daemon: the API port (`/v1/links`, `/v1/links/{id}/metrics`, over HTTPS with
an admin or key-client certificate when the API verifies them) and the health port (`/healthz`, `/metrics`)."""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

DEFAULT_API_URL = "http://127.0.0.1:8071"          # the daemon's defaults: both listeners on the local host
DEFAULT_HEALTH_URL = "http://127.0.0.1:8072"
ENVIRONMENT = {                                      # option -> environment variable that supplies its default
    "api": "QKDCTL_API", "health": "QKDCTL_HEALTH", "ca": "QKDCTL_CA", "cert": "QKDCTL_CERT", "key": "QKDCTL_KEY"}


class DaemonError(Exception):
    """The daemon could not be reached, refused the caller, or answered something unreadable."""


@dataclass(frozen=True)
class DaemonAddress:
    api_url: str = DEFAULT_API_URL
    health_url: str = DEFAULT_HEALTH_URL
    ca_file: str | None = None          # CA that signed the daemon's server certificate (https)
    cert_file: str | None = None        # client certificate (api.admin_clients or api.key_clients)
    key_file: str | None = None
    timeout_s: float = 5.0

    @classmethod
    def from_args(cls, args) -> "DaemonAddress":
        def pick(name: str, default: str | None) -> str | None:
            value = getattr(args, name, None)
            return value if value else os.environ.get(ENVIRONMENT[name]) or default
        return cls(pick("api", DEFAULT_API_URL).rstrip("/"), pick("health", DEFAULT_HEALTH_URL).rstrip("/"),
                   pick("ca", None), pick("cert", None), pick("key", None), args.timeout)


class DaemonClient:
    """Blocking reads of one daemon's routes; every failure is a DaemonError naming the URL and the cause."""

    def __init__(self, address: DaemonAddress) -> None:
        self.address = address
        verify: ssl.SSLContext | bool = True
        if address.ca_file or address.cert_file:
            try:
                verify = ssl.create_default_context(cafile=address.ca_file)
                if address.cert_file:
                    verify.load_cert_chain(address.cert_file, address.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise DaemonError(f"cannot load the TLS files: {exc}") from None
        self._http = httpx.Client(verify=verify, timeout=address.timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "DaemonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, url: str) -> httpx.Response:
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise DaemonError(f"{url}: {exc or type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise DaemonError(f"{url}: {response.status_code} refused: {_message(response)} (give --cert/--key of "
                              "a certificate api.admin_clients or api.key_clients lists, or run on the daemon's host)")
        return response

    def _json(self, response: httpx.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            raise DaemonError(f"{response.url}: {response.status_code}, not JSON") from None
        if not isinstance(body, dict):
            raise DaemonError(f"{response.url}: {response.status_code}, not a JSON object")
        return body

    def links(self) -> list[dict]:
        response = self._get(self.address.api_url + "/v1/links")
        if response.status_code != 200:
            raise DaemonError(f"{response.url}: {response.status_code} {_message(response)}")
        return list(self._json(response).get("links", []))

    def link_metrics(self, link_id: str) -> tuple[dict | None, str | None]:
        """The link's `/v1/links/{id}/metrics`, or (None, why) when the daemon has none (no running engine)."""
        response = self._get(f"{self.address.api_url}/v1/links/{link_id}/metrics")
        if response.status_code == 200:
            return self._json(response), None
        return None, f"{response.status_code} {_message(response)}"

    def link_qber(self, link_id: str) -> list[dict]:
        """The link's QBER history (`/v1/links/{id}/qber`), one point per frame; empty without an engine."""
        response = self._get(f"{self.address.api_url}/v1/links/{link_id}/qber")
        if response.status_code != 200:
            return []
        return list(self._json(response).get("points", []))

    def health(self) -> tuple[int, dict]:
        """`/healthz`: (HTTP status, document); 503 is an answer (unhealthy), not an error."""
        response = self._get(self.address.health_url + "/healthz")
        if response.status_code not in (200, 503):
            raise DaemonError(f"{response.url}: {response.status_code} {_message(response)}")
        return response.status_code, self._json(response)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """`/metrics` parsed: sample name -> [(labels, value)] (qkd_* samples only)."""
        response = self._get(self.address.health_url + "/metrics")
        if response.status_code != 200:
            raise DaemonError(f"{response.url}: {response.status_code}")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        try:
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if sample.name.startswith("qkd_"):
                        samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        except ValueError as exc:
            raise DaemonError(f"{response.url}: unreadable exposition: {exc}") from None
        return samples


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and "message" in body:
        details = body.get("details") or []
        return str(body["message"]) + (f" {details}" if details else "")
    return response.reason_phrase
