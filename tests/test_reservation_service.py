"""The reservation service of a link (qkdd.reservation.service) on trio's MockClock: the real service over
an in-memory session, the peer's end a sans-IO ReservationEndpoint driven by the test. Deadlines are
checked to the mock instant: a request times out at the first sweep at or after its deadline."""
from __future__ import annotations

import logging
import uuid

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from qkdd.reservation.protocol import (AnnouncementReceived, Answer, EpochAnnouncement, KeyReservation, LateAnswer,
                                       Purpose, RefuseReason, ReservationAccepted, ReservationEndpoint,
                                       ReservationReceived, ReservationRefused)
from qkdd.reservation.service import SWEEP_INTERVAL_S
from tests.reservation_support import memory_session, reservation_service

LINK = "link-ab"
TAG = bytes(range(1, 9))


def run(main):
    """`main()` on a mock clock that jumps to the next deadline whenever every task waits."""
    return trio.run(main, clock=MockClock(autojump_threshold=0))


def key_reservation() -> KeyReservation:
    return KeyReservation(str(uuid.uuid4()), str(uuid.uuid4()), "v1:256")


class Purposes:
    """A purpose handler recording what reaches it; accepts every reservation unless told otherwise."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.reservations: list = []
        self.late: list[LateAnswer] = []
        self.announcements: list[EpochAnnouncement] = []
        self.sessions: list[float] = []         # the mock time of each on_session

    async def on_reservations(self, link_id: str, reservations: list) -> list[Answer]:
        assert link_id == LINK
        self.reservations += reservations
        if self.refuse:
            return [Answer(r.request_id, RefuseReason.KEYS_GONE, "delivered here") for r in reservations]
        return [Answer(r.request_id) for r in reservations]

    async def on_late_answer(self, link_id: str, event: LateAnswer) -> None:
        self.late.append(event)

    async def on_announcement(self, link_id: str, announcement: EpochAnnouncement) -> None:
        self.announcements.append(announcement)

    async def on_session(self, service) -> None:
        self.sessions.append(trio.current_time())


async def connected(nursery, service_serve):
    """Start the service's exchange on a fresh in-memory session; the peer's end of it."""
    ours, peer = memory_session()
    nursery.start_soon(service_serve, ours)
    await wait_all_tasks_blocked()
    return ours, peer


async def answering_peer(peer, answer) -> None:
    """The peer's end: `answer(endpoint, reservation)` gives the bytes to send back for each RESERVE."""
    endpoint = ReservationEndpoint()
    while True:
        for event in endpoint.receive(await peer.receive()):
            if isinstance(event, ReservationReceived):
                await peer.send(answer(endpoint, event.reservation))


def test_a_request_the_peer_accepts_is_accepted_without_waiting_for_any_deadline():
    service, serve = reservation_service(LINK)

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            nursery.start_soon(answering_peer, peer, lambda e, r: e.accept(r.request_id))
            started = trio.current_time()
            outcome = await service.request(key_reservation(), timeout_s=30.0)
            waited = trio.current_time() - started
            nursery.cancel_scope.cancel()
        return outcome, waited

    outcome, waited = run(main)
    assert outcome.accepted and outcome.status == "accepted"
    assert waited == 0.0


def test_a_refusal_carries_the_peers_reason_and_text():
    service, serve = reservation_service(LINK)

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            nursery.start_soon(answering_peer, peer,
                               lambda e, r: e.refuse(r.request_id, RefuseReason.KEYS_GONE, "delivered here"))
            outcome = await service.request(key_reservation(), timeout_s=30.0)
            nursery.cancel_scope.cancel()
        return outcome

    outcome = run(main)
    assert outcome.status == "refused" and not outcome.accepted
    assert outcome.reason is RefuseReason.KEYS_GONE and outcome.text == "delivered here"


