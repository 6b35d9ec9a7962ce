"""Helpers for link tests: simulated frames with decoy settings that leave key at small block sizes,
a driver that runs both pipeline ends against each other in memory, one that does so with each end's
store actions going through its StoreGuard into a real key store, and a link's channel serving an
in-memory session as its connector would serve one from the network."""
from __future__ import annotations

import trio

from qkdd.hal.sim import Attack, SimParams, Simulator
from qkdd.hal.sim.frames import decoy_settings, raw_frames
from qkdd.link import envelope
from qkdd.link.pipeline import ALICE, BOB, Commit, Discard, Finished, FramePipeline, Send, StorePending
from qkdd.peer import PeerError

# Lim et al. settings optimised (qkdd.protocols.bb84_design.optimize_settings) for n_X = 1e5 at 10-25 km.
TEST_SOURCE = dict(mu_signal=0.40, mu_decoy=0.13, mu_vacuum=0.0, p_signal=0.08, p_decoy=0.56, q_x=0.63)
TEST_DETECTIONS = 250_000


def simulator(distance_km: float = 25.0, seed: int = 1, attack: Attack | None = None) -> Simulator:
    return Simulator(SimParams(distance_km=distance_km, **TEST_SOURCE), seed=seed, attack=attack)


def frame_pair(sim: Simulator, frame_id: int, detections: int = TEST_DETECTIONS):
    frame = sim.run(10 ** 13, detections)
    alice, bob = raw_frames(frame, frame_id)
    return alice, bob, decoy_settings(sim.params)


class Ends:
    """Both ends of one frame wired back to back; records every action and every record's bytes."""

    def __init__(self, alice_frame, bob_frame, decoy, settings=None, alice_gate=None, bob_gate=None,
                 alice_clock=None, bob_clock=None, bob_settings=None):
        kwargs = {} if settings is None else {"settings": settings}
        bob_kwargs = kwargs if bob_settings is None else {"settings": bob_settings}
        self.alice = FramePipeline(ALICE, alice_frame, gate=alice_gate, decoy=decoy, **kwargs,
                                   **({"clock": alice_clock} if alice_clock else {}))
        self.bob = FramePipeline(BOB, bob_frame, gate=bob_gate, **bob_kwargs,
                                 **({"clock": bob_clock} if bob_clock else {}))
        self.actions = {ALICE: [], BOB: []}
        self.records = []     # (sender role, bytes)

    def run(self, tamper=None):
        """Drive to completion; `tamper(role, record) -> record` may alter records in flight."""
        queue = [(BOB, a) for a in self.bob.start()]
        while queue:
            role, action = queue.pop(0)
            self.actions[role].append(action)
            if isinstance(action, Send):
                record = action.record if tamper is None else tamper(role, action.record)
                self.records.append((role, record))
                peer_role = ALICE if role == BOB else BOB
                peer = self.alice if role == BOB else self.bob
                queue.extend((peer_role, a) for a in peer.receive(record))
        return self

    def of(self, role, kind):
        return [a for a in self.actions[role] if isinstance(a, kind)]

    def outcome(self, role):
        (finished,) = self.of(role, Finished)
        return finished.outcome


class LinkEnd:
    """One daemon's link end as the daemon builds it (qkdd.link.service): its LinkChannel (the one owner
    of the peer session), the reservation service on it, the engine and the /v1 key requests."""

    def __init__(self, link_id, role, device, store, peer_settings, identity, peer_public_key, **engine_options):
        from qkdd.link.engine import LinkEngine
        from qkdd.link.key_requests import KeyRequests
        from qkdd.link_channel import LinkChannel
        from qkdd.reservation.service import ReservationService
        self.channel = LinkChannel(link_id, peer_settings, identity, peer_public_key)
        self.reservations = ReservationService(link_id, self.channel)
        self.engine = LinkEngine(link_id, role, device, store, self.channel, **engine_options)
        self.keys = KeyRequests(link_id, store, self.reservations, key_bits=self.engine.settings.key_bits)
        self.status = self.engine.status

    async def start(self, nursery) -> None:
        await nursery.start(self.engine.run)
        await nursery.start(self.channel.run)

    @property
    def listen_port(self) -> int:
        return self.channel.connector.listen_port


class GuardedEnds:
    """Both ends of one frame in memory, each end's store actions through its StoreGuard (as the link
    engine's frame path runs them): `await run()` drives the frame to its end at both."""

    def __init__(self, alice_frame, bob_frame, decoy, guards: dict, tamper=None):
        self.pipes = {ALICE: FramePipeline(ALICE, alice_frame, decoy=decoy), BOB: FramePipeline(BOB, bob_frame)}
        self.guards = guards
        self.tamper = tamper                  # tamper(role, record) -> record, for records in flight
        self.outcomes = {}
        self.sent = {ALICE: [], BOB: []}      # the steps of each record each end sent
        self._in_flight = []

    async def run(self):
        await self._execute(BOB, self.pipes[BOB].start())
        while self._in_flight:
            role, record = self._in_flight.pop(0)
            await self._execute(role, self.pipes[role].receive(record))
        return self

    async def _execute(self, role, actions):
        peer = ALICE if role == BOB else BOB
        for action in actions:
            if isinstance(action, Send):
                record = action.record if self.tamper is None else self.tamper(role, action.record)
                self.sent[role].append([step for step, _ in envelope.decode(record)[1]])
                self._in_flight.append((peer, record))
            elif isinstance(action, (StorePending, Commit, Discard)):
                instead = await self.guards[role].apply(self.pipes[role], action)
                if instead is not None:
                    await self._execute(role, instead)
                    return
            elif isinstance(action, Finished):
                self.outcomes[role] = action.outcome


async def serve_session(channel, session, ended: list | None = None) -> None:
    """What a LinkChannel's connector does with each session it brings up, without the dialling: the
    channel's session handler (which routes the session before its first checkpoint) and the session's
    reader side by side; the session is closed once the handler returns. `ended` gets (trio time, the
    PeerError that tore the session down or None)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_session, session, ended)
        await channel._on_session(session)
        await session.aclose()


async def run_session(session, ended: list | None = None) -> None:
    """A session's reader and heartbeat; how it ended goes to `ended` (trio time, PeerError or None)
    instead of into the caller's nursery."""
    try:
        await session.run()
    except PeerError as exc:
        if ended is not None:
            ended.append((trio.current_time(), exc))
    else:
        if ended is not None:
            ended.append((trio.current_time(), None))
