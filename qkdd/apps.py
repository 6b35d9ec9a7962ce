"""The application interfaces on ports of their own, built from `[etsi004]` and `[skip]`: each registers its
purpose on the reservation service of its link (before the links run) and returns the servers the daemon
starts beside its HTTP listeners. Problems are StartupErrors naming the key."""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

from qkdd.apps_config import listen_address
from qkdd.config import Config
from qkdd.preflight import StartupError

log = logging.getLogger("qkdd.apps")


@dataclass
class Apps:
    servers: dict[str, Any] = field(default_factory=dict)     # "etsi004" / "skip" -> object with run()


def build_apps(config: Config, links, keystore, engines: dict[str, Any], metrics=None) -> Apps:
    """`links`: qkdd.link.service.Links (their reservation services); `engines`: link id -> LinkEngine;
    `metrics`: the daemon's qkdd.metrics.Metrics (None: counted but not exported)."""
    apps = Apps()
    if config.etsi004 is not None:
        apps.servers["etsi004"] = _etsi004(config, links, keystore, engines, metrics)
    if config.skip is not None:
        apps.servers["skip"] = _skip(config, links, keystore, metrics)
    return apps


def _reservations(links, link_id: str, key: str):
    service = links.reservations.get(link_id)
    if service is None:
        raise StartupError(key, f"link {link_id!r} has no classical channel here")
    return service


def _etsi004(config: Config, links, keystore, engines, metrics):
    from qkdd.etsi004.chunks import StreamChunks
    from qkdd.etsi004.deadlines import ChunkDeadlines, DeadlineError
    from qkdd.etsi004.server import Etsi004Server
    from qkdd.etsi004.streams import Defaults
    from qkdd.http.tls import server_context
    section = config.etsi004
    link = config.link(section.link_id)
    try:
        deadlines = ChunkDeadlines(keystore.database)        # TTL deadlines, in the key store's file
    except DeadlineError as exc:
        raise StartupError("etsi004", str(exc)) from None
    chunks = StreamChunks(link.link_id, link.role, keystore, _reservations(links, link.link_id, "etsi004.link_id"),
                          key_bits=link.key_bits, deadlines=deadlines)
    try:
        tls = server_context(section.tls)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise StartupError("etsi004.tls", f"TLS set-up failed: {getattr(exc, 'reason', None) or exc}") from None
    engine = engines.get(link.link_id)

    def capacity_bps() -> float:
        if section.capacity_bps > 0 or engine is None:
            return section.capacity_bps
        return engine.status.rates()[0]

    host, port = listen_address(section.listen)
    return Etsi004Server(host, port, chunks, tls, capacity_bps=capacity_bps,
                         defaults=Defaults(section.timeout_ms, section.ttl_s),
                         metrics=metrics.app_link(link.link_id) if metrics is not None else None)


def _skip(config: Config, links, keystore, metrics):
    try:
        from qkdd.skip.psk import psk_server_context
    except ImportError:
        raise StartupError("skip", "SKIP needs the sslpsk3 package (pip install 'qkdd[skip]')") from None
    from qkdd.http.router import Router
    from qkdd.http.server import HTTPServer
    from qkdd.skip import api
    from qkdd.skip.keys import SkipKeys
    from qkdd.skip.psk_file import PskError, read_psk
    section = config.skip
    remotes = {}
    for index, remote in enumerate(section.remotes):
        link = config.link(remote.link_id)
        service = _reservations(links, link.link_id, f"skip.remotes[{index}].link_id")
        keys = next((existing for existing in remotes.values() if existing.link_id == link.link_id), None)
        remotes[remote.system_id] = keys or SkipKeys(link.link_id, keystore, service, key_bits=link.key_bits)
    psks = {}
    for index, client in enumerate(section.clients):
        try:
            psks[client.identity] = read_psk(client.psk_file)
        except PskError as exc:
            raise StartupError(f"skip.clients[{index}].psk_file", str(exc)) from None
    router = Router()
    if metrics is not None:
        metrics.skip_server()
        for keys in remotes.values():
            keys.metrics = metrics.app_link(keys.link_id)
    api.register(router, section.local_system_id, remotes,
                 refused=metrics.skip_refused if metrics is not None else None)
    host, port = listen_address(section.listen)
    return HTTPServer("skip", host, port, router, ssl_context=psk_server_context(psks),
                      logger=logging.getLogger("qkdd.http.skip"))
