"""One consumer's key rotation (WireGuard tunnel, KMS push, IKEv2 PPK): the same epochs, the same
fallback policy, whatever the key goes into.

The leading end (the link's alice) reserves a 256-bit key every rotation interval and agrees on it with
the other end (wg_epoch.py: the WG_EPOCH purpose of the link's reservation protocol, one 8-byte tag per
consumer); both ends hand it to their `KeySink` at the agreed activation time (`wg set`, a KMS push, a
VICI load-shared), retrying with a capped exponential backoff until it works or a newer key supersedes
it (then the newest is installed: a sink never falls behind). The key in use stays RESERVED in the key
store (so a restarted daemon re-applies it from there) and is erased when the next one is installed or
when it expires.

Fallback policy, one for every consumer (HIP-0071 "Fallback Policy"): while no new key comes the current
key stays in use; once it is older than `expiry_s` (default 24 h, the seed's) the sink applies
`on_exhausted` ("clear": no QKD key, the consumer goes on with its classical/PQ protection alone;
"random": a random key only this end knows, so the consumer fails closed); when keys flow again rotation
resumes at once. The policy runs only while the other end is reachable (a live session): an end whose
peer's daemon is dead keeps the last key past its expiry, since the dead end's WireGuard interface or
charon still holds it and a one-sided fallback would break the tunnel; the two fall back (or rotate)
together once they meet again. Trade-off: a key may serve past expiry_s while the peer is unreachable;
it is still a QKD key both ends agreed on, and expiry is a freshness policy, not a secrecy bound.
A daemon that starts with a key already past expiry_s (it was down, e.g. killed, across the expiry) never
re-installs it: it applies the fallback at once, and the ends agree the next key as soon as they meet
(the survivor, seeing its own copy expired, falls back too or takes the leader's fresh epoch). Until the
session is up the two ends may differ for a moment; an expired key never comes back into use.
A small JSON file per consumer in the state directory records the epoch (number, key id,
times, fallback): never key material. It is read and written (with fsync) in worker threads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

import trio

from qkdd.consumers import hybrid as hybrid_kem
from qkdd.consumers.sink import KeySink, SinkError
from qkdd.consumers.wg_epoch import (NO_EPOCH, Agreed, Epoch, EpochAgreement, EpochMessageError,
                                     EpochStateError, Proposed, Refused, ResyncNeeded)
from qkdd.keystore import KeyStore, KeyStoreError, KeyUnavailable
from qkdd.reservation.protocol import (AnnouncementReceived, Answer, EpochAnnouncement, EpochReservation,
                                       HybridEpochReservation, KemAnnouncement, LateAnswer, Purpose, RefuseReason,
                                       ReservationAccepted, ReservationReceived, ReservationRefused)
from qkdd.reservation.service import ReservationService

log = logging.getLogger("qkdd.consumers")

KEY_BYTES = 32                   # every consumer takes a 256-bit key (a WireGuard PSK, an AES-256 key, a PPK)
PSK_BITS = KEY_BYTES * 8
ANSWER_TIMEOUT_S = 10.0          # leader: how long a proposal waits for the follower's answer
NO_KEY_RETRY_S = 5.0             # leader: how soon to try again when the store had no key
MONITOR_INTERVAL_S = 1.0         # expiry check and PSK-age gauge
HANDSHAKE_POLL_INTERVAL_S = 5.0  # the sink's liveness probe (`wg show latest-handshakes`)


class Backoff:
    """Capped exponential backoff: first_s, 2 first_s, 4 first_s ... up to max_s; a wait the far side asks
    for (`floor_s`, e.g. HTTP 429 Retry-After) is honoured even above max_s, and the doubling goes on
    from it."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.max_s = max(first_s, max_s)
        self._next_s = first_s

    def next_delay_s(self, floor_s: float | None = None) -> float:
        delay_s = max(self._next_s, floor_s or 0.0)
        self._next_s = min(delay_s * 2, self.max_s)
        return delay_s


class RotationPolicy(Protocol):
    """What a consumer's configuration gives the rotation: the same fields for every consumer."""

    name: str
    link_id: str
    expiry_s: float
    on_exhausted: str                    # "clear" | "random"
    activation_delay_s: float
    retry_interval_s: float              # the first retry; each next one waits twice as long, up to retry_max_s


