"""One link end under trio: device frames in, pipeline records over the peer session, keys into the store.

Theory of operation
-------------------
The engine is a nursery: the device intake, the peer connector, and per peer session a
resynchronisation, a frame pump and a record router. The intake task drains the device continuously into
a small bounded buffer, independent of the pipelines, so the device pair never waits for a free pipeline
slot (the sim's Alice device yields frame N only once Bob's device acknowledged it). Bob's buffer holds
BOB_BUFFER_FRAMES and his intake waits when it is full; Alice's buffer holds what Bob may still ask for
(his buffer plus his frames in flight, and a margin) and drops its oldest frame when full, or frames not
asked for within UNSTARTED_FRAME_TTL_S.

At each session (re)start both ends first exchange key-store inventories and apply the same plan
(qkdd.keystore.resync), so no frame of an earlier session stays half stored. Bob's pump takes frames
from his buffer, oldest first, and starts a pipeline per frame (at most `frames_in_flight` at once);
Alice starts her pipeline for a frame when Bob's first record for it arrives (frames are paired by frame
id, which her device assigns), waiting up to FRAME_ARRIVAL_WAIT_S for a frame her device has not
delivered yet. A frame one end lacks is aborted at both ends (Alice answers UNKNOWN_FRAME, Bob discards
it): no key ever comes from an unpaired frame. Each frame runs in its own task; its CPU work (sifting,
Cascade, hashing, Toeplitz) runs in `trio.to_thread` worker threads, and its actions run in order,
the key-store writes included (also in worker threads), so a store always precedes the next send.

Channels on the peer session: PIPELINE (envelope.py records), INVENTORY (resync), CONTROL (JSON key
reservations: one end reserves a key it may allocate, asks the other to reserve the same key id for
the same holder, and hands the key out only after the other end said yes)).
Other parts of the daemon (WireGuard epochs, the ETSI 014 reservation exchange) add their own channels
with `register_channel`; each of their handlers gets a MuxStream-like stream per session
(qkdd.link_channel's interface).

The router hands each record to its frame's inbox or its channel's queue (routed.py): bounded by
ROUTED_QUEUE_RECORDS each and by the session's receive_queue_bytes over all of them, so when a reader
falls behind the router waits, the session's reader stops and TCP flow control slows the peer. Nothing
a reader is still to read is dropped, and a flooding peer cannot make this end hold more than about
twice receive_queue_bytes (the session's queue and the routed ones). Every registered handler must
therefore keep reading its stream, as with ChannelMux. Frames are lock-step (one record each way per
step), so a frame's inbox holds a record only while its task computes or waits for its device frame,
neither of which waits for the peer: the waiting cannot close a cycle between the two ends. CONTROL
messages (a few hundred bytes of JSON; longer ones are dropped with a warning) are handled at most
CONTROL_IN_FLIGHT at once, the router waiting for a free slot beyond that.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from qkdd.hal.base import Device, DeviceError, RawFrame
from qkdd.keystore import KeyStore, KeyState, KeyStoreError, KeyUnavailable, StoredKey
from qkdd.keystore.resync import InventoryAssembler, encode_inventory, plan_resync
from qkdd.link import envelope, linkmsg
from qkdd.link.linkmsg import AbortReason
from qkdd.link.pipeline import (ALICE, BOB, Commit, Discard, Finished, FrameOutcome, FramePipeline,
                                PipelineSettings, Send, StorePending)
from qkdd.link.qber_gate import Band, LinkState, QberGate, band_of
from qkdd.link.routed import RoutedQueue
from qkdd.peer import MuxStream, PeerConnector, PeerError, PeerSession
from qkdd.peer.budget import ByteBudget

log = logging.getLogger("qkdd.link")

CH_PIPELINE, CH_INVENTORY, CH_CONTROL = 1, 2, 3
RESERVE_TIMEOUT_S = 5.0
UNSTARTED_FRAME_TTL_S = 30.0
FRAME_ARRIVAL_WAIT_S = 5.0
BOB_BUFFER_FRAMES = 2
DEVICE_RETRY_S = 1.0
ROUTED_QUEUE_RECORDS = 64       # records per frame inbox or channel queue (and bytes: see routed.py)
CONTROL_IN_FLIGHT = 64          # the peer's CONTROL messages handled at once
CONTROL_MAX_BYTES = 4096        # a reservation or its answer is far shorter
RATE_WINDOW_S = 10.0
HEALTH_POLL_S = 2.0
HOLDER_PREFIX = "v1:"
FRAME_QBER_FRAMES = 200_000     # frames whose agreed QBER is remembered for their keys (about 20 MB)


@dataclass
class QberSample:
    time_s: float
    qber: float
    qber_estimate: float | None
    secret_bits: int
    frame_id: int


class LockedGate:
    """The QBER gate shared by frames in worker threads; decisions are queued for the trio side."""

    def __init__(self, gate: QberGate):
        self.gate = gate
        self._lock = threading.Lock()
        self.decisions: deque = deque()

    def __call__(self, qber: float) -> str | None:
        with self._lock:
            decision = self.gate.observe_frame(qber, time.monotonic())
            self.decisions.append((qber, decision))
        if decision.keep_key:
            return None
        return f"QBER gate: link {decision.state.value} (frame QBER {qber:.4f}, threshold {self.gate.threshold})"

    def observe_health(self, healthy: bool):
        with self._lock:
            decision = self.gate.observe_health(healthy)
            if decision is not None:
                self.decisions.append((None, decision))


class LinkEngine:
    def __init__(self, link_id: str, role: str, device: Device, store: KeyStore, *, connector_factory,
                 settings: PipelineSettings = PipelineSettings(), frames_in_flight: int = 4,
                 key_expiry_s: float = 86400.0, qber_threshold: float = 0.08, metrics=None, health=None,
                 protocol: str = "bb84"):
        self.link_id = link_id
        self.role = role
        self.device = device
        self.store = store
        self.settings = settings
        self.frames_in_flight = frames_in_flight
        self.key_expiry_s = key_expiry_s
        self.metrics = metrics
        self.health = health
        self.protocol = protocol
        self.gate = LockedGate(QberGate(threshold=qber_threshold))
        self.connector: PeerConnector = connector_factory(self._on_session)
        self.session: PeerSession | None = None
        self.qber_history: deque[QberSample] = deque(maxlen=100_000)
        self._frame_qber: dict[int, float] = {}                    # frame id -> QBER both ends agreed on
        self.frames_done = 0
        self.frames_aborted = 0
        self.totals = {"secret_bits": 0, "sifted_bits": 0, "keys": 0}
        self.last_outcome: FrameOutcome | None = None
        self._rate_window: deque[tuple[float, int, int]] = deque()
        self.frames_unpaired = 0                                     # device frames never paired
        # Bob: device frames waiting for a pipeline slot (the intake waits while it is full)
        self._bob_frames_in, self._bob_frames_out = trio.open_memory_channel[RawFrame](BOB_BUFFER_FRAMES)
        # Alice: device frames Bob may still ask for, by id, with the time they arrived
        self._frames: dict[int, tuple[RawFrame, float]] = {}
        self._frames_capacity = BOB_BUFFER_FRAMES + frames_in_flight + 2
        self._newest_frame_id = -1
        self._frame_arrived = trio.Event()
        self._decoy = None
        self._inboxes: dict[int, RoutedQueue] = {}                  # frame id -> its records from the peer
        self._consumers: dict[int, Any] = {}                        # channel -> handler(stream)
        self._consumer_queues: dict[int, RoutedQueue] = {}
        self._routed: ByteBudget | None = None                      # bytes in both, per session
        self._session_nursery: trio.Nursery | None = None
        self._pending_reservations: dict[int, tuple[trio.Event, dict]] = {}
        self._next_request = 0
        self._resynced = trio.Event()
        self._set_state("starting", "device and peer channel coming up")

    # -- lifetime -------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.device.init()
        if self.role == ALICE:
            self._decoy = self.device.decoy_settings()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.device.run)
                await nursery.start(self.connector.run)
                nursery.start_soon(self._intake)
                nursery.start_soon(self._watch_device)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.device.close()

    def register_channel(self, channel: int, handler) -> None:
        """Serve `handler(stream)` on every peer session of this link: `stream.send(payload)` and
        `await stream.receive()` (SessionClosedError once the session is over), as qkdd.link_channel's
        MuxStream. Records for it wait in a queue bounded by records and bytes (routed.py); when the
        handler falls behind, the whole session waits for it (backpressure, nothing dropped), so it must
        keep reading. Records that arrive before it is registered, or after it returned, are dropped with
        a warning, so its protocol retries (as WireGuard's)."""
        if channel in (CH_PIPELINE, CH_INVENTORY, CH_CONTROL) or not 0 <= channel <= 0xFFFF:
            raise ValueError(f"link {self.link_id}: channel {channel} is the engine's own or out of range")
        if channel in self._consumers:
            raise ValueError(f"link {self.link_id}: channel {channel} registered twice")
        self._consumers[channel] = handler
        if self.session is not None and self._session_nursery is not None:
            self._start_consumer(channel, handler, self.session, self._session_nursery)

    def _start_consumer(self, channel: int, handler, session: PeerSession, nursery: trio.Nursery) -> None:
        assert self._routed is not None
        queue = RoutedQueue(self._routed, ROUTED_QUEUE_RECORDS)
        self._consumer_queues[channel] = queue
        nursery.start_soon(self._serve_consumer, handler,
                           MuxStream(session, channel, queue.receive_channel, queue.budget), queue)

    async def _serve_consumer(self, handler, stream: MuxStream, queue: RoutedQueue) -> None:
        try:
            await handler(stream)
        except PeerError:
            pass                                   # the session is over; the next one serves it again
        except Exception:
            log.exception("link %s: channel %d handler failed; key generation goes on", self.link_id,
                          stream.channel)
        finally:
            queue.close()                          # nobody reads it any more: the router must not wait on it

    async def _on_session(self, session: PeerSession) -> None:
        self.session = session
        self._resynced = trio.Event()
        self._routed = ByteBudget(session.receive_queue_bytes)
        try:
            await self._resync(session)
            self._resynced.set()
            self._set_state_from_gate()
            log.info("link %s: session %s ready (epoch %d)", self.link_id, session.session_id, session.epoch)
            try:
                async with trio.open_nursery() as nursery:
                    self._session_nursery = nursery
                    for channel, handler in self._consumers.items():
                        self._start_consumer(channel, handler, session, nursery)
                    nursery.start_soon(self._route, session, nursery)
                    nursery.start_soon(self._pump_bob if self.role == BOB else self._pump_alice, session, nursery)
            except* PeerError as group:
                log.info("link %s: session %s over: %s", self.link_id, session.session_id,
                         "; ".join(str(e) for e in group.exceptions)[:300])
        finally:
            self.session = None
            self._session_nursery = None
            self._inboxes.clear()
            for queue in self._consumer_queues.values():
                queue.close()
            self._consumer_queues.clear()
            self._routed = None
            for event, reply in self._pending_reservations.values():
                reply.setdefault("ok", False)
                reply.setdefault("error", "peer session ended")
                event.set()
            self._set_state("failed", "peer session lost; reconnecting")

    async def _resync(self, session: PeerSession) -> None:
        local = await trio.to_thread.run_sync(self.store.inventory, self.link_id)
        try:
            messages = await trio.to_thread.run_sync(encode_inventory, self.link_id, local, session.max_payload_bytes)
        except KeyStoreError as exc:
            raise PeerError(f"cannot send this end's key inventory: {exc}") from None
        assembler = InventoryAssembler(self.link_id)
        failures: list[PeerError] = []
        async with trio.open_nursery() as nursery:
            async def guarded(step) -> None:          # the first failure ends both, re-raised below as is
                try:
                    await step()
                except PeerError as exc:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()
            # sent while the peer's messages are read: two large inventories must not wait on each other
            nursery.start_soon(guarded, lambda: session.send_many([(CH_INVENTORY, m) for m in messages]))
            await guarded(lambda: self._receive_inventory(session, assembler))
        if failures:
            raise failures[0]
        remote = assembler.inventory
        plan = plan_resync(local, remote)
        await trio.to_thread.run_sync(self.store.apply_resync, self.link_id, plan.promote, plan.discard, plan.expire)
        log.info("link %s: key store resynchronised", self.link_id,
                 extra={"promoted": len(plan.promote), "discarded": len(plan.discard), "expired": len(plan.expire)})

    @staticmethod
    async def _receive_inventory(session: PeerSession, assembler: InventoryAssembler) -> None:
        while not assembler.complete:
            channel, payload = await session.receive()
            if channel != CH_INVENTORY:
                raise PeerError(f"expected the peer's key inventory first, got channel {channel}")
            try:
                assembler.add(payload)
            except KeyStoreError as exc:
                raise PeerError(f"peer inventory refused: {exc}") from None

    # -- frames ---------------------------------------------------------------------------------
    async def _intake(self) -> None:
        """Drain the device into this end's frame buffer, whatever the pipelines are doing."""
        while True:
            try:
                frame = await self.device.next_frame()
            except DeviceError as exc:
                log.warning("link %s: device frame lost: %s", self.link_id, exc)
                await trio.sleep(DEVICE_RETRY_S)
                continue
            if self.role == BOB:
                await self._bob_frames_in.send(frame)
            else:
                self._keep_alice_frame(frame)

    def _keep_alice_frame(self, frame: RawFrame) -> None:
        now = time.monotonic()
        self._frames[frame.frame_id] = (frame, now)
        self._newest_frame_id = max(self._newest_frame_id, frame.frame_id)
        for frame_id, (_, ready_s) in list(self._frames.items()):
            if now - ready_s > UNSTARTED_FRAME_TTL_S:
                self._drop_alice_frame(frame_id)
        while len(self._frames) > self._frames_capacity:
            self._drop_alice_frame(min(self._frames))
        self._frame_arrived.set()
        self._frame_arrived = trio.Event()

    def _drop_alice_frame(self, frame_id: int) -> None:
        del self._frames[frame_id]
        self.frames_unpaired += 1
        log.debug("link %s: frame %d dropped: Bob did not start it in time", self.link_id, frame_id)

    async def _pump_bob(self, session: PeerSession, nursery: trio.Nursery) -> None:
        slots = trio.Semaphore(self.frames_in_flight)
        while True:
            await slots.acquire()
            frame = await self._bob_frames_out.receive()
            pipeline = FramePipeline(BOB, frame, self.settings, gate=self.gate)
            nursery.start_soon(self._run_frame, pipeline, self._open_inbox(frame.frame_id), session, True,
                               slots.release)

    async def _pump_alice(self, session: PeerSession, nursery: trio.Nursery) -> None:
        """Alice's frames start from Bob's records (`_route`); nothing to pump."""
        await trio.sleep_forever()

    def _open_inbox(self, frame_id: int) -> RoutedQueue:
        assert self._routed is not None
        inbox = self._inboxes[frame_id] = RoutedQueue(self._routed, ROUTED_QUEUE_RECORDS)
        return inbox

    @property
    def routed_bytes(self) -> int:
        """Payload bytes from the peer waiting in frame inboxes and channel queues (this session)."""
        return self._routed.held_bytes if self._routed is not None else 0

    async def _start_alice_frame(self, frame_id: int, inbox: RoutedQueue, session: PeerSession) -> None:
        """Pair Bob's frame with hers (waiting briefly for her device to deliver it) and run it."""
        ready = self._frames.pop(frame_id, None)
        with trio.move_on_after(FRAME_ARRIVAL_WAIT_S):
            while ready is None and frame_id > self._newest_frame_id:
                await self._frame_arrived.wait()
                ready = self._frames.pop(frame_id, None)
        if ready is None:
            self._inboxes.pop(frame_id, None)
            inbox.close()
            self.frames_unpaired += 1
            await session.send(CH_PIPELINE, envelope.encode(frame_id, [(
                envelope.Step.ABORT, linkmsg.encode_abort(AbortReason.UNKNOWN_FRAME, "no such frame at Alice"))]))
            return
        pipeline = FramePipeline(ALICE, ready[0], self.settings, gate=self.gate, decoy=self._decoy)
        await self._run_frame(pipeline, inbox, session, False)

    async def _route(self, session: PeerSession, nursery: trio.Nursery) -> None:
        control_slots = trio.Semaphore(CONTROL_IN_FLIGHT)
        while True:
            channel, payload = await session.receive()
            if channel == CH_CONTROL:
                if len(payload) > CONTROL_MAX_BYTES:
                    log.warning("link %s: control message of %d bytes dropped (at most %d)", self.link_id,
                                len(payload), CONTROL_MAX_BYTES)
                    continue
                await control_slots.acquire()                   # waits while CONTROL_IN_FLIGHT are handled
                nursery.start_soon(self._handle_control, session, payload, control_slots)
                continue
            if channel in self._consumer_queues:
                if not await self._consumer_queues[channel].put(payload):      # waits while it is full
                    log.warning("link %s: channel %d handler has returned; record dropped", self.link_id, channel)
                continue
            if channel != CH_PIPELINE:
                log.warning("link %s: record on unknown channel %d dropped", self.link_id, channel)
                continue
            try:
                frame_id = envelope.peek_frame_id(payload)
            except envelope.EnvelopeError as exc:
                log.warning("link %s: malformed pipeline record dropped: %s", self.link_id, exc)
                continue
            inbox = self._inboxes.get(frame_id)
            if inbox is None and self.role == ALICE and not _is_abort(payload):
                known = frame_id in self._frames or frame_id > self._newest_frame_id
                if not known or len(self._inboxes) >= 2 * self.frames_in_flight:
                    self.frames_unpaired += 1
                    reason = "no such frame at Alice" if not known else "Alice has too many frames in flight"
                    await session.send(CH_PIPELINE, envelope.encode(frame_id, [(
                        envelope.Step.ABORT, linkmsg.encode_abort(AbortReason.UNKNOWN_FRAME, reason))]))
                    continue
                inbox = self._open_inbox(frame_id)
                nursery.start_soon(self._start_alice_frame, frame_id, inbox, session)
            if inbox is None or not await inbox.put(payload):       # waits while it is full
                log.debug("link %s: record for finished frame %d dropped", self.link_id, frame_id)

    async def _run_frame(self, pipeline: FramePipeline, inbox: RoutedQueue, session: PeerSession,
                         start: bool, on_done=None) -> None:
        try:
            if start:
                await self._execute(pipeline, await trio.to_thread.run_sync(pipeline.start), session)
            async for record in inbox:
                actions = await trio.to_thread.run_sync(pipeline.receive, record)
                await self._execute(pipeline, actions, session)
                if pipeline.done:
                    break
        finally:
            if self._inboxes.get(pipeline.frame_id) is inbox:
                del self._inboxes[pipeline.frame_id]
            inbox.close()
            if on_done is not None:
                on_done()

    async def _execute(self, pipeline: FramePipeline, actions, session: PeerSession) -> None:
        for action in actions:
            if isinstance(action, Send):
                await session.send(CH_PIPELINE, action.record)
            elif isinstance(action, StorePending):
                self._remember_qber(action.frame_id, pipeline.outcome.qber)
                await trio.to_thread.run_sync(
                    lambda: self.store.put_pending(self.link_id, action.frame_id, action.keys,
                                                   expires_at=time.time() + self.key_expiry_s,
                                                   allocatable=action.allocatable))
            elif isinstance(action, Commit):
                await trio.to_thread.run_sync(self.store.commit_frame, self.link_id, action.frame_id)
            elif isinstance(action, Discard):
                await trio.to_thread.run_sync(self.store.discard_frame, self.link_id, action.frame_id)
            elif isinstance(action, Finished):
                self._record(action.outcome)
        self._drain_gate()

    def _remember_qber(self, frame_id: int, qber: float | None) -> None:
        """The frame's X-basis error rate after Cascade: both ends count the same corrected bits over the
        same length, so both report the same value for the frame's keys (the last frame's QBER differs)."""
        if qber is None:
            return
        self._frame_qber[frame_id] = qber
        if len(self._frame_qber) > FRAME_QBER_FRAMES:
            del self._frame_qber[next(iter(self._frame_qber))]     # the oldest frame

    def qber_of(self, key: StoredKey) -> float | None:
        """The QBER of the frame `key` came from, the same at both ends; None when not known (a frame
        from before this daemon started, or older than the last FRAME_QBER_FRAMES)."""
        return self._frame_qber.get(key.frame_id)

    # -- metrics and state ------------------------------------------------------------------------
    def _record(self, outcome: FrameOutcome) -> None:
        now = time.monotonic()
        self.last_outcome = outcome
        self.frames_done += 1
        if outcome.aborted:
            self.frames_aborted += 1
            log.info("link %s: frame %d dropped: %s", self.link_id, outcome.frame_id, outcome.aborted)
        self.totals["secret_bits"] += outcome.secret_bits
        self.totals["sifted_bits"] += outcome.sifted_key_bits
        self.totals["keys"] += outcome.keys
        qber = outcome.qber if outcome.qber is not None else outcome.qber_estimate
        if qber is not None:
            self.qber_history.append(QberSample(time.time(), qber, outcome.qber_estimate, outcome.secret_bits,
                                                outcome.frame_id))
        self._rate_window.append((now, outcome.secret_bits, outcome.sifted_bits))
        while self._rate_window and now - self._rate_window[0][0] > RATE_WINDOW_S:
            self._rate_window.popleft()
        self.device.update_estimates(qber=qber, key_rate_bps=self.rates()[0])     # its channel_status reports them
        if self.metrics is None:
            return
        for _ in range(outcome.keys):
            self.metrics.key_stored(self.settings.key_bits)
        span = max(now - self._rate_window[0][0], 1.0) if len(self._rate_window) > 1 else RATE_WINDOW_S
        self.metrics.rates(raw_bps=sum(r for _, _, r in self._rate_window) / span,
                           secure_bps=sum(s for _, s, _ in self._rate_window) / span)
        if qber is not None:
            self.metrics.channel(qber=qber, visibility=max(0.0, 1.0 - 2.0 * qber))

    def rates(self) -> tuple[float, float]:
        """(secret, sifted) bits per second over the last RATE_WINDOW_S."""
        now = time.monotonic()
        window = [r for r in self._rate_window if now - r[0] <= RATE_WINDOW_S]
        if not window:
            return 0.0, 0.0
        span = max(now - window[0][0], 1.0)
        return sum(s for _, s, _ in window) / span, sum(r for _, _, r in window) / span

    def _drain_gate(self) -> None:
        changed = False
        while self.gate.decisions:
            qber, decision = self.gate.decisions.popleft()
            changed = changed or decision.state_changed
            if self.metrics is not None:
                if decision.threshold_exceeded:
                    self.metrics.qber_alarm(decision.threshold_exceeded)
                if decision.halted:
                    self.metrics.halted()
            if decision.halted:
                log.warning("link %s: key generation halted", self.link_id,
                            extra={"qber": qber, "state": decision.state.value})
        if changed or self.health is not None:
            self._set_state_from_gate()

    def _set_state_from_gate(self) -> None:
        if self.session is None:
            return
        state = self.gate.gate.state
        last = self.qber_history[-1].qber if self.qber_history else None
        if state is LinkState.ACTIVE:
            nominal = last is None or band_of(min(last, 1.0)) is Band.NOMINAL
            self._set_state("running" if nominal else "degraded",
                            "generating keys" + (f", QBER {last:.4f}" if last is not None else ""))
        elif state is LinkState.SUSPENDED:
            self._set_state("suspended", f"QBER {last:.4f} at or above the threshold; key generation suspended")
        elif state is LinkState.HALTED:
            self._set_state("halted", f"QBER {last:.4f} at or above 11 %: key generation halted")
        else:
            self._set_state("halted", "link degraded: QBER above the threshold for too long or device unhealthy")

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        if self.health is not None:
            self.health.set_link_state(self.link_id, state, detail)

    async def _watch_device(self) -> None:
        while True:
            try:
                health = await self.device.health()
                channel = await self.device.channel_status()
            except DeviceError as exc:
                self.gate.observe_health(False)
                log.warning("link %s: device health check failed: %s", self.link_id, exc)
            else:
                self.gate.observe_health(health.ok)
                if self.metrics is not None:
                    self.metrics.device(temperature_celsius=health.temperature_c, uptime_s=health.uptime_s)
                    self.metrics.channel(loss_db=channel.link_loss_db, photon_rate_hz=channel.photon_rate_hz)
            self._drain_gate()
            await trio.sleep(HEALTH_POLL_S)

    # -- key delivery ---------------------------------------------------------------------------
    async def request_key(self, bits: int) -> StoredKey:
        """Reserve a key this end may allocate, have the peer reserve the same id, then deliver it here.

        KeyUnavailable when no key is stored or the peer is unreachable."""
        session = self.session
        if session is None or not self._resynced.is_set():
            raise KeyUnavailable("the peer is not connected")
        holder = f"{HOLDER_PREFIX}{bits}"
        for _ in range(3):
            (key_id,) = await trio.to_thread.run_sync(
                lambda: self.store.reserve_available(self.link_id, 1, holder, bits=self.settings.key_bits))
            reply = await self._ask_peer(session, {"type": "reserve", "key_id": key_id, "holder": holder})
            if reply.get("ok"):
                key = await trio.to_thread.run_sync(lambda: self.store.deliver(self.link_id, key_id, holder=holder))
                return _truncate(key, bits)
            if reply.get("gone"):
                # the peer delivered or lost it: this copy must never be handed out either
                await trio.to_thread.run_sync(lambda: self.store.deliver(self.link_id, key_id, holder=holder))
                continue
            if reply.get("error") == "timeout":
                raise KeyUnavailable("the peer did not confirm the reservation in time")
            await trio.to_thread.run_sync(self.store.release, self.link_id, [key_id])
            raise KeyUnavailable(f"the peer refused the reservation: {reply.get('error', '?')}")
        raise KeyUnavailable("no key both ends hold")

    async def fetch_key(self, key_id: str) -> StoredKey:
        """Deliver a key the peer reserved for a /v1 consumer (once). KeyStoreError subclasses otherwise."""
        def deliver() -> StoredKey:
            state = self.store.state(self.link_id, key_id)
            if state is not KeyState.RESERVED:
                if state in (KeyState.DELIVERED, KeyState.EXPIRED):
                    return self.store.deliver(self.link_id, key_id)   # raises KeyAlreadyDelivered
                raise KeyUnavailable(f"key {key_id} was not handed out at the other end")
            holder = self.store.holder_of(self.link_id, key_id) or ""
            return _truncate(self.store.deliver(self.link_id, key_id, holder=holder), _bits_of(holder))
        return await trio.to_thread.run_sync(deliver)

    async def _ask_peer(self, session: PeerSession, message: dict) -> dict:
        self._next_request += 1
        request_id = self._next_request
        event, reply = trio.Event(), {}
        self._pending_reservations[request_id] = (event, reply)
        try:
            await session.send(CH_CONTROL, json.dumps({**message, "request": request_id}).encode())
            with trio.move_on_after(RESERVE_TIMEOUT_S):
                await event.wait()
                return reply
            return {"ok": False, "error": "timeout"}
        finally:
            self._pending_reservations.pop(request_id, None)

    async def _handle_control(self, session: PeerSession, payload: bytes, slots: trio.Semaphore) -> None:
        try:
            await self._on_control(session, payload)
        finally:
            slots.release()

    async def _on_control(self, session: PeerSession, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            kind, request_id = message["type"], int(message["request"])
        except (ValueError, KeyError, TypeError, OverflowError):    # OverflowError: a request id of 1e999
            log.warning("link %s: malformed control message dropped", self.link_id)
            return
        if kind == "reserved":
            pending = self._pending_reservations.get(request_id)
            if pending is not None:
                pending[1].update(message)
                pending[0].set()
            return
        if kind != "reserve":
            return
        reply = {"type": "reserved", "request": request_id}
        try:
            key_id, holder = str(message["key_id"]), str(message["holder"])
            if not holder.startswith(HOLDER_PREFIX):
                raise KeyStoreError("unknown holder")

            def reserve() -> None:
                if self.store.state(self.link_id, key_id) is KeyState.PENDING:
                    # the peer holds it AVAILABLE, so its frame committed there: promote it here too
                    self.store.apply_resync(self.link_id, [key_id], [], [])
                self.store.reserve_ids(self.link_id, [key_id], holder)
            await trio.to_thread.run_sync(reserve)
            reply["ok"] = True
        except (KeyStoreError, KeyError) as exc:
            reply.update(ok=False, error=type(exc).__name__,
                         gone=isinstance(exc, KeyStoreError) and type(exc).__name__ in ("KeyAlreadyDelivered",
                                                                                         "KeyNotFound"))
        try:
            await session.send(CH_CONTROL, json.dumps(reply).encode())
        except PeerError:
            pass


def _is_abort(record: bytes) -> bool:
    try:
        _, parts = envelope.decode(record)
    except envelope.EnvelopeError:
        return False
    return bool(parts) and parts[-1][0] == envelope.Step.ABORT


def _bits_of(holder: str) -> int:
    try:
        return int(holder[len(HOLDER_PREFIX):])
    except ValueError:
        return 0


def _truncate(key: StoredKey, bits: int) -> StoredKey:
    if not 0 < bits < key.bits:
        return key
    return dataclasses.replace(key, bits=bits, material=key.material[:bits // 8])
