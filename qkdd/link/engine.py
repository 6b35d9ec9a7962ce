"""One link end's frame path under trio: device frames in, pipeline records over the link's channel, keys
into the store.

Theory of operation
-------------------
The engine registers two kinds on the link's one classical channel (qkdd.link_channel): the key-store
inventory, exchanged first on every session (qkdd.link.inventory), and the frame records. Its own
tasks are the device intake and the device health poll (qkdd.link.status). The intake drains the device
continuously into a small bounded buffer, independent of the pipelines, so the device pair never waits
for a free pipeline slot (the sim's Alice device yields frame N only once Bob's device acknowledged it).
Bob's buffer holds BOB_BUFFER_FRAMES and his intake waits when it is full; Alice's buffer holds what Bob
may still ask for (his buffer plus his frames in flight, and a margin) and drops its oldest frame when
full, or frames not asked for within UNSTARTED_FRAME_TTL_S.

Per session, Bob's pump takes frames from his buffer, oldest first, and starts a pipeline per frame (at
most `frames_in_flight` at once); Alice starts her pipeline for a frame when Bob's first record for it
arrives (frames are paired by frame id, which her device assigns), waiting up to FRAME_ARRIVAL_WAIT_S
for a frame her device has not delivered yet. A frame one end lacks is aborted at both ends (Alice
answers UNKNOWN_FRAME, Bob discards it): no key ever comes from an unpaired frame. Each frame runs in its
own task with its own inbox (a subqueue of the channel's multiplexer, under the session's one byte
budget); its CPU work runs in `trio.to_thread` worker threads, and its actions run in order, the
key-store writes included, so a store always precedes the next send. Frames are lock-step (one record
each way per step), so an inbox holds a record only while its task computes or waits for its device
frame, neither of which waits for the peer: the waiting cannot close a cycle between the two ends.
"""
from __future__ import annotations

import dataclasses
import logging

import trio

from qkdd.auth.wegman_carter import CHUNKS_PER_FRAME
from qkdd.hal.base import Device, DeviceError, RawFrame
from qkdd.keystore import KeyStore
from qkdd.link import envelope, linkmsg
from qkdd.link.inventory import resynchronise
from qkdd.link.linkmsg import AbortReason
from qkdd.link.pipeline import (ALICE, BOB, Commit, Discard, Finished, FramePipeline, PipelineSettings, Send,
                                StorePending)
from qkdd.link.protocols import frame_protocol
from qkdd.link.status import LinkStatus
from qkdd.link.store_guard import StoreGuard
from qkdd.link_channel import INVENTORY_CHANNEL, PIPELINE_CHANNEL, LinkChannel
from qkdd.peer import MuxStream
from qkdd.peer.mux import BoundedQueue
from qkdd.thread_cpu import run_sync_counted

log = logging.getLogger("qkdd.link")

# (role, pipeline state before a step) -> the stage its CPU time counts towards (status.cpu_s, /v1 metrics);
# BB84 and E91 state names (qkdd.link.pipeline); other protocols' steps count as "other".
STAGES = {(BOB, "START"): "sifting", (BOB, "SIFTING"): "sifting", (ALICE, "AWAIT_DETECT"): "sifting",
          (ALICE, "AWAIT_REPORT"): "estimation", (BOB, "AWAIT_REVEAL"): "estimation",
          (ALICE, "AWAIT_ERRORS"): "estimation", (BOB, "RECONCILING"): "reconciliation",
          (ALICE, "RECONCILING"): "reconciliation", (BOB, "AWAIT_SEED"): "amplification",
          (ALICE, "AWAIT_ACK"): "amplification", (BOB, "AWAIT_COMMIT"): "amplification"}
# A frame Bob's device acknowledged waits in his buffer until one of his frames in flight ends: up to about
# (BOB_BUFFER_FRAMES + frames_in_flight) / frames_in_flight frame times. A 32 M-detection frame takes a minute
# and more on a loaded 2-core host, so 30 s (as before) dropped most frames at Alice before Bob asked for them
# (bench.link, yuan2018: 6 of 10 frames "no such frame at Alice"). Alice's buffer stays bounded by its capacity.
UNSTARTED_FRAME_TTL_S = 300.0
FRAME_ARRIVAL_WAIT_S = 5.0
BOB_BUFFER_FRAMES = 2
DEVICE_RETRY_S = 1.0
AUTH_HALT_RECHECK_S = 60.0