class RotationMetrics(Protocol):
    def rotation(self, result: str) -> None: ...
    def psk_age(self, age_s: float | None) -> None: ...
    def handshake_age(self, age_s: float) -> None: ...


@dataclass(frozen=True)
class RotationState:
    """What survives a restart (the JSON file): the agreed epoch, when it was installed, the fallback."""

    epoch: Epoch = NO_EPOCH
    installed_at: float = 0.0            # 0: not installed yet
    fallback: str | None = None          # "clear" / "random" once the policy ran for this epoch

    def to_json(self) -> str:
        return json.dumps({"version": 1, "epoch": self.epoch.number, "key_id": self.epoch.key_id,
                           "activate_at": self.epoch.activate_at, "installed_at": self.installed_at,
                           "fallback": self.fallback})

    @classmethod
    def from_json(cls, text: str) -> "RotationState":
        data = json.loads(text)
        if data.get("version") != 1:
            raise ValueError(f"unknown state version {data.get('version')!r}")
        number = int(data["epoch"])
        epoch = Epoch(number, str(data["key_id"]), float(data["activate_at"])) if number else NO_EPOCH
        fallback = data.get("fallback")
        if fallback not in (None, "clear", "random"):
            raise ValueError(f"unknown fallback {fallback!r}")
        return cls(epoch, float(data["installed_at"]), fallback)


