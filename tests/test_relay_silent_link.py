"""A link whose classical channel goes silent stays in the topology until its session times out (20 s by
default): a request in that window fails on it once, and its retry takes another route rather than the
same one. Real relay service objects over real TCP/TLS sessions and a real SQLite key store per node
(tests/relay_sockets.py); the silent channel is the relay's messages on one link dropped at its sender,
while the session, and so the announced topology, stays up (the real-daemon version, with iptables:
tests/test_relay_netns.py)."""
from __future__ import annotations

import trio

from qkdd.relay import protocol as rp
from tests.relay_sockets import SocketNet

DIAMOND = (["S", "A", "B", "D"], [("S", "A"), ("S", "B"), ("A", "D"), ("B", "D")])


def test_relay_retry_avoids_the_route_that_failed_while_the_topology_still_shows_it(tmp_path):
    async def main():
        # the route through A holds far more key, so it stays the cheapest after the keys its failure took
        net = SocketNet(tmp_path, *DIAMOND, keys_per_link=16, keys_on={"S-A": 256, "A-D": 256})
        async with trio.open_nursery() as nursery:
            for name in DIAMOND[0]:
                await net.start(name, nursery)
            await net.wait_route("S", "D", hops=2)
            await net.wait_for("both routes S -> D", lambda: len(net.service("S").routes("D")) == 2)
            first = net.service("S").choose_route("D", 256)
            assert first.path == ("S", "A", "D")
            relay, silent_link = "A", "A-D"
            service = net.service(relay)
            send, dropped = service._send, []

            def silent(event: rp.Send) -> None:       # nothing the relay sends on that link arrives
                if event.link_id == silent_link:
                    dropped.append(event)
                    return
                send(event)
            service._send = silent

            key_id, key, routes = await net.service("S").request_key("D", 256)
            assert relay not in routes[0].path and routes[0].hops == 2     # the retry went the other way
            assert (await net.service("D").fetch_key(key_id)).material == key
            assert any(rp.decode(e.payload)[0] is rp.MessageType.FORWARD for e in dropped)
            assert net.service("S").choose_route("D", 256).path == first.path   # still announced, still cheapest

            service._send = send                      # the channel speaks again: the failed hop settles
            await net.wait_for("the source's journal to settle", lambda: not net.service("S").journal.open_requests())
            await net.wait_for("every link's keys held at both ends or neither",
                               lambda: net.unmatched_link_keys() == {})
            nursery.cancel_scope.cancel()
    trio.run(main)