class LinkEngine:
    def __init__(self, link_id: str, role: str, device: Device, store: KeyStore, channel: LinkChannel, *,
                 settings: PipelineSettings = PipelineSettings(), frames_in_flight: int = 4,
                 qber_threshold: float = 0.08, metrics=None, health=None,
                 protocol: str = "bb84", auth_pool=None):
        self.link_id = link_id
        self.role = role
        self.device = device
        self.store = store
        self.channel = channel
        self.settings = settings
        self.frames_in_flight = frames_in_flight
        self.protocol = protocol
        self._frame_protocol = frame_protocol(protocol)       # its pipeline class (qkdd.link.protocols)
        self.auth_pool = auth_pool        # auth "its"/"both": the link's authentication pool (qkdd.auth.pool)
        self.status = LinkStatus(link_id, key_bits=settings.key_bits, qber_threshold=qber_threshold,
                                 metrics=metrics, health=health)
        self.store_guard = StoreGuard(store, link_id, health=health, metrics=metrics)   # pauses frames, see there
        self.store_guard.on_cpu = self.status.add_cpu
        # Bob: device frames waiting for a pipeline slot (the intake waits while it is full)
        self._bob_frames_in, self._bob_frames_out = trio.open_memory_channel[RawFrame](BOB_BUFFER_FRAMES)
        # Alice: device frames Bob may still ask for, by id, with the time they arrived
        self._frames: dict[int, tuple[RawFrame, float]] = {}
        self._frames_capacity = BOB_BUFFER_FRAMES + frames_in_flight + 2
        self._newest_frame_id = -1
        self._frame_arrived = trio.Event()
        self._decoy = None
        self._inboxes: dict[int, BoundedQueue] = {}                 # frame id -> its records from the peer
        channel.prepare_with(INVENTORY_CHANNEL, lambda stream: resynchronise(link_id, store, stream))
        channel.register(PIPELINE_CHANNEL, self._serve_frames)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The device and its intake, until cancelled (the link's channel runs beside, in the daemon)."""
        await self.device.init()
        if self.role == ALICE and self._frame_protocol.needs_decoy:
            try:
                self._decoy = self.device.decoy_settings()
            except DeviceError:       # a device that announces its settings in its stream (serial): at the first frame
                self._decoy = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.device.run)
                nursery.start_soon(self._intake)
                nursery.start_soon(self.status.watch_device, self.device)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.device.close()

    # -- the device -----------------------------------------------------------------------------
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
        now = trio.current_time()
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
        self.status.frames_unpaired += 1
        log.debug("link %s: frame %d dropped: Bob did not start it in time", self.link_id, frame_id)

    # -- frames over one session ----------------------------------------------------------------
    async def _serve_frames(self, stream: MuxStream) -> None:
        """The frame channel of one session: Bob pumps his frames, both route the peer's records."""
        self.status.session_up()
        log.info("link %s: session %s ready (epoch %d)", self.link_id, stream.session.session_id,
                 stream.session.epoch)
        try:
            async with trio.open_nursery() as nursery:
                if self.role == BOB:
                    nursery.start_soon(self._pump_bob, stream, nursery)
                await self._route(stream, nursery)
        finally:
            for inbox in self._inboxes.values():
                inbox.close()
            self._inboxes.clear()
            self.status.session_down()

    async def _pump_bob(self, stream: MuxStream, nursery: trio.Nursery) -> None:
        slots = trio.Semaphore(self.frames_in_flight)
        while True:
            saturated = slots.value == 0          # every frame slot busy: post-processing limits the link
            await slots.acquire()
            await self._wait_auth_pool()
            frame = await self._bob_frames_out.receive()
            pipeline = self._frame_protocol.pipeline(BOB, frame, self._next_frame_settings(saturated),
                                                     gate=self.status.gate, auth_pool=self.auth_pool)
            nursery.start_soon(self._run_frame, pipeline, self._open_inbox(stream, frame.frame_id), stream, True,
                               slots.release)
            del frame, pipeline             # the frame's task holds them alone, and frees them in a worker thread

    def _next_frame_settings(self, saturated: bool) -> PipelineSettings:
        """Bob's settings for the frame just taken: with a frame slot free and none waiting behind it, CPU to spare,
        which an "auto" LDPC decoder may spend to disclose less (qkdd.postprocess.ldpc_plan.decoder_for)."""
        waiting = self._bob_frames_out.statistics().current_buffer_used
        return dataclasses.replace(self.settings, ldpc_spare_cpu=not saturated and waiting == 0)

    def _open_inbox(self, stream: MuxStream, frame_id: int) -> BoundedQueue:
        inbox = self._inboxes[frame_id] = stream.subqueue()
        return inbox

    async def _route(self, stream: MuxStream, nursery: trio.Nursery) -> None:
        """Each record of the peer to its frame's inbox; Alice opens a frame on Bob's first record of it."""
        while True:
            payload = await stream.receive()
            try:
                frame_id = envelope.peek_frame_id(payload)
            except envelope.EnvelopeError as exc:
                log.warning("link %s: malformed pipeline record dropped: %s", self.link_id, exc)
                continue
            inbox = self._inboxes.get(frame_id)
            if inbox is None and self.role == ALICE and not _is_abort(payload):
                known = frame_id in self._frames or frame_id > self._newest_frame_id
                if not known or len(self._inboxes) >= 2 * self.frames_in_flight:
                    reason = "no such frame at Alice" if not known else "Alice has too many frames in flight"
                    await self._refuse_frame(stream, frame_id, reason)
                    continue
                inbox = self._open_inbox(stream, frame_id)
                nursery.start_soon(self._start_alice_frame, frame_id, inbox, stream)
            if inbox is None or not await inbox.put(payload):       # waits while it is full
                log.debug("link %s: record for finished frame %d dropped", self.link_id, frame_id)

    async def _refuse_frame(self, stream: MuxStream, frame_id: int, reason: str) -> None:
        self.status.frames_unpaired += 1
        await stream.send(envelope.encode(frame_id, [(envelope.Step.ABORT,
                                                      linkmsg.encode_abort(AbortReason.UNKNOWN_FRAME, reason))]))

    async def _start_alice_frame(self, frame_id: int, inbox: BoundedQueue, stream: MuxStream) -> None:
        """Pair Bob's frame with hers (waiting briefly for her device to deliver it) and run it."""
        ready = self._frames.pop(frame_id, None)
        with trio.move_on_after(FRAME_ARRIVAL_WAIT_S):
            while ready is None and frame_id > self._newest_frame_id:
                await self._frame_arrived.wait()
                ready = self._frames.pop(frame_id, None)
        if ready is None:
            self._inboxes.pop(frame_id, None)
            inbox.close()
            await self._refuse_frame(stream, frame_id, "no such frame at Alice")
            return
        if self._decoy is None and self._frame_protocol.needs_decoy:
            self._decoy = self.device.decoy_settings()
        pipeline = self._frame_protocol.pipeline(ALICE, ready[0], self.settings, gate=self.status.gate,
                                                 decoy=self._decoy, auth_pool=self.auth_pool)
        del ready                           # the pipeline holds the frame alone, and frees it in a worker thread
        await self._run_frame(pipeline, inbox, stream, False)

    async def _run_frame(self, pipeline: FramePipeline, inbox: BoundedQueue, stream: MuxStream,
                         start: bool, on_done=None) -> None:
        try:
            await self.store_guard.wait_ready()                # while the key store is full or failing
            if start:
                await self._execute(pipeline, await self._compute(pipeline, pipeline.start), stream)
            async for record in inbox:
                actions = await self._compute(pipeline, pipeline.receive, record)
                await self._execute(pipeline, actions, stream)
                if pipeline.done:
                    break
            await trio.to_thread.run_sync(pipeline.release)      # the frame's arrays are freed off the loop
        finally:
            if self._inboxes.get(pipeline.frame_id) is inbox:
                del self._inboxes[pipeline.frame_id]
            inbox.close()
            if on_done is not None:
                on_done()

    async def _compute(self, pipeline: FramePipeline, step, *args) -> list:
        """One step of a frame in a worker thread; its thread CPU time counts towards the step's stage."""
        stage = STAGES.get((self.role, pipeline.state), "other")
        return await run_sync_counted(lambda seconds: self.status.add_cpu(stage, seconds), step, *args)

    async def _execute(self, pipeline: FramePipeline, actions, stream: MuxStream) -> None:
        for action in actions:
            if isinstance(action, Send):
                await stream.send(action.record)
            elif isinstance(action, (StorePending, Commit, Discard)):
                instead = await self.store_guard.apply(pipeline, action)
                if instead is not None:                # the store refused: the frame ends as its pipeline says
                    await self._execute(pipeline, instead, stream)
                    return
            elif isinstance(action, Finished):
                if action.outcome.abort_code == AbortReason.AUTH_POOL:
                    self.status.auth_pool_dry(action.outcome.aborted or "authentication pool dry")
                self.status.record(action.outcome)
                # the device reports what the link measured (ChannelStatus: QBER, secure key rate)
                self.device.update_estimates(qber=self.status.last_qber, key_rate_bps=self.status.rates()[0])
        self.status.drain_gate()

    async def _wait_auth_pool(self) -> None:
        """Bob starts no frame while the link is halted for a dry authentication pool (his pool holds every
        chunk Alice's does, so his own running dry means hers is too). Only a new secret (a restart) brings
        bits back, so this waits for good; the status says why (DEGRADED)."""
        if self.auth_pool is None:
            return
        chunks = await trio.to_thread.run_sync(lambda: self.auth_pool.chunks)
        if chunks < CHUNKS_PER_FRAME:
            self.status.auth_pool_dry(f"authentication pool holds {chunks} chunks, a frame needs {CHUNKS_PER_FRAME}")
        while self.status.auth_halted:
            await trio.sleep(AUTH_HALT_RECHECK_S)

    @property
    def routed_bytes(self) -> int:
        """Payload bytes from the peer waiting in this session's queues and frame inboxes."""
        return self.channel.queued_bytes


def _is_abort(record: bytes) -> bool:
    try:
        _, parts = envelope.decode(record)
    except envelope.EnvelopeError:
        return False
    return bool(parts) and parts[-1][0] == envelope.Step.ABORT
