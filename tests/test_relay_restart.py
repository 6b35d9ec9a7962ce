"""In-flight relay requests across a crash, with the daemon's relay service objects over real TCP/TLS sessions
and a real SQLite key store file per node (tests/relay_sockets.py): a source, relay or destination stopped
at once (as kill -9) at the worst moment of a request leaves, once it is back, no key at one end only: the
source's journal rolls the request back at the destination, and every link's keys are held at both ends or
at neither. (Real daemons killed with -9 mid-relay: tests/test_relay_netns.py, the reroute test.)"""
from __future__ import annotations

import pytest
import trio

from qkdd.keystore import KeyState, KeyStoreError
from qkdd.relay import protocol as rp
from qkdd.relay.service import RELAY_LINK_ID, RelayError
from tests.relay_sockets import SocketNet, state_of

CHAIN = (["S", "R", "D"], [("S", "R"), ("R", "D")])


def kind_of(payload: bytes) -> rp.MessageType | None:
    try:
        return rp.decode(payload)[0]
    except rp.RelayWireError:
        return None


def crash_before_sending(net: SocketNet, name: str, kind: rp.MessageType, seen: list) -> None:
    """`name` dies (as kill -9) just before it would send its first message of `kind`; the message is lost."""
    service = net.service(name)
    send = service._send

    def hooked(event: rp.Send) -> None:
        if not seen and kind_of(event.payload) is kind:
            seen.append(rp.decode(event.payload)[1])
            net.crash(name)
            return
        send(event)
    service._send = hooked


async def request(net: SocketNet, src: str, dst: str, bits: int = 256):
    """A request at `src` run as one of its tasks (a request handler of the daemon): the result or the error."""
    node = net[src]
    before = len(node.results)
    node.call_soon(lambda: net.service(src).request_key(dst, bits, path=["S", "R", "D"]))
    await net.wait_for("the request's end", lambda: len(node.results) > before or node.stopped.is_set())
    return node.results[before] if len(node.results) > before else None


async def settled(net: SocketNet, key_id: str) -> None:
    """The source's journal is empty and the destination no longer holds `key_id`; links consistent."""
    await net.wait_for("the source's journal to settle", lambda: not net.service("S").journal.open_requests())
    assert state_of(net["D"].store, RELAY_LINK_ID, key_id) in (None, KeyState.EXPIRED)
    assert net.unmatched_link_keys() == {}


async def genuine_relay_works(net: SocketNet) -> None:
    await net.wait_route("S", "D", hops=2)
    key_id, key, _ = await net.service("S").request_key("D", 256)
    assert (await net.service("D").fetch_key(key_id)).material == key


def run(main, tmp_path):
    async def wrapper():
        net = SocketNet(tmp_path, *CHAIN)
        async with trio.open_nursery() as nursery:
            for name in CHAIN[0]:
                await net.start(name, nursery)
            await net.wait_route("S", "D", hops=2)
            await main(net, nursery)
            nursery.cancel_scope.cancel()
    trio.run(wrapper)


def test_relay_destination_killed_after_storing_the_key_rolls_it_back_after_restart(tmp_path):
    async def main(net, nursery):
        seen = []
        crash_before_sending(net, "D", rp.MessageType.DONE, seen)
        result = await request(net, "S", "D")
        assert isinstance(result, RelayError), result                # never served at the source
        (relay_id,) = seen
        await net["D"].stopped.wait()
        store = net["D"].open_store()
        try:
            assert state_of(store, RELAY_LINK_ID, relay_id) is KeyState.AVAILABLE   # durable at D, alone
        finally:
            store.close()
        assert [r.relay_id for r in net.service("S").journal.open_requests()] == [relay_id]
        await net.start("D", nursery)
        await settled(net, relay_id)
        with pytest.raises(KeyStoreError):                    # erased: never served at the destination
            await net.service("D").fetch_key(relay_id)
        await genuine_relay_works(net)
    run(main, tmp_path)


def test_relay_source_killed_before_serving_rolls_the_destination_back_after_restart(tmp_path):
    async def main(net, nursery):
        source = net.service("S")
        finish = source._finish_waiter
        seen = []

        def crash_on_done(relay_id, delivered, reason):       # DONE came: the source dies before serving
            if delivered and not seen:
                seen.append(relay_id)
                net.crash("S")
                return
            finish(relay_id, delivered, reason)
        source._finish_waiter = crash_on_done
        assert await request(net, "S", "D") is None                 # the source died with the request
        (relay_id,) = seen
        await net["S"].stopped.wait()
        assert state_of(net["D"].store, RELAY_LINK_ID, relay_id) is KeyState.AVAILABLE
        await net.start("S", nursery)
        await settled(net, relay_id)
        assert net["D"].metric("qkd_relay_passed_total", role="destination", result="delivered") == 1
        await genuine_relay_works(net)
    run(main, tmp_path)


@pytest.mark.parametrize("kind", [rp.MessageType.CONFIRM, rp.MessageType.FORWARD], ids=["confirm", "forward"])
def test_relay_intermediate_killed_mid_relay_leaves_no_key_at_one_end(tmp_path, kind):
    """The relay dies as it would pass the destination's CONFIRM up (both its keys taken and erased), or
    as it would forward (keys taken, the FORWARD lost): the request fails at the source, the destination
    stores nothing, and once the relay is back the journal settles and both links agree."""
    async def main(net, nursery):
        seen = []
        crash_before_sending(net, "R", kind, seen)
        result = await request(net, "S", "D")
        assert isinstance(result, RelayError), result
        await net["R"].stopped.wait()
        (relay_id,) = seen
        assert state_of(net["D"].store, RELAY_LINK_ID, relay_id) is None
        await net.start("R", nursery)
        await settled(net, relay_id)
        await genuine_relay_works(net)
    run(main, tmp_path)
