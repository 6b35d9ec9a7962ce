"""The one owner of a link's classical channel: one PeerConnector, one ChannelMux per session, shared by
every part that talks to the other end (the link engine's frames and key-store inventory, the
reservation service that /v1, ETSI 014 and WireGuard share, and every later consumer).

Theory of operation
-------------------
Each user registers a channel kind before `run`: a *preparer* (at most one: the link engine's key-store
resynchronisation) or a *handler*. On every (re)established session the channel routes the session's
records into one ChannelMux (one queue per kind, one byte budget: qkdd.peer.mux), runs the preparer to
completion, marks the link `ready`, then runs every handler beside the others until the session ends, and
again for the next session. Records of a kind whose handler has not started yet wait in its queue. A
handler that raises a PeerError ends the session (the connector brings up the next one); one that fails
otherwise is logged and stays stopped for this session, so a consumer's bug never stops key generation.

Channel numbers of the classical channel live here, so that two kinds can never collide.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from qkdd.peer import ChannelMux, MuxStream, PeerConnector, PeerError, PeerSession, PeerSettings, SessionClosedError

log = logging.getLogger("qkdd.link")

# Channel kinds of a link's classical channel (records carry them; see qkdd.peer.records).
PIPELINE_CHANNEL = 1          # the link engine's frame records (qkdd.link.envelope)
INVENTORY_CHANNEL = 2         # key-store inventories at each session start (qkdd.keystore.resync)
RESERVATION_CHANNEL = 0x5253  # "RS": the reservation protocol (qkdd.reservation), every key consumer's
KEY_RELAY_CHANNEL = 0x4B52    # "KR": vendor KME key IDs (qkdd.link.key_relay), links with driver "etsi014"
LINKSTATE_CHANNEL = 0x4C53    # "LS": the relay network's link-state announcements (qkdd.relay.linkstate)
RELAY_CHANNEL = 0x524C        # "RL": hop-by-hop relay of keys (qkdd.relay.protocol)

StreamHandler = Callable[[MuxStream], Awaitable[None]]


class LinkChannel:
    def __init__(self, link_id: str, settings: PeerSettings, signing_key, pinned_peer_key) -> None:
        self.link_id = link_id
        self.settings = settings
        self._signing_key = signing_key
        self._pinned = pinned_peer_key
        self._handlers: dict[int, StreamHandler] = {}
        self._preparer: tuple[int, StreamHandler] | None = None
        self.connector = PeerConnector(settings, signing_key, pinned_peer_key, self._on_session)
        self.session: PeerSession | None = None          # the live session once prepared
        self.mux: ChannelMux | None = None
        self._ready = trio.Event()

    # -- registration ---------------------------------------------------------------------------
    def register(self, channel: int, handler: StreamHandler) -> None:
        """Run `handler(stream)` on every session once it is prepared, until the session ends."""
        self._claim(channel)
        self._handlers[channel] = handler

    def prepare_with(self, channel: int, preparer: StreamHandler) -> None:
        """Run `preparer(stream)` first on every session; no handler starts before it returns, and a
        PeerError from it ends the session."""
        if self._preparer is not None:
            raise ValueError(f"link {self.link_id}: a session preparer is registered already")
        self._claim(channel)
        self._preparer = (channel, preparer)

    def _claim(self, channel: int) -> None:
        taken = set(self._handlers) | ({self._preparer[0]} if self._preparer else set())
        if not 0 <= channel <= 0xFFFF or channel in taken:
            raise ValueError(f"link {self.link_id}: channel {channel} is out of range or registered twice")

    # -- state ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A session is live and prepared (the key stores agree)."""
        return self.session is not None

    async def wait_ready(self) -> PeerSession:
        while self.session is None:
            await self._ready.wait()
        return self.session

    @property
    def signing_key(self):
        """This end's ML-DSA-65 identity on the link (the relay network signs with it)."""
        return self._signing_key

    @property
    def pinned_peer_key(self):
        """The other end's pinned ML-DSA-65 public key."""
        return self._pinned

    @property
    def queued_bytes(self) -> int:
        """Bytes from the peer waiting in this session's queues (channels and frame inboxes)."""
        return self.mux.queued_bytes if self.mux is not None else 0

    # -- lifetime -------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the session to the other end up and serve the registered kinds until cancelled."""
        await self.connector.run(task_status=task_status)

    async def _on_session(self, session: PeerSession) -> None:
        channels = list(self._handlers) + ([self._preparer[0]] if self._preparer else [])
        mux = ChannelMux(session, channels)
        mux.attach()                      # before the first checkpoint: the reader has read nothing yet
        self.mux = mux
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_end_queues_with, session, mux)
                if self._preparer is not None:
                    channel, preparer = self._preparer
                    await preparer(mux.stream(channel))
                self.session = session
                self._ready.set()
                self._ready = trio.Event()
                for channel, handler in self._handlers.items():
                    nursery.start_soon(self._serve, channel, handler, mux.stream(channel), nursery.cancel_scope)
        except* SessionClosedError:
            pass
        except* PeerError as group:
            log.info("link %s: session %s over: %s", self.link_id, session.session_id,
                     "; ".join(str(e) for e in group.exceptions)[:300])
        except* Exception:
            # the preparer failed otherwise (its key store cannot read or write): end this session only,
            # the connector brings up the next one
            log.exception("link %s: session %s could not be prepared; ending it", self.link_id, session.session_id)
        finally:
            if self.mux is mux:
                self.session, self.mux = None, None

    async def _serve(self, channel: int, handler: StreamHandler, stream: MuxStream,
                     session_scope: trio.CancelScope) -> None:
        try:
            await handler(stream)
        except* SessionClosedError:
            pass
        except* PeerError as group:
            log.info("link %s: channel %d ends the session: %s", self.link_id, channel,
                     "; ".join(str(e) for e in group.exceptions)[:300])
            session_scope.cancel()
        except* Exception:
            log.exception("link %s: channel %d handler failed; the other channels go on", self.link_id, channel)
        finally:
            stream.queue.close()          # nobody reads it any more: the reader must not wait on it


async def _end_queues_with(session: PeerSession, mux: ChannelMux) -> None:
    await session.ended.wait()
    mux.end()
