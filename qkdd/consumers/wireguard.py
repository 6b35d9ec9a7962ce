"""WireGuard PSK rotation from QKD keys: one TunnelRotation per `[[wireguard]]` tunnel.

The leading end (the link's alice) reserves a 256-bit key every rotation interval and agrees on it with
the other end (wg_epoch.py, over the link's classical channel); both ends install it at the agreed
activation time with `wg set ... preshared-key /dev/stdin` (wg_tool.py), retrying until it works. The key
in use stays RESERVED in the key store (so a restarted daemon re-applies it from there) and is erased
when the next one is installed or when it expires. Fallback (HIP-0071 "Fallback Policy"): while no new
key comes the current PSK stays; once it is older than `expiry_s` the policy applies ("clear": no PSK,
Curve25519 alone; "random": a random PSK, the tunnel fails closed); when keys flow again rotation resumes.
A small JSON file per tunnel in the state directory records the epoch (number, key id, times, fallback):
never key material.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import trio

from qkdd.config import WireGuardConfig
from qkdd.consumers.wg_epoch import (NO_EPOCH, Agreed, Epoch, EpochAgreement, EpochMessageError, EpochStateError,
                                     NackReason, Proposed, Refused, ResyncNeeded, tunnel_tag)
from qkdd.consumers.wg_tool import PSK_BYTES, WgError, WgTool
from qkdd.keystore import KeyStore, KeyStoreError, KeyUnavailable
from qkdd.metrics import TunnelMetrics
from qkdd.peer import MuxStream, SessionClosedError

log = logging.getLogger("qkdd.wireguard")

PSK_BITS = PSK_BYTES * 8
ANSWER_TIMEOUT_S = 10.0          # leader: how long a proposal waits for the follower's answer
NO_KEY_RETRY_S = 5.0             # leader: how soon to try again when the store had no key
MONITOR_INTERVAL_S = 1.0         # expiry check and PSK-age gauge
HANDSHAKE_POLL_INTERVAL_S = 5.0  # `wg show latest-handshakes`


@dataclass(frozen=True)
class TunnelState:
    """What survives a restart (the JSON file): the agreed epoch, when it was installed, the fallback."""

    epoch: Epoch = NO_EPOCH
    installed_at: float = 0.0            # 0: not installed yet
    fallback: str | None = None          # "clear" / "random" once the policy ran for this epoch

    def to_json(self) -> str:
        return json.dumps({"version": 1, "epoch": self.epoch.number, "key_id": self.epoch.key_id,
                           "activate_at": self.epoch.activate_at, "installed_at": self.installed_at,
                           "fallback": self.fallback})

    @classmethod
    def from_json(cls, text: str) -> "TunnelState":
        data = json.loads(text)
        if data.get("version") != 1:
            raise ValueError(f"unknown state version {data.get('version')!r}")
        number = int(data["epoch"])
        epoch = Epoch(number, str(data["key_id"]), float(data["activate_at"])) if number else NO_EPOCH
        fallback = data.get("fallback")
        if fallback not in (None, "clear", "random"):
            raise ValueError(f"unknown fallback {fallback!r}")
        return cls(epoch, float(data["installed_at"]), fallback)


class TunnelRotation:
    def __init__(self, config: WireGuardConfig, *, leader: bool, store: KeyStore, wg: WgTool,
                 metrics: TunnelMetrics, state_dir: str, rotation_interval_s: float, clock=time.time) -> None:
        self.config = config
        self.name = config.name
        self.leader = leader
        self.store = store
        self.wg = wg
        self.metrics = metrics
        self.rotation_interval_s = rotation_interval_s
        self.holder = f"wireguard:{config.name}"
        self.tag = tunnel_tag(config.name)
        self._clock = clock
        self._state_path = os.path.join(state_dir, f"wireguard-{config.name}.json")
        self.state = self._load_state()
        self.agreement = EpochAgreement(config.name, leader, self.state.epoch)
        self._target: Epoch | None = (self.state.epoch if self.state.epoch.number and not self.state.fallback
                                      else None)
        self._applied_since_start = False       # a (re)started daemon installs its current key once
        self._target_changed = trio.Event()
        self._stream: MuxStream | None = None
        self._session_changed = trio.Event()
        self._answer: trio.Event | None = None
        self._answer_event: Agreed | Refused | None = None
        self._rotate_now = trio.Event()
        self._resync_above = 0
        self.installed = trio.Event()           # set (and replaced) after every successful install
        self._discard_soon: list[str] = []

    # -- public ------------------------------------------------------------------------------------
    def rotate_now(self) -> None:
        """Leader: rotate at once instead of waiting for the interval (SIGUSR1, tests)."""
        self._rotate_now.set()

    async def run(self) -> None:
        await self._erase_stale_reservations()
        if self.state.fallback:
            log.info("tunnel %s: re-applying the %s fallback after a restart", self.name, self.state.fallback)
            await self._apply_fallback(self.state.epoch, again=True)
        elif self._target is not None:
            log.info("tunnel %s: re-applying epoch %d (key %s) after a restart", self.name,
                     self._target.number, self._target.key_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._installer)
            nursery.start_soon(self._monitor)
            nursery.start_soon(self._poll_handshakes)
            if self.leader:
                nursery.start_soon(self._leader_loop)

    async def attach(self, stream: MuxStream) -> None:
        """A session started: say HELLO with the current epoch."""
        self._stream = stream
        self._session_changed.set()
        self._session_changed = trio.Event()
        await stream.send(self.agreement.hello())

    def detach(self, stream: MuxStream) -> None:
        if self._stream is stream:
            self._stream = None
            if self._answer is not None:
                self._answer.set()                  # the proposal in flight gets no answer now

    async def receive(self, data: bytes) -> None:
        """One epoch message from the other end of this tunnel."""
        try:
            events, replies = self.agreement.receive(data)
        except EpochMessageError as exc:
            log.warning("tunnel %s: refused an epoch message: %s", self.name, exc)
            return
        for reply in replies:
            await self._send(reply)
        for event in events:
            if isinstance(event, (Agreed, Refused)):
                self._answer_event = event
                if self._answer is not None:
                    self._answer.set()
            elif isinstance(event, ResyncNeeded):
                log.info("tunnel %s: the other end is at epoch %d, this end at %d: proposing a fresh epoch",
                         self.name, event.peer_epoch.number, self.agreement.current.number)
                self._resync_above = max(self._resync_above, event.peer_epoch.number)
                self._rotate_now.set()
            elif isinstance(event, Proposed):
                await self._consider(event.epoch)

    # -- follower ----------------------------------------------------------------------------------
    async def _consider(self, epoch: Epoch) -> None:
        try:
            key = await trio.to_thread.run_sync(self.store.peek, self.config.link_id, epoch.key_id)
            if key.bits != PSK_BITS:
                raise KeyUnavailable(f"key {epoch.key_id} has {key.bits} bits, a PSK needs {PSK_BITS}")
            await trio.to_thread.run_sync(self.store.reserve_ids, self.config.link_id, [epoch.key_id], self.holder)
        except KeyStoreError as exc:
            log.warning("tunnel %s: refusing epoch %d: %s", self.name, epoch.number, exc)
            self.metrics.rotation("refused")
            await self._send(self.agreement.refuse(NackReason.KEY_UNKNOWN))
            return
        ack = self.agreement.accept()
        self._set_target(epoch)              # agreed here from now on, even if the ACK is lost with the session
        log.info("tunnel %s: agreed epoch %d (key %s), activation in %.1f s", self.name, epoch.number,
                 epoch.key_id, epoch.activate_at - self._clock())
        await self._send(ack)

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
            while self._stream is None:
                await self._session_changed.wait()
            outcome = await self._rotate_once()
            if outcome in ("no_key", "refused"):
                with trio.move_on_after(NO_KEY_RETRY_S):
                    await self._rotate_now.wait()
            elif outcome == "agreed":
                # wait until the new key is in use before the interval starts counting again
                await self._wait_installed()

    async def _rotate_once(self) -> str:
        link_id = self.config.link_id
        try:
            (key_id,) = await trio.to_thread.run_sync(
                lambda: self.store.reserve_available(link_id, 1, self.holder, bits=PSK_BITS))
        except KeyUnavailable:
            self.metrics.rotation("no_key")
            log.warning("tunnel %s: no %d-bit QKD key available on link %s; the current PSK stays",
                        self.name, PSK_BITS, link_id)
            return "no_key"
        above, self._resync_above = self._resync_above, 0
        activate_at = self._clock() + self.config.activation_delay_s
        try:
            message = self.agreement.propose(key_id, activate_at, above=above)
        except EpochStateError as exc:          # epoch numbers used up: nothing this end can propose
            self.metrics.rotation("refused")
            log.error("tunnel %s: %s; the current PSK stays", self.name, exc)
            await trio.to_thread.run_sync(self.store.release, link_id, [key_id])
            return "refused"
        proposal = self.agreement.pending
        self._answer, self._answer_event = trio.Event(), None
        try:
            await self._send(message, required=True)
            with trio.move_on_after(ANSWER_TIMEOUT_S):
                await self._answer.wait()
        except SessionClosedError:
            pass
        answer, self._answer = self._answer_event, None
        if isinstance(answer, Agreed):
            log.info("tunnel %s: agreed epoch %d (key %s), activation in %.1f s", self.name, proposal.number,
                     key_id, activate_at - self._clock())
            self._set_target(answer.epoch)
            return "agreed"
        self.metrics.rotation("refused")
        if isinstance(answer, Refused):
            log.warning("tunnel %s: the other end refused epoch %d (%s)", self.name, proposal.number,
                        answer.reason.name.lower())
            await trio.to_thread.run_sync(self.store.release, link_id, [key_id])
        else:
            # No answer: the other end may hold the key reserved, so it must never serve anyone else.
            self.agreement.abandon()
            log.warning("tunnel %s: no answer to epoch %d within %g s; key %s discarded", self.name,
                        proposal.number, ANSWER_TIMEOUT_S, key_id)
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
            log.warning("tunnel %s: epoch %d key is gone from the store (%s)", self.name, target.number, exc)
            self._applied_since_start = True
            if self._target == target:
                self._target = None
            await self._apply_fallback(target)
            return
        while True:
            try:
                await self.wg.set_psk(key.material)
                break
            except WgError as exc:
                self.metrics.rotation("install_failed")
                log.warning("tunnel %s: installing epoch %d failed, retrying in %g s: %s", self.name,
                            target.number, self.config.retry_interval_s, exc)
            with trio.move_on_after(self.config.retry_interval_s):
                await self._target_changed.wait()
                if self._target != target:
                    return                             # superseded while retrying
        del key
        previous = self.state
        reapplied = previous.epoch == target and previous.installed_at > 0 and not previous.fallback
        self._applied_since_start = True
        self._save(TunnelState(target, previous.installed_at if reapplied else self._clock(), None))
        if previous.epoch.number and previous.epoch.key_id != target.key_id:
            await self._erase(previous.epoch.key_id)
        if not reapplied:
            self.metrics.rotation("success")
        log.info("tunnel %s: epoch %d installed on %s (key %s)%s", self.name, target.number, self.wg.interface,
                 target.key_id, " again after a restart" if reapplied else "")
        self.installed.set()
        self.installed = trio.Event()

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
                if age_s > self.config.expiry_s and self._target in (None, state.epoch):
                    log.warning("tunnel %s: PSK of epoch %d is %.0f s old, past its expiry of %g s", self.name,
                                state.epoch.number, age_s, self.config.expiry_s)
                    await self._apply_fallback(state.epoch)
            else:
                self.metrics.psk_age(None)
            await trio.sleep(MONITOR_INTERVAL_S)

    async def _apply_fallback(self, epoch: Epoch, *, again: bool = False) -> None:
        policy = self.config.on_exhausted
        while True:
            try:
                if policy == "clear":
                    await self.wg.clear_psk()
                else:
                    await self.wg.set_psk(os.urandom(PSK_BYTES))
                break
            except WgError as exc:
                log.warning("tunnel %s: applying the %s fallback failed, retrying: %s", self.name, policy, exc)
                await trio.sleep(self.config.retry_interval_s)
        if epoch.number:
            await self._erase(epoch.key_id)
        self._target = None if self._target == epoch else self._target
        self._save(TunnelState(epoch, self.state.installed_at, policy))
        self.metrics.psk_age(None)
        self._rotate_now.set()                   # leader: look for a fresh key from now on, not at the interval
        if again:
            return
        self.metrics.rotation(f"expired_{policy}")
        log.warning("tunnel %s: no fresh QKD key; fallback %s applied (%s)", self.name, policy,
                    "Curve25519 only" if policy == "clear" else "random PSK, the tunnel fails closed")

    async def _erase_stale_reservations(self) -> None:
        """Keys this tunnel reserved before a restart but never installed (a proposal cut short) are
        erased: the other end may hold them too, so they must never serve anyone else."""
        keep = self.state.epoch.key_id if self.state.epoch.number and not self.state.fallback else None
        reserved = await trio.to_thread.run_sync(self.store.reserved_for, self.config.link_id, self.holder)
        for key_id in reserved:
            if key_id != keep:
                log.info("tunnel %s: erasing key %s, reserved before the restart and never used", self.name, key_id)
                await self._erase(key_id)

    async def _poll_handshakes(self) -> None:
        while True:
            try:
                latest = await self.wg.latest_handshake_s()
            except WgError as exc:
                log.debug("tunnel %s: cannot read handshakes: %s", self.name, exc)
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

    async def _send(self, message: bytes, *, required: bool = False) -> None:
        stream = self._stream
        if stream is None:
            if required:
                raise SessionClosedError(f"tunnel {self.name}: no session")
            return
        try:
            await stream.send(message)
        except SessionClosedError:
            if required:
                raise

    def _load_state(self) -> TunnelState:
        try:
            with open(self._state_path, encoding="utf-8") as handle:
                return TunnelState.from_json(handle.read())
        except FileNotFoundError:
            return TunnelState()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("tunnel %s: ignoring unreadable state file %s: %s", self.name, self._state_path, exc)
            return TunnelState()

    def _save(self, state: TunnelState) -> None:
        self.state = state
        temporary = self._state_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._state_path)


class WireGuardChannel:
    """The WireGuard channel of one link's classical channel: routes epoch messages to their tunnel."""

    def __init__(self, tunnels: list[TunnelRotation]) -> None:
        self.tunnels = {tunnel.tag: tunnel for tunnel in tunnels}

    async def serve(self, stream: MuxStream) -> None:
        try:
            for tunnel in self.tunnels.values():
                await tunnel.attach(stream)
            while True:
                data = await stream.receive()
                tunnel = self.tunnels.get(bytes(data[40:48])) if len(data) >= 48 else None
                if tunnel is None:
                    log.warning("link %s: dropped a WireGuard epoch message for an unknown tunnel",
                                stream.session.link_id)
                    continue
                await tunnel.receive(bytes(data))
        finally:
            for tunnel in self.tunnels.values():
                tunnel.detach(stream)