class KeyRotation:
    """One consumer's rotation into one sink. `kind` names the consumer kind ("wireguard", "kms", "ipsec"):
    its state file, key store holder and epoch tag; `what` starts its log lines. In the daemon,
    `await cls.open(...)` reads the state file in a worker thread; the constructor given no `state` reads
    it itself (blocking: outside the event loop)."""

    def __init__(self, config: RotationPolicy, *, kind: str, tag: bytes, sink: KeySink, leader: bool,
                 store: KeyStore, metrics: RotationMetrics, state_dir: str, rotation_interval_s: float,
                 retry_max_s: float | None = None, what: str | None = None, clock=time.time,
                 state: RotationState | None = None) -> None:
        self.config = config
        self.name = config.name
        self.kind = kind
        self.who = f"{what or kind} {config.name}"
        self.sink = sink
        self.leader = leader
        self.store = store
        self.metrics = metrics
        self.rotation_interval_s = rotation_interval_s
        self.retry_max_s = max(config.retry_interval_s, retry_max_s or config.retry_interval_s)
        self.holder = f"{kind}:{config.name}"
        self.tag = tag
        self._clock = clock
        self._state_path = _state_path(state_dir, kind, config.name)
        self.state = state if state is not None else _load_state(self._state_path, self.who)
        self.last_error: str | None = None      # the sink's last failure, for /healthz (no key material)
        self.kept_past_expiry = False           # expired, kept while the other end is unreachable
        self._saving = trio.Lock()              # one state-file write at a time
        self.hybrid = getattr(config, "hybrid", "none") == "mlkem768"
        self._kem = hybrid_kem.KemReceiver() if self.hybrid and not leader else None
        self._peer_encapsulation_key: bytes | None = None       # leader: the follower's newest, used once
        self._waiting_for_kem = False
        self._kem_secrets: dict[int, bytes] = {}                 # epoch number -> ML-KEM shared secret (memory only)
        # A hybrid consumer cannot rebuild its PSK after a restart (the KEM secret was never stored): it
        # announces no epoch, so the leader proposes a fresh one at once; the sink keeps what it holds.
        self.agreement = EpochAgreement(config.name, leader, NO_EPOCH if self.hybrid else self.state.epoch, tag=tag)
        self._target: Epoch | None = (self.state.epoch if self.state.epoch.number and not self.state.fallback
                                      and not self.hybrid else None)
        self._applied_since_start = False       # a (re)started daemon installs its current key once
        self._target_changed = trio.Event()
        self._service: ReservationService | None = None      # the live session's reservation service
        self._session_changed = trio.Event()
        self._rotate_now = trio.Event()
        self._resync_above = 0
        self.installed = trio.Event()           # set (and replaced) after every successful install
        if self.hybrid and leader and self.state.epoch.number:
            self._rotate_now.set()              # (see above: a fresh epoch at once after a restart)
        self._discard_soon: list[str] = []

    KIND = ""                                   # subclasses: their fixed kind

    @classmethod
    async def open(cls, config: RotationPolicy, *, state_dir: str, **kwargs) -> "KeyRotation":
        """A rotation with its state file read in a worker thread (keyword arguments: __init__'s)."""
        path = _state_path(state_dir, kwargs.get("kind") or cls.KIND, config.name)
        state = await trio.to_thread.run_sync(_load_state, path, config.name)
        return cls(config, state_dir=state_dir, state=state, **kwargs)

    def status(self) -> dict:
        """The consumer's state for /healthz and /v1/links: never key material."""
        state = self.state
        return {"kind": self.kind, "name": self.name, "link_id": self.config.link_id,
                "epoch": state.epoch.number, "key_id": state.epoch.key_id or None,
                "installed_age_s": (round(max(0.0, self._clock() - state.installed_at), 3)
                                    if state.installed_at and not state.fallback else None),
                "fallback": state.fallback, "kept_past_expiry": self.kept_past_expiry,
                "last_error": self.last_error}

    # -- public ------------------------------------------------------------------------------------
    def rotate_now(self) -> None:
        """Leader: rotate at once instead of waiting for the interval (SIGUSR1, tests)."""
        self._rotate_now.set()

    async def run(self) -> None:
        await self._erase_stale_reservations()
        if self.state.fallback:
            log.info("%s: re-applying the %s fallback after a restart", self.who, self.state.fallback)
            await self._apply_fallback(self.state.epoch, again=True)
        elif self._expired_at_start():
            log.warning("%s: the key of epoch %d expired while the daemon was down (%.0f s old, expiry %g s): "
                        "applying the fallback instead of re-installing it", self.who, self.state.epoch.number,
                        self._clock() - self.state.installed_at, self.config.expiry_s)
            self._target = None
            await self._apply_fallback(self.state.epoch)
        elif self._target is not None:
            log.info("%s: re-applying epoch %d (key %s) after a restart", self.who,
                     self._target.number, self._target.key_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._installer)
            nursery.start_soon(self._monitor)
            nursery.start_soon(self._poll_handshakes)
            if self.leader:
                nursery.start_soon(self._leader_loop)

    def _expired_at_start(self) -> bool:
        """The epoch in the state file was installed more than expiry_s ago (the daemon was down past it)."""
        state = self.state
        return bool(state.epoch.number and state.installed_at and not state.fallback
                    and self._clock() - state.installed_at > self.config.expiry_s)

    def attach(self, service: ReservationService) -> None:
        """A session started: announce the current epoch (HELLO)."""
        self._service = service
        self._session_changed.set()
        self._session_changed = trio.Event()
        service.announce(self.agreement.hello())
        if self._kem is not None:
            service.announce(KemAnnouncement(self.tag, self._kem.fresh()))

    def detach(self, service: ReservationService) -> None:
        if self._service is service:
            self._service = None

    def receive(self, event) -> None:
        """An announcement or a late answer from the other end of this tunnel (endpoint events)."""
        if isinstance(event, AnnouncementReceived) and isinstance(event.announcement, KemAnnouncement):
            if self.leader and self.hybrid:
                self._peer_encapsulation_key = event.announcement.encapsulation_key
                if self._waiting_for_kem:
                    self._rotate_now.set()
            return
        try:
            events, _ = self.agreement.receive(event)
        except EpochMessageError as exc:
            log.warning("%s: refused an epoch message: %s", self.who, exc)
            return
        for resync in events:
            if isinstance(resync, ResyncNeeded):
                log.info("%s: the other end is at epoch %d, this end at %d: proposing a fresh epoch",
                         self.who, resync.peer_epoch.number, self.agreement.current.number)
                self._resync_above = max(self._resync_above, resync.peer_epoch.number)
                self._rotate_now.set()

    # -- follower ----------------------------------------------------------------------------------
    async def answer(self, proposal: EpochReservation) -> list[Answer]:
        """The answers to a proposal from the leader (and to one it supersedes, if any)."""
        try:
            events, answers = self.agreement.receive(ReservationReceived(proposal))
        except EpochMessageError as exc:
            return [Answer(proposal.request_id, RefuseReason.MALFORMED, str(exc))]
        for event in events:
            if isinstance(event, Proposed):
                answer = await self._consider(event)
                if answer is not None:
                    answers.append(answer)
        return answers

    async def _consider(self, proposed: Proposed) -> Answer | None:
        epoch = proposed.epoch
        proposal = self.agreement.proposal
        if self.hybrid != isinstance(proposal, HybridEpochReservation):
            self.metrics.rotation("refused")
            text = "this end is hybrid (mlkem768)" if self.hybrid else "this end is not hybrid"
            log.warning("%s: refusing epoch %d: %s, the other end is not", self.who, epoch.number, text)
            return self.agreement.refuse(proposed.request_id, RefuseReason.MALFORMED, text)
        if self.hybrid:
            try:
                self._kem_secrets[epoch.number] = self._kem.decapsulate(proposal.ciphertext)
            except hybrid_kem.HybridError as exc:
                log.warning("%s: refusing epoch %d: %s", self.who, epoch.number, exc)
                self.metrics.rotation("refused")
                return self.agreement.refuse(proposed.request_id, RefuseReason.KEYS_UNAVAILABLE, str(exc))
            finally:
                if self._service is not None:                # a fresh key for the next epoch
                    self._service.announce(KemAnnouncement(self.tag, self._kem.fresh()))
        try:
            key = await trio.to_thread.run_sync(self.store.peek, self.config.link_id, epoch.key_id)
            if key.bits != PSK_BITS:
                raise KeyUnavailable(f"key {epoch.key_id} has {key.bits} bits, a PSK needs {PSK_BITS}")
            await trio.to_thread.run_sync(self.store.reserve_ids, self.config.link_id, [epoch.key_id], self.holder)
        except KeyStoreError as exc:
            log.warning("%s: refusing epoch %d: %s", self.who, epoch.number, exc)
            self.metrics.rotation("refused")
            try:
                return self.agreement.refuse(proposed.request_id, RefuseReason.KEYS_UNAVAILABLE, str(exc))
            except EpochStateError:
                return None                        # superseded meanwhile: answered STALE already
        try:
            answer = self.agreement.accept(proposed.request_id)
        except EpochStateError:                    # superseded while the key was reserved: give it back
            await trio.to_thread.run_sync(self.store.release, self.config.link_id, [epoch.key_id])
            return None
        self._set_target(epoch)              # agreed here from now on, even if the ACK is lost with the session
        log.info("%s: agreed epoch %d (key %s), activation in %.1f s", self.who, epoch.number,
                 epoch.key_id, epoch.activate_at - self._clock())
        return answer

    # -- leader ------------------------------------------------------------------------------------
    async def _leader_loop(self) -> None:
        while True:
            if self.state.installed_at and not self.state.fallback:
                due = self.state.installed_at + self.rotation_interval_s
            else:
                due = self._clock()             # nothing in use (first start, fallback): rotate now
            with trio.move_on_after(max(0.0, due - self._clock())):
                await self._rotate_now.wait()
            self._rotate_now = trio.Event()
            while self._service is None:
                await self._session_changed.wait()
            outcome = await self._rotate_once(self._service)
            if outcome in ("no_key", "refused"):
                with trio.move_on_after(NO_KEY_RETRY_S):
                    await self._rotate_now.wait()
            elif outcome == "agreed":
                # wait until the new key is in use before the interval starts counting again
                await self._wait_installed()

    async def _rotate_once(self, service: ReservationService) -> str:
        link_id = self.config.link_id
        if self.hybrid and self._peer_encapsulation_key is None:
            self._waiting_for_kem = True
            log.info("%s: waiting for the other end's ML-KEM-768 key before the next epoch", self.who)
            return "no_key"
        self._waiting_for_kem = False
        try:
            (key_id,) = await trio.to_thread.run_sync(
                lambda: self.store.reserve_available(link_id, 1, self.holder, bits=PSK_BITS))
        except KeyUnavailable:
            self.metrics.rotation("no_key")
            log.warning("%s: no %d-bit QKD key available on link %s; the current key stays",
                        self.who, PSK_BITS, link_id)
            return "no_key"
        above, self._resync_above = self._resync_above, 0
        activate_at = self._clock() + self.config.activation_delay_s
        proposal = self.agreement.propose(key_id, activate_at, above=above)
        if self.hybrid:
            encapsulation_key, self._peer_encapsulation_key = self._peer_encapsulation_key, None
            try:
                secret, ciphertext = hybrid_kem.encapsulate(encapsulation_key)
            except hybrid_kem.HybridError as exc:
                self.agreement.abandon()
                log.warning("%s: the other end's ML-KEM key is unusable (%s)", self.who, exc)
                await trio.to_thread.run_sync(self.store.release, link_id, [key_id])
                return "refused"
            self._kem_secrets[proposal.number] = secret
            proposal = HybridEpochReservation(proposal.request_id, proposal.tunnel_tag, proposal.number,
                                              proposal.key_id, proposal.activate_at, ciphertext)
            self.agreement.proposal = proposal
        outcome = await service.request(proposal, ANSWER_TIMEOUT_S)
        events: list = []
        if outcome.status == "accepted":
            events, _ = self.agreement.receive(ReservationAccepted(proposal.request_id, proposal.purpose))
        elif outcome.status == "refused":
            events, _ = self.agreement.receive(ReservationRefused(proposal.request_id, proposal.purpose,
                                                                  outcome.reason, outcome.text))
        answer = events[0] if events else None
        if isinstance(answer, Agreed):
            log.info("%s: agreed epoch %d (key %s), activation in %.1f s", self.who, proposal.number,
                     key_id, activate_at - self._clock())
            self._set_target(answer.epoch)
            return "agreed"
        self.metrics.rotation("refused")
        if isinstance(answer, Refused):
            log.warning("%s: the other end refused epoch %d (%s)", self.who, proposal.number,
                        answer.reason.name.lower())
            await trio.to_thread.run_sync(self.store.release, link_id, [key_id])
        else:
            # No answer: the other end may hold the key reserved, so it must never serve anyone else.
            self.agreement.abandon()
            log.warning("%s: no answer to epoch %d within %g s (%s); key %s discarded", self.who,
                        proposal.number, ANSWER_TIMEOUT_S, outcome.status, key_id)
            await self._erase(key_id)
        return "refused"

    # -- both ends: installing ---------------------------------------------------------------------
    def _set_target(self, epoch: Epoch) -> None:
        old = self._target
        self._target = epoch
        self._target_changed.set()
        self._target_changed = trio.Event()
        if old is not None and old != epoch and old != self.state.epoch:
            self._discard_soon.append(old.key_id)    # agreed but superseded before it was installed

    async def _installer(self) -> None:
        while True:
            target = self._target
            for key_id in self._discard_soon:
                await self._erase(key_id)
            self._discard_soon.clear()
            if target is None or (target == self.state.epoch and self.state.installed_at
                                  and self._applied_since_start):
                await self._target_changed.wait()
                continue
            changed = self._target_changed
            with trio.move_on_after(max(0.0, target.activate_at - self._clock())):
                await changed.wait()
                continue                               # a newer target came before this one activated
            await self._install(target)

    async def _install(self, target: Epoch) -> None:
        link_id = self.config.link_id
        try:
            key = await trio.to_thread.run_sync(self.store.peek, link_id, target.key_id)
        except KeyStoreError as exc:
            log.warning("%s: epoch %d key is gone from the store (%s)", self.who, target.number, exc)
            self._applied_since_start = True
            if self._target == target:
                self._target = None
            await self._apply_fallback(target)
            return
        if self.hybrid:
            secret = self._kem_secrets.get(target.number)
            if secret is None:                         # (cannot happen: a hybrid epoch is agreed with its secret)
                log.warning("%s: no ML-KEM secret for epoch %d; waiting for a fresh epoch", self.who, target.number)
                self._rotate_now.set()
                return
            key = dataclasses.replace(key, material=hybrid_kem.derive_psk(
                key.material, secret, tag=self.tag, number=target.number, key_id=target.key_id))
            for number in [number for number in self._kem_secrets if number < target.number]:
                del self._kem_secrets[number]
        if not await self.install_key(key, target):
            return                                     # superseded while retrying: the installer takes the newest
        del key
        previous = self.state
        reapplied = previous.epoch == target and previous.installed_at > 0 and not previous.fallback
        self._applied_since_start = True
        if not reapplied:
            self.kept_past_expiry = False              # a fresh key: nothing is kept past its expiry any more
        await self._save(RotationState(target, previous.installed_at if reapplied else self._clock(), None))
        if previous.epoch.number and previous.epoch.key_id != target.key_id:
            await self._erase(previous.epoch.key_id)
        if not reapplied:
            self.metrics.rotation("success")
        log.info("%s: epoch %d installed on %s (key %s)%s", self.who, target.number, self.sink.label,
                 target.key_id, " again after a restart" if reapplied else "")
        self.installed.set()
        self.installed = trio.Event()

    async def install_key(self, key, target: Epoch) -> bool:
        """Hand `key` (of epoch `target`) to the sink, retrying failures after 1, 2, 4 ... times
        retry_interval_s (at least what the far side asked, e.g. HTTP 429 Retry-After), at most
        retry_max_s apart, until it works (True) or a newer epoch supersedes it (False). No worker threads."""
        backoff = Backoff(self.config.retry_interval_s, self.retry_max_s)
        while True:
            changed = self._target_changed
            try:
                await self.sink.install(key, target)
                self.last_error = None
                return True
            except SinkError as exc:
                self.metrics.rotation("install_failed")
                self.last_error = str(exc)
                delay_s = backoff.next_delay_s(exc.retry_after_s)
                log.warning("%s: installing epoch %d failed, retrying in %g s: %s", self.who,
                            target.number, delay_s, exc)
            if self._target == target:
                with trio.move_on_after(delay_s):
                    await changed.wait()
            if self._target != target:
                return False

    async def _wait_installed(self) -> None:
        target = self._target
        while target is not None and self.state.epoch != target and self._target == target:
            await self.installed.wait()

    # -- fallback ----------------------------------------------------------------------------------
    async def _monitor(self) -> None:
        while True:
            state = self.state
            if state.installed_at and not state.fallback:
                age_s = self._clock() - state.installed_at
                self.metrics.psk_age(age_s)
                expired = age_s > self.config.expiry_s and self._target in (None, state.epoch)
                if expired and self._service is None:
                    # The other end is unreachable (its daemon may be dead while its interface or charon
                    # still holds this key): applying the fallback alone would leave the two ends with
                    # different keys, so the survivor keeps the last key until the ends meet again; then
                    # both see it expired and fall back (or rotate) together.
                    if not self.kept_past_expiry:
                        log.warning("%s: the key of epoch %d is past its expiry of %g s, but the other end is "
                                    "unreachable: keeping it until the ends meet again", self.who,
                                    state.epoch.number, self.config.expiry_s)
                    self.kept_past_expiry = True
                else:
                    self.kept_past_expiry = False      # (also when the ends met and agreed a fresh epoch)
                    if expired:
                        log.warning("%s: the key of epoch %d is %.0f s old, past its expiry of %g s", self.who,
                                    state.epoch.number, age_s, self.config.expiry_s)
                        await self._apply_fallback(state.epoch)
            else:
                self.kept_past_expiry = False
                self.metrics.psk_age(None)
            await trio.sleep(MONITOR_INTERVAL_S)

    async def _apply_fallback(self, epoch: Epoch, *, again: bool = False) -> None:
        policy = self.config.on_exhausted
        backoff = Backoff(self.config.retry_interval_s, self.retry_max_s)
        while True:
            try:
                await self.sink.fall_back(policy)
                self.last_error = None
                break
            except SinkError as exc:
                self.last_error = str(exc)
                log.warning("%s: applying the %s fallback failed, retrying: %s", self.who, policy, exc)
                await trio.sleep(backoff.next_delay_s(exc.retry_after_s))
        if epoch.number:
            await self._erase(epoch.key_id)
        self._target = None if self._target == epoch else self._target
        await self._save(RotationState(epoch, self.state.installed_at, policy))
        self.metrics.psk_age(None)
        self._rotate_now.set()                   # leader: look for a fresh key from now on, not at the interval
        if again:
            return
        self.metrics.rotation(f"expired_{policy}")
        log.warning("%s: no fresh QKD key; fallback %s applied (%s)", self.who, policy,
                    self.sink.fallback_meaning(policy))

    async def _erase_stale_reservations(self) -> None:
        """Keys this tunnel reserved before a restart but never installed (a proposal cut short) are
        erased: the other end may hold them too, so they must never serve anyone else."""
        keep = self.state.epoch.key_id if self.state.epoch.number and not self.state.fallback else None
        reserved = await trio.to_thread.run_sync(self.store.reserved_for, self.config.link_id, self.holder)
        for key_id in reserved:
            if key_id != keep:
                log.info("%s: erasing key %s, reserved before the restart and never used", self.who, key_id)
                await self._erase(key_id)

    async def _poll_handshakes(self) -> None:
        while True:
            try:
                latest = await self.sink.latest_handshake_s()
            except SinkError as exc:
                log.debug("%s: cannot read handshakes: %s", self.who, exc)
            else:
                if latest is not None:
                    self.metrics.handshake_age(max(0.0, self._clock() - latest))
            await trio.sleep(HANDSHAKE_POLL_INTERVAL_S)

    # -- helpers -----------------------------------------------------------------------------------
    async def _erase(self, key_id: str) -> None:
        """Deliver a key that is done with to nobody: its material is erased, its id never reused."""
        try:
            await trio.to_thread.run_sync(
                lambda: self.store.deliver(self.config.link_id, key_id, holder=self.holder))
        except KeyStoreError:
            pass                                   # already gone (expired or erased before)

    async def _save(self, state: RotationState) -> None:
        """`state` is this tunnel's state from now on; the file follows in a worker thread. Saves queue up,
        and each writes the state current when its turn comes, so the file ends with the latest."""
        self.state = state
        async with self._saving:
            await trio.to_thread.run_sync(_write_state, self._state_path, self.state)


