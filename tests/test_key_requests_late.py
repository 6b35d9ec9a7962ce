"""`/v1` key requests (qkdd.link.key_requests) whose peer answers only after the request gave up: the real
KeyRequests and ReservationService over an in-memory session, a real SQLite key store at this end, the
peer a sans-IO ReservationEndpoint driven by the test. A late acceptance leaves the key reserved for the
same holder at both ends, so it is the next key handed out for that holder, with no new exchange; a late
refusal frees the key, or erases it when the peer no longer holds it. Real time (the store's calls run in
worker threads, which a mock clock would jump past): timeouts of 0.2 s."""
from __future__ import annotations

import os
import uuid

import pytest
import trio

from qkdd.keystore import KeyState, KeyStore, KeyUnavailable
from qkdd.link.key_requests import KeyRequests
from qkdd.reservation.protocol import RefuseReason, ReservationEndpoint, ReservationReceived
from tests.reservation_support import memory_session, reservation_service

LINK = "link-ab"
TIMEOUT_S = 0.2


@pytest.fixture
def store(tmp_path):
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    store.put_pending(LINK, 0, [(str(uuid.uuid4()), os.urandom(32)) for _ in range(8)], expires_at=4e9)
    store.commit_frame(LINK, 0)
    yield store
    store.close()


async def start(nursery, store):
    """KeyRequests serving over a fresh in-memory session: (key requests, the peer's stream)."""
    service, serve = reservation_service(LINK)
    requests = KeyRequests(LINK, store, service, key_bits=256, reserve_timeout_s=TIMEOUT_S)
    ours, peer = memory_session()
    nursery.start_soon(serve, ours)
    with trio.fail_after(5):
        while not service.connected:
            await trio.sleep(0.01)
    return requests, peer


async def unanswered_request(requests, peer, endpoint) -> ReservationReceived:
    """A request that times out; the RESERVE the peer got for it (not answered yet)."""
    with pytest.raises(KeyUnavailable, match="did not confirm the reservation in time"):
        await requests.request_key(256)
    [received] = endpoint.receive(await peer.receive())
    return received


async def settle(store, key_id, state: KeyState) -> None:
    with trio.fail_after(5):
        while store.state(LINK, key_id) is not state:
            await trio.sleep(0.01)


def test_a_late_acceptance_makes_that_key_the_next_one_handed_out_for_its_holder(store):
    async def main():
        async with trio.open_nursery() as nursery:
            requests, peer = await start(nursery, store)
            endpoint = ReservationEndpoint()
            late = await unanswered_request(requests, peer, endpoint)
            key_id = late.reservation.key_id
            assert store.state(LINK, key_id) is KeyState.RESERVED
            await peer.send(endpoint.accept(late.reservation.request_id))          # after the deadline
            with trio.fail_after(5):
                while not requests._settled.get("v1:256"):
                    await trio.sleep(0.01)
            key = await requests.request_key(256)        # no new exchange: the peer holds it reserved already
            assert key.key_id == key_id and len(key.material) == 32
            assert store.state(LINK, key_id) is KeyState.DELIVERED
            with trio.move_on_after(0.3):
                await peer.receive()
                pytest.fail("the settled key needed no new reservation")
            # a shorter key for another holder does not take it; it asks the peer as usual
            nursery.start_soon(requests.request_key, 128)
            [other] = endpoint.receive(await peer.receive())
            assert other.reservation.holder == "v1:128" and other.reservation.key_id != key_id
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("reason, freed_to", [(RefuseReason.KEYS_UNAVAILABLE, KeyState.AVAILABLE),
                                              (RefuseReason.STORE_FAILURE, KeyState.AVAILABLE),
                                              (RefuseReason.KEYS_GONE, KeyState.DELIVERED)])
def test_a_late_refusal_frees_the_key_or_erases_it_when_the_peer_no_longer_holds_it(store, reason, freed_to):
    async def main():
        async with trio.open_nursery() as nursery:
            requests, peer = await start(nursery, store)
            endpoint = ReservationEndpoint()
            late = await unanswered_request(requests, peer, endpoint)
            await peer.send(endpoint.refuse(late.reservation.request_id, reason, "late"))
            await settle(store, late.reservation.key_id, freed_to)
            assert not requests._settled.get("v1:256")
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_request_whose_session_ended_keeps_its_key_reserved_and_unsettled(store):
    async def main():
        async with trio.open_nursery() as nursery:
            requests, peer = await start(nursery, store)
            endpoint = ReservationEndpoint()
            refusals = []

            async def request() -> None:
                with pytest.raises(KeyUnavailable, match="session with the peer ended") as refusal:
                    await requests.request_key(256)
                refusals.append(refusal)
            nursery.start_soon(request)
            [received] = endpoint.receive(await peer.receive())
            await peer.aclose()                                # the session ends before any answer
            await trio.sleep(TIMEOUT_S * 3)
            assert refusals
            assert store.state(LINK, received.reservation.key_id) is KeyState.RESERVED
            assert not requests._abandoned and not requests._settled
            nursery.cancel_scope.cancel()

    trio.run(main)