@pytest.mark.parametrize("timeout_s", [1.0, 0.3, 30.0])
def test_an_unanswered_request_times_out_at_the_first_sweep_after_its_deadline_and_a_late_answer_is_reported(
        timeout_s):
    """The sweep runs every SWEEP_INTERVAL_S from the session's start: a request made then with a
    deadline on a sweep instant times out exactly at it, any other within one interval after it. The
    request is abandoned: the peer's ACCEPT that comes after is a LateAnswer for the purpose, never an
    acceptance."""
    service, serve = reservation_service(LINK)
    purposes = Purposes()
    service.add_purpose(Purpose.KEY, purposes)

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            assert trio.current_time() == 0.0
            reservation = key_reservation()
            outcome = await service.request(reservation, timeout_s=timeout_s)
            ended_at = trio.current_time()
            endpoint = ReservationEndpoint()
            [received] = endpoint.receive(await peer.receive())          # it did go out, unanswered
            assert received.reservation == reservation
            await peer.send(endpoint.accept(reservation.request_id))      # too late
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return outcome, ended_at, reservation

    outcome, ended_at, reservation = run(main)
    assert outcome.status == "timeout" and not outcome.accepted
    first_sweep = -(-timeout_s // SWEEP_INTERVAL_S) * SWEEP_INTERVAL_S
    assert ended_at == pytest.approx(first_sweep, abs=1e-9)
    assert timeout_s <= ended_at < timeout_s + SWEEP_INTERVAL_S
    assert purposes.late == [LateAnswer(reservation.request_id, Purpose.KEY, True)]


def test_a_late_answer_for_a_purpose_without_a_late_answer_handler_is_logged(caplog):
    service, serve = reservation_service(LINK)

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            reservation = key_reservation()
            outcome = await service.request(reservation, timeout_s=2.0)
            endpoint = ReservationEndpoint()
            endpoint.receive(await peer.receive())
            await peer.send(endpoint.refuse(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "busy"))
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return outcome, reservation

    caplog.set_level(logging.WARNING, logger="qkdd.reservation")
    outcome, reservation = run(main)
    assert outcome.status == "timeout"
    assert f"late answer to abandoned KEY request {reservation.request_id} (accepted=False)" in caplog.text


def test_requests_pending_when_the_session_ends_are_lost_at_once():
    service, serve = reservation_service(LINK)

    async def main():
        outcomes = []
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)

            async def request():
                outcomes.append((await service.request(key_reservation(), timeout_s=30.0), trio.current_time()))
            for _ in range(3):
                nursery.start_soon(request)
            await trio.sleep(5.0)
            assert outcomes == [] and service.connected
            await peer.aclose()                                  # the session ends
            await wait_all_tasks_blocked()
            assert not service.connected
        return outcomes

    outcomes = run(main)
    assert [(outcome.status, at) for outcome, at in outcomes] == [("lost", 5.0)] * 3
    assert all("session" in outcome.text for outcome, _ in outcomes)


def test_a_request_without_a_session_is_lost_at_once_and_an_announcement_is_not_queued():
    service, _ = reservation_service(LINK)

    async def main():
        outcome = await service.request(key_reservation(), timeout_s=30.0)
        return outcome, trio.current_time()

    outcome, at = run(main)
    assert outcome.status == "lost" and at == 0.0
    assert service.announce(EpochAnnouncement(TAG, 0, "", 0)) is False
    assert not service.connected


def test_a_burst_of_requests_goes_out_as_one_payload():
    """Requests made in the same scheduler pass queue while the outbox's previous write is on its way:
    one record carries them all, and each is answered on its own."""
    service, serve = reservation_service(LINK)
    burst = 25

    async def main():
        outcomes = []
        async with trio.open_nursery() as nursery:
            ours, peer = await connected(nursery, serve)

            async def request(reservation):
                outcomes.append(await service.request(reservation, timeout_s=30.0))
            reservations = [key_reservation() for _ in range(burst)]
            for reservation in reservations:
                nursery.start_soon(request, reservation)
            await wait_all_tasks_blocked()
            payloads_out = list(ours.sent)
            endpoint = ReservationEndpoint()
            events = endpoint.receive(await peer.receive())
            await peer.send(b"".join(endpoint.accept(event.reservation.request_id) for event in events))
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return payloads_out, events, reservations, outcomes

    payloads_out, events, reservations, outcomes = run(main)
    assert len(payloads_out) == 1
    assert sorted((event.reservation for event in events), key=str) == sorted(reservations, key=str)
    assert len(outcomes) == burst and all(outcome.accepted for outcome in outcomes)