def _state_path(state_dir: str, kind: str, name: str) -> str:
    return os.path.join(state_dir, f"{kind}-{name}.json")


def _load_state(path: str, name: str) -> RotationState:
    """Blocking: the state in the file at `path`; a fresh state when there is none or it is unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return RotationState.from_json(handle.read())
    except FileNotFoundError:
        return RotationState()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: ignoring unreadable state file %s: %s", name, path, exc)
        return RotationState()


def _write_state(path: str, state: RotationState) -> None:
    """Blocking: replace the file at `path` with `state`, durably (fsync before the rename)."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(state.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class EpochChannel:
    """The epoch purpose (WG_EPOCH) of one link's reservation service: routes epoch messages to their
    consumer by tag, for every consumer kind of the link (WireGuard tunnels, KMS pushes, IKEv2 PPKs)."""

    def __init__(self, tunnels: list[KeyRotation]) -> None:
        self.tunnels = {tunnel.tag: tunnel for tunnel in tunnels}

    def attach_to(self, service: ReservationService) -> None:
        service.add_purpose(Purpose.WG_EPOCH, self)
        service.add_purpose(Purpose.HYBRID_EPOCH, self)

    async def on_session(self, service: ReservationService) -> None:
        """Per session: every tunnel announces its epoch; detached when the session ends."""
        try:
            for tunnel in self.tunnels.values():
                tunnel.attach(service)
            await trio.sleep_forever()
        finally:
            for tunnel in self.tunnels.values():
                tunnel.detach(service)

    async def on_reservations(self, link_id: str, proposals: list[EpochReservation]) -> list[Answer]:
        answers = []
        for proposal in proposals:
            tunnel = self.tunnels.get(proposal.tunnel_tag)
            if tunnel is None:
                answers.append(Answer(proposal.request_id, RefuseReason.MALFORMED, "no such consumer here"))
            else:
                answers += await tunnel.answer(proposal)
        return answers

    async def on_announcement(self, link_id: str, announcement: EpochAnnouncement) -> None:
        tunnel = self.tunnels.get(announcement.tunnel_tag)
        if tunnel is None:
            log.warning("link %s: dropped an epoch announcement for an unknown consumer", link_id)
            return
        tunnel.receive(AnnouncementReceived(announcement))

    async def on_late_answer(self, link_id: str, event: LateAnswer) -> None:
        for tunnel in self.tunnels.values():
            if tunnel.agreement.owns(event.request_id):
                tunnel.receive(event)
