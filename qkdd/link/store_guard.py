"""Keeps a link's frames off a key store that cannot take their keys: generation pauses while the store is at
capacity or failing, and resumes by itself once a probe finds it fit again.

Theory of operation
-------------------
The link engine hands every key-store action of a frame (StorePending, Commit, Discard) to `apply()`,
and each frame waits in `wait_ready()` before it starts. A store that refuses a write -- StoreFull (the
configured capacity, qkdd.keystore.capacity) or StoreWriteError (SQLite could not write: a full disk,
an I/O error, a lock) -- moves the guard out of `ready`. The frame that met the refusal ends as its
pipeline says (FramePipeline.store_refused: aborted at both ends unless its keys are committed at the
other end already) and new frames wait, so the device pair stops with full buffers, as a device stops
when its key buffer is full. Nothing else stops: the API goes on serving what is stored, and delivering
keys is what brings a full store back under its capacity.

The guard also hears of every write of the store that fails elsewhere (the KME's takes and deliveries,
key requests, consumers: KeyStore.observe_write_failures), so a store that cannot write pauses the link
and shows in health even while no frame of its own is storing.

The first frame waiting probes the store every PROBE_INTERVAL_S, in a worker thread: the link's fill
(two cheap reads), and after a write failure also the free space (at least RESUME_FREE_BYTES after a
full disk) and one small durable write. Commits and discards that failed are carried out again once
the store writes again. The guard leaves `store_full` only below RESUME_FILL_RATIO of the capacity, so
a link whose consumers draw keys slowly does not flap at the bound.

States (GuardMachine; health shows a paused state as the link's alarm, qkdd.health.LINK_ALARMS). Each
change is one log line: warning for store_full, error for store_failed, info on resuming; a refusal or
probe that finds what the guard already knows changes nothing and logs nothing.

    state          event                                              next
    ready          refused: StoreFull                                 store_full
    ready          refused: StoreWriteError                           store_failed
    store_full     refused: StoreWriteError, or probe cannot write    store_failed
    store_full     probe: fill below RESUME_FILL_RATIO                ready
    store_failed   refused: StoreFull, or probe writes, store full    store_full
    store_failed   probe: writes, space free, not full                ready
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import trio

from qkdd.keystore import KeyStore, KeyStoreError
from qkdd.keystore.capacity import Fill
from qkdd.keystore.model import StoreFull, StoreWriteError
from qkdd.link.pipeline import Action, Commit, Discard, FramePipeline, StorePending
from qkdd.thread_cpu import run_sync_counted

log = logging.getLogger("qkdd.link")

READY, STORE_FULL, STORE_FAILED = "ready", "store_full", "store_failed"
FULL, FAILED, FIT = "full", "failed", "fit"              # what a refusal or a probe found

# (state, finding) -> next state; findings not listed leave the state as it is.
TRANSITIONS: dict[tuple[str, str], str] = {
    (READY, FULL): STORE_FULL,
    (READY, FAILED): STORE_FAILED,
    (STORE_FULL, FAILED): STORE_FAILED,
    (STORE_FULL, FIT): READY,
    (STORE_FAILED, FULL): STORE_FULL,
    (STORE_FAILED, FIT): READY,
}
LOG_LEVELS = {READY: logging.INFO, STORE_FULL: logging.WARNING, STORE_FAILED: logging.ERROR}

PROBE_INTERVAL_S = 5.0
RESUME_FILL_RATIO = 0.95
RESUME_FREE_BYTES = 8 << 20          # after a full disk: room for a few frames and the WAL's growth
UNFINISHED_ACTIONS = 1024            # failed commits and discards kept to carry out again (the rest: resync)


@dataclass(frozen=True)
class Probe:
    """What a probe found: the store writes (or what stops it), and the link's fill when it could read it."""

    writable: bool
    fill: Fill | None
    detail: str = ""


@dataclass(frozen=True)
class Change:
    old: str
    new: str
    detail: str


class GuardMachine:
    """The guard's states without I/O: refusals and probes in, state changes out."""

    def __init__(self) -> None:
        self.state = READY
        self.detail = ""

    def refused(self, fault: KeyStoreError) -> Change | None:
        """A write the store refused (StoreFull or StoreWriteError)."""
        if isinstance(fault, StoreFull):
            return self._found(FULL, f"key store at capacity: {fault.fill.describe()}")
        return self._found(FAILED, _cannot_write(fault))

    def probed(self, probe: Probe) -> Change | None:
        if not probe.writable or probe.fill is None:
            return self._found(FAILED, probe.detail or "key store cannot write")
        fill = probe.fill
        if fill.full or (self.state == STORE_FULL and fill.ratio >= RESUME_FILL_RATIO):
            return self._found(FULL, f"key store at capacity: {fill.describe()}")
        return self._found(FIT, f"key store takes keys again: {fill.describe()}")

    def _found(self, finding: str, detail: str) -> Change | None:
        new = TRANSITIONS.get((self.state, finding), self.state)
        if new == self.state:
            if new != READY:
                self.detail = detail
            return None
        change = Change(self.state, new, detail)
        self.state, self.detail = new, detail if new != READY else ""
        return change


