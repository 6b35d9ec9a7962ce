"""Who is calling: the SAE ID from the caller's verified client certificate (ETSI GS QKD 014 §5.1), and
which KME serves each SAE (the registry built from `[etsi014]`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from qkdd.kme.config import ID_PATTERN, Etsi014Config
from qkdd.kme.errors import BadRequest, Unauthorized


class ClientCertificate(Protocol):
    """What the KME reads of the caller's verified TLS client certificate (the listener's PeerCertificate)."""

    @property
    def common_name(self) -> str | None: ...

    @property
    def common_names(self) -> tuple[str, ...]: ...

    @property
    def san_uris(self) -> tuple[str, ...]: ...


def sae_id_of(certificate: ClientCertificate | None, config: Etsi014Config) -> str | None:
    """The SAE ID the certificate names (the subject's one CN, or the one SAN URI with the configured
    prefix), or None; never one of two candidates."""
    if certificate is None:
        return None
    if config.sae_id_from == "cn":
        return certificate.common_name or None          # None as well when the subject has two CNs
    matching = [uri for uri in certificate.san_uris if uri.startswith(config.san_uri_prefix)]
    return matching[0] if len(matching) == 1 else None


@dataclass(frozen=True)
class Route:
    """How keys for an SAE pair travel: the slave's KME and the local link that reaches it."""

    peer_kme_id: str
    link_id: str
    node: str = ""                # a KME on a node of the relay network: keys are relayed (link_id "")


class SaeRegistry:
    def __init__(self, config: Etsi014Config) -> None:
        self.kme_id = config.kme_id
        self._kme_of = {sae.sae_id: sae.kme_id for sae in config.saes}
        self._link_to = {peer.kme_id: peer.link_id for peer in config.peers if peer.link_id}
        self._node_of = {peer.kme_id: peer.node for peer in config.peers if peer.node}
        self._config = config

    def caller(self, certificate: ClientCertificate | None) -> str:
        """The calling SAE, which this KME must serve; Unauthorized otherwise."""
        if certificate is None:
            raise Unauthorized("a client certificate is required")
        sae_id = sae_id_of(certificate, self._config)
        if sae_id is None and self._config.sae_id_from == "cn" and len(certificate.common_names) > 1:
            raise Unauthorized("the client certificate's subject has more than one CN")
        if sae_id is None:
            raise Unauthorized("the client certificate names no SAE ID")
        if self._kme_of.get(sae_id) != self.kme_id:
            raise Unauthorized("this KME does not serve the SAE of the client certificate")
        return sae_id

    def kme_of(self, sae_id: str) -> str | None:
        return self._kme_of.get(sae_id)

    def route_to(self, sae_id: str) -> Route | None:
        """The route to a remote SAE's KME, or None when the SAE is unknown or local."""
        kme_id = self._kme_of.get(sae_id)
        if kme_id in self._node_of:
            return Route(kme_id, "", self._node_of[kme_id])
        link_id = self._link_to.get(kme_id) if kme_id is not None else None
        return Route(kme_id, link_id) if link_id is not None else None

    def serves(self, sae_id: str) -> bool:
        return self._kme_of.get(sae_id) == self.kme_id


def check_path_sae_id(value: str, what: str) -> str:
    """A SAE ID from the URL path; BadRequest when blank or malformed (never "not found": the route exists)."""
    if not value.strip():
        raise BadRequest("bad request format", [{what: "the SAE ID in the path is blank"}])
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest("bad request format", [{what: "the SAE ID in the path is malformed"}])
    return value