def test_reservations_from_the_peer_are_answered_by_their_purpose_handler_and_others_refused():
    """The receiving end: a payload's KEY reservations reach the KEY handler together and its answers go
    back; a purpose nobody serves here is refused as such."""
    from qkdd.reservation.protocol import EpochReservation

    service, serve = reservation_service(LINK)
    accepting = Purposes()
    service.add_purpose(Purpose.KEY, accepting)
    with pytest.raises(ValueError, match="handler already"):
        service.add_purpose(Purpose.KEY, Purposes())

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            endpoint = ReservationEndpoint()
            keys = [key_reservation() for _ in range(3)]
            epoch = EpochReservation(str(uuid.uuid4()), TAG, 1, str(uuid.uuid4()), 1.0)
            await peer.send(b"".join(endpoint.reserve(r) for r in (*keys, epoch)))
            answers = []
            while len(answers) < 4:
                answers += endpoint.receive(await peer.receive())
            nursery.cancel_scope.cancel()
        return keys, epoch, answers

    keys, epoch, answers = run(main)
    assert accepting.reservations == keys
    by_id = {answer.request_id: answer for answer in answers}
    assert all(isinstance(by_id[r.request_id], ReservationAccepted) for r in keys)
    refused = by_id[epoch.request_id]
    assert isinstance(refused, ReservationRefused) and refused.reason is RefuseReason.MALFORMED
    assert "WG_EPOCH" in refused.text


def test_announcements_reach_on_announcement_and_go_out_while_connected():
    service, serve = reservation_service(LINK)
    purposes = Purposes()
    service.add_purpose(Purpose.WG_EPOCH, purposes)
    theirs = EpochAnnouncement(TAG, 7, str(uuid.uuid4()), 1700000000.0)
    ours_now = EpochAnnouncement(TAG, 0, "", 0)

    async def main():
        async with trio.open_nursery() as nursery:
            _, peer = await connected(nursery, serve)
            endpoint = ReservationEndpoint()
            await peer.send(endpoint.announce(theirs))
            assert service.announce(ours_now) is True
            events = endpoint.receive(await peer.receive())
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return events

    events = run(main)
    assert purposes.announcements == [theirs]
    assert events == [AnnouncementReceived(ours_now)]


def test_on_session_runs_once_per_session_with_the_exchange_up():
    service, serve = reservation_service(LINK)
    purposes = Purposes()
    service.add_purpose(Purpose.WG_EPOCH, purposes)

    async def main():
        connected_in_on_session = []

        async def on_session(service_):
            connected_in_on_session.append(service_.connected and service_ is service)
            await Purposes.on_session(purposes, service_)
        purposes.on_session = on_session
        for session_start in (0.0, 10.0):
            await trio.sleep_until(session_start)
            async with trio.open_nursery() as nursery:
                _, peer = await connected(nursery, serve)
                await trio.sleep(4.0)                     # the session lasts: on_session ran once only
                await peer.aclose()
        return connected_in_on_session

    assert run(main) == [True, True]
    assert purposes.sessions == [0.0, 10.0]


def test_a_failing_purpose_handler_leaves_the_exchange_running_for_every_purpose(caplog):
    """A consumer's bug (here every callback of the WireGuard epochs' handler raises) is logged; the
    exchange goes on, so the other purposes' requests are still answered on this session. The failed
    handler's reservations get no answer (the peer's requests time out, as with a lost session)."""
    from qkdd.reservation.protocol import EpochReservation

    service, serve = reservation_service(LINK)

    class Broken(Purposes):
        async def on_session(self, service):
            raise RuntimeError("bug in on_session")

        async def on_announcement(self, link_id, announcement):
            raise RuntimeError("bug in on_announcement")

        async def on_reservations(self, link_id, reservations):
            raise RuntimeError("bug in on_reservations")

    service.add_purpose(Purpose.WG_EPOCH, Broken())

    async def main():
        async with trio.open_nursery() as nursery:
            ours, peer = await connected(nursery, serve)
            assert service.connected
            endpoint = ReservationEndpoint()
            await peer.send(endpoint.announce(EpochAnnouncement(TAG, 0, "", 0)))
            await peer.send(endpoint.reserve(EpochReservation(str(uuid.uuid4()), TAG, 1, str(uuid.uuid4()), 1.0)))
            await wait_all_tasks_blocked()
            unanswered = ours.sent == []
            nursery.start_soon(answering_peer, peer, lambda e, r: e.accept(r.request_id))
            outcome = await service.request(key_reservation(), timeout_s=30.0)
            nursery.cancel_scope.cancel()
        return unanswered, outcome

    caplog.set_level(logging.ERROR, logger="qkdd.reservation")
    unanswered, outcome = run(main)
    assert unanswered and outcome.accepted
    for method in ("on_session", "on_announcement", "on_reservations"):
        assert f"bug in {method}" in caplog.text
        assert f"{method} of the WG_EPOCH reservations failed; the exchange goes on" in caplog.text