class StoreGuard:
    """One link's guard: `await wait_ready()` before a frame starts, `await apply(pipeline, action)` for each
    of its store actions. `health` (qkdd.health.Health) and `metrics` (LinkMetrics) are optional."""

    def __init__(self, store: KeyStore, link_id: str, *, health=None, metrics=None,
                 probe_interval_s: float = PROBE_INTERVAL_S, resume_free_bytes: int = RESUME_FREE_BYTES):
        self.store = store
        self.link_id = link_id
        self.health = health
        self.metrics = metrics
        self.on_cpu = None                      # (stage, seconds) of each write's thread CPU time (the engine's status)
        self.probe_interval_s = probe_interval_s
        self.resume_free_bytes = resume_free_bytes
        self.machine = GuardMachine()
        self.disk_full = False                  # the last write failure was a full disk
        self.frames_refused = 0
        self._unfinished: deque[Commit | Discard] = deque(maxlen=UNFINISHED_ACTIONS)
        self._probing = False
        self._changed = trio.Event()
        self._observing = False

    @property
    def state(self) -> str:
        return self.machine.state

    @property
    def paused(self) -> bool:
        return self.machine.state != READY

    def observe_store(self) -> None:
        """Hear of the store's failing writes from any thread (once; from the trio thread that runs the link)."""
        if self._observing:
            return
        self._observing = True
        token = trio.lowlevel.current_trio_token()

        def observer(error: StoreWriteError) -> None:
            try:
                token.run_sync_soon(self._failed_elsewhere, error)
            except trio.RunFinishedError:
                pass
        self.store.observe_write_failures(observer)

    def _failed_elsewhere(self, error: StoreWriteError) -> None:
        self.disk_full = error.disk_full
        self._change(self.machine.refused(error))

    async def wait_ready(self) -> None:
        """Return once the store takes keys; while it does not, the first waiter probes it."""
        self.observe_store()
        while self.paused:
            if self._probing:
                await self._changed.wait()
                continue
            self._probing = True
            try:
                await trio.sleep(self.probe_interval_s)
                probe = await trio.to_thread.run_sync(self._probe, self.machine.state)
                self._change(self.machine.probed(probe))
                if probe.fill is not None:
                    self._report_fill(probe.fill)
            finally:
                self._probing = False
                self._wake()

    async def apply(self, pipeline: FramePipeline, action: Action) -> list[Action] | None:
        """Carry out a frame's store action. None when done; else the actions to run in place of the rest
        of the frame's step (the store refused: see FramePipeline.store_refused)."""
        try:
            fill = await run_sync_counted(self._count_cpu, self._write, action)
        except (StoreFull, StoreWriteError) as fault:
            if isinstance(fault, StoreWriteError):
                self.disk_full = fault.disk_full
                if isinstance(action, (Commit, Discard)):
                    self._unfinished.append(action)
            self.frames_refused += 1
            self._change(self.machine.refused(fault))
            if isinstance(fault, StoreFull):
                self._report_fill(fault.fill)
            what = "at capacity" if isinstance(fault, StoreFull) else "cannot write"
            return pipeline.store_refused(action, f"key store {what} at the {pipeline.role} end")
        except KeyStoreError as exc:        # this frame's keys only (a key id stored before): drop the frame
            log.warning("link %s: frame %d not stored: %s", self.link_id, pipeline.frame_id, exc)
            return pipeline.store_refused(action, "key store refused the frame's keys")
        if fill is not None:
            self._report_fill(fill)
        return None

    # -- worker-thread side -------------------------------------------------------------------------
    def _count_cpu(self, seconds: float) -> None:
        if self.on_cpu is not None:
            self.on_cpu("store", seconds)

    def _write(self, action: Action) -> Fill | None:
        if isinstance(action, StorePending):
            self.store.put_pending(self.link_id, action.frame_id, action.keys, expires_at=action.expires_at,
                                   allocatable=action.allocatable, qber=action.qber)
            try:
                return self.store.fill(self.link_id)
            except KeyStoreError:
                return None                     # stored; the fill shows at the next frame
        if isinstance(action, Commit):
            self.store.commit_frame(self.link_id, action.frame_id)
        elif isinstance(action, Discard):
            self.store.discard_frame(self.link_id, action.frame_id)
        return None

    def _probe(self, state: str) -> Probe:
        try:
            if state == STORE_FAILED:
                free_bytes = self.store.free_bytes()
                if self.disk_full and free_bytes < self.resume_free_bytes:
                    return Probe(False, None, f"key store cannot write (disk full: {free_bytes} bytes free, "
                                              f"resuming at {self.resume_free_bytes})")
                self.store.probe_write()
                while self._unfinished:
                    self._write(self._unfinished[0])
                    self._unfinished.popleft()
            return Probe(True, self.store.fill(self.link_id))
        except StoreWriteError as exc:
            self.disk_full = exc.disk_full
            return Probe(False, None, _cannot_write(exc))
        except KeyStoreError as exc:
            return Probe(False, None, f"key store cannot write ({exc})")

    # -- trio side ---------------------------------------------------------------------------------
    def _change(self, change: Change | None) -> None:
        if change is None:
            if self.paused and self.health is not None:
                self.health.set_link_alarm(self.link_id, self.state, self._health_detail())
            return
        if change.new == READY:
            log.info("link %s: key generation resumed: %s", self.link_id, change.detail)
        else:
            log.log(LOG_LEVELS[change.new], "link %s: key generation paused: %s; probing every %g s",
                    self.link_id, change.detail, self.probe_interval_s)
        if self.health is not None:
            if change.old != READY:
                self.health.clear_link_alarm(self.link_id, change.old)
            if change.new != READY:
                self.health.set_link_alarm(self.link_id, change.new, self._health_detail())
        self._wake()

    def _health_detail(self) -> str:
        return f"{self.machine.detail}; key generation paused, the API serves what is stored"

    def _report_fill(self, fill: Fill) -> None:
        if self.metrics is not None:
            self.metrics.store_fill(key_bits=fill.key_bits, store_bytes=fill.store_bytes, ratio=fill.ratio)

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()


def _cannot_write(fault: KeyStoreError) -> str:
    if isinstance(fault, StoreWriteError):
        return f"key store cannot write ({'disk full: ' if fault.disk_full else ''}{fault.reason})"
    return f"key store cannot write ({fault})"
