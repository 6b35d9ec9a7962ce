"""The classical channel over real TCP + TLS 1.3 sockets on 127.0.0.1: records both ways, tampering by
a man in the middle, replay/reorder/truncation, restarts of either end, timeouts and garbage. Real time
throughout: the kernel's sockets are part of what is tested. (A session's own timings, heartbeats and
the idle timeout, are checked to the instant on a mock clock in test_link_channel.py.)"""
from __future__ import annotations

import base64
import functools
import logging
import re
import socket

import pytest
import trio

from qkdd.peer import SessionClosedError, generate_identity
from qkdd.peer.tcp_tuning import RTO_CEILING_MS, TCP_RTO_MAX_MS, retransmission_cap_supported
from qkdd.peer.framing import FRAME_VERSION, HEADER, MAGIC, Frame, FrameType, encode_header

from peer_harness import WAIT_S, CiphertextFlipper, Endpoint, fast_settings, frame_rewriting_proxy

ALICE, BOB, MALLORY = generate_identity(), generate_identity(), generate_identity()
SECRET_MARK = b"classical-payload-that-must-not-be-logged"


@pytest.fixture
def peer_log(caplog):
    caplog.set_level(logging.INFO, logger="qkdd.peer")
    return caplog


def log_text(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def start_pair(nursery, *, dial_port=None, listen_settings=None, dial_settings=None,
                     bob_pins=None, alice_pins=None):
    """Bob listens, Alice dials (optionally through a proxy at `dial_port`)."""
    bob, alice = Endpoint(), Endpoint()
    port = await bob.start(nursery, listen_settings or fast_settings(listen=("127.0.0.1", 0)), BOB,
                           bob_pins or ALICE.public_key())
    return alice, bob, port


async def start_alice(nursery, alice, port, pins=None, **kwargs):
    await alice.start(nursery, fast_settings(dial=("127.0.0.1", port), **kwargs), ALICE, pins or BOB.public_key())


async def pair_with_the_listener_gone(nursery, **dial_settings) -> tuple[Endpoint, int]:
    """A first session between Bob (listening) and Alice (dialling with `dial_settings`), then Bob stopped:
    Alice, now redialling, and the port Bob listened on."""
    alice, bob, port = await start_pair(nursery)
    await start_alice(nursery, alice, port, **dial_settings)
    await alice.next_session(), await bob.next_session()
    bob.scope.cancel()
    return alice, port


async def stand_in_listener(nursery, handler, port: int) -> trio.CancelScope:
    """Serve `handler` on the gone listener's port in its place, until the returned scope is cancelled."""
    scope = trio.CancelScope()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await trio.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)
    await nursery.start(serve)
    return scope


async def exchange(alice: Endpoint, bob: Endpoint, tag: bytes):
    """One message each way on the live sessions; returns the epochs they arrived in."""
    a_session, b_session = alice.connector.session, bob.connector.session
    await a_session.send(5, b"to bob " + tag)
    epoch_b, channel, payload = await bob.next_message()
    assert (channel, payload) == (5, b"to bob " + tag)
    await b_session.send(6, b"to alice " + tag)
    epoch_a, channel, payload = await alice.next_message()
    assert (channel, payload) == (6, b"to alice " + tag)
    return epoch_a, epoch_b


def test_records_flow_both_ways_in_order_on_many_channels(peer_log):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            await start_alice(nursery, alice, port)
            a_session, b_session = await alice.next_session(), await bob.next_session()
            assert a_session.session_id == b_session.session_id and a_session.epoch == b_session.epoch == 1
            big = bytes(range(256)) * 4096  # 1 MiB in one record
            for i in range(25):
                await a_session.send(i % 3, b"%d" % i)
            await a_session.send_many([(i % 3, b"%d" % i) for i in range(25, 50)])
            await a_session.send(9, big)
            await b_session.send(2, b"reply")
            assert [await bob.next_message() for _ in range(50)] == [(1, i % 3, b"%d" % i) for i in range(50)]
            assert await bob.next_message() == (1, 9, big)
            assert await alice.next_message() == (1, 2, b"reply")
            # (that heartbeats keep a quiet session up is checked on a mock clock: tests/test_link_channel.py)
            assert alice.connector.session is a_session and bob.connector.session is b_session
            keys.extend([a_session._sealer._key, a_session._opener._key])
            assert b_session._opener._key == keys[0] and b_session._sealer._key == keys[1]
            assert keys[0] not in repr(a_session).encode() and "_key" not in repr(a_session._sealer)
            nursery.cancel_scope.cancel()

    keys: list[bytes] = []
    peer_log.set_level(logging.DEBUG)
    trio.run(main)
    text = log_text(peer_log)
    assert "established" in text
    for key in keys:  # session keys never reach a log line, in any encoding
        assert key.hex() not in text and base64.b64encode(key).decode() not in text


@pytest.mark.parametrize("attack, expected_log", [
    ("flip", "DATA record rejected: MAC check failed"),
    ("replay", "replayed, expected"),
    ("reorder", "out of order"),
    ("truncate", "connection ended without the peer's authenticated close"),
    ("cut-mid-record", "stream ended inside a frame"),
    ("oversize", "exceeds the cap"),
    ("unknown-type", "unknown frame type 0x7f"),
])
def test_man_in_the_middle_attack_is_rejected_logged_and_the_session_recovers(peer_log, attack, expected_log):
    """A TLS-terminating proxy (possible: TLS is unauthenticated by design) alters the records of one
    session; the listener rejects and logs it without contents, the session is torn down, the dialer
    redials, and later messages flow in the new session."""
    done = set()
    held: list[Frame] = []

    def tamper(frame: Frame):
        if frame.type is not FrameType.DATA or SECRET_MARK not in frame.body or attack in done:
            return [frame.to_bytes()]
        if attack == "reorder" and not held:
            held.append(frame)  # hold the first marked record, send the second one first
            return []
        done.add(attack)
        if attack == "flip":
            body = bytearray(frame.body)
            body[20] ^= 0x04  # inside the payload
            return [Frame(frame.type, bytes(body)).to_bytes()]
        if attack == "replay":
            return [frame.to_bytes(), frame.to_bytes()]
        if attack == "reorder":
            return [frame.to_bytes(), held[0].to_bytes()]
        if attack == "truncate":
            return None
        if attack == "cut-mid-record":
            return [frame.to_bytes()[:25], None]  # half a record, then a clean TLS close
        if attack == "oversize":
            return [encode_header(FrameType.DATA, (64 << 20) + 1)]  # and never a body
        return [encode_header(FrameType.DATA, 0)[:5] + b"\x7f" + encode_header(FrameType.DATA, 0)[6:]]

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            proxy_port = await nursery.start(frame_rewriting_proxy, port, tamper)
            await start_alice(nursery, alice, proxy_port)
            await alice.next_session()
            await bob.next_session()
            a_session = alice.connector.session
            await a_session.send(1, b"before " + SECRET_MARK)
            delivered = []
            if attack == "reorder":
                await a_session.send(1, b"second " + SECRET_MARK)
            elif attack == "replay":
                delivered.append(await bob.next_message())  # the original arrives once
            # Bob's session is torn down; both ends come back with a new session by themselves.
            new_b = await bob.next_session()
            new_a = await alice.next_session()
            assert new_a.epoch == new_b.epoch == 2 and new_a.session_id == new_b.session_id
            assert await exchange(alice, bob, b"after") == (2, 2)
            nursery.cancel_scope.cancel()
        return delivered

    delivered = trio.run(main)
    text = log_text(peer_log)
    assert expected_log in text
    assert "torn down" in text
    assert SECRET_MARK.decode() not in text  # rejected records are logged without their contents
    if attack == "replay":
        assert delivered == [(1, 1, b"before " + SECRET_MARK)]


def test_flipped_tls_ciphertext_is_rejected_by_tls_and_the_session_recovers(peer_log):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            flipper = CiphertextFlipper(port)
            proxy_port = await nursery.start(flipper.run)
            await start_alice(nursery, alice, proxy_port)
            await alice.next_session()
            await bob.next_session()
            assert await exchange(alice, bob, b"first") == (1, 1)
            flipper.armed = True
            await alice.connector.session.send(1, SECRET_MARK)
            assert (await bob.next_session()).epoch == 2
            assert (await alice.next_session()).epoch == 2
            assert await exchange(alice, bob, b"after") == (2, 2)
            assert flipper.flipped == 1
            nursery.cancel_scope.cancel()
    trio.run(main)
    text = log_text(peer_log)
    assert "torn down" in text and "SSLError" in text
    assert SECRET_MARK.decode() not in text


@pytest.mark.parametrize("restarted", ["listener", "dialer"])
def test_a_restarted_end_resumes_without_manual_steps(peer_log, restarted):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            await start_alice(nursery, alice, port)
            await alice.next_session()
            await bob.next_session()
            assert await exchange(alice, bob, b"one") == (1, 1)
            if restarted == "listener":
                bob.scope.cancel()
                with trio.fail_after(WAIT_S):  # the dialer finds nobody for a while
                    while "cannot establish a session" not in log_text(peer_log):
                        await trio.sleep(0.02)
                bob = Endpoint()
                await bob.start(nursery, fast_settings(listen=("127.0.0.1", port)), BOB, ALICE.public_key())
                expected = (2, 1)
            else:
                alice.scope.cancel()
                await trio.sleep(0.1)
                alice = Endpoint()
                await start_alice(nursery, alice, port)
                expected = (1, 2)
            await alice.next_session()
            await bob.next_session()
            assert await exchange(alice, bob, b"two") == expected
            nursery.cancel_scope.cancel()
    trio.run(main)
    text = log_text(peer_log)
    assert "closed by the peer" in text  # the cancelled end closed its session cleanly
    if restarted == "listener":
        assert "cannot establish a session" in text and "retrying in" in text


def test_a_peer_that_restarts_twice_quickly_is_redialled_at_once_the_second_time(peer_log):
    """The dialler's backoff grows while its attempts fail (here: something at the peer's port answers every
    connection with bytes that are no TLS), and resets once the peer answers again (a completed handshake):
    the next restart is redialled after backoff_initial_s, not after the delay the first absence built up
    (before, 1.5-3 s here; ~21 s with the defaults)."""
    dial_settings = dict(backoff_initial_s=0.05, backoff_max_s=3.0)

    def failed_dials() -> int:
        return log_text(peer_log).count("cannot establish a session")

    async def slam(stream: trio.SocketStream) -> None:
        # Not a reset (that would be redialled without backing off, as a refusal): a TLS failure
        with trio.move_on_after(WAIT_S):
            try:
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                while await stream.receive_some():      # until the dialler gives up on it
                    pass
            except trio.BrokenResourceError:
                pass
        await stream.aclose()

    async def main():
        async with trio.open_nursery() as nursery:
            # first absence: 6 failed dials, the backoff grows
            alice, port = await pair_with_the_listener_gone(nursery, **dial_settings)
            slammer = await stand_in_listener(nursery, slam, port)
            with trio.fail_after(WAIT_S):
                while failed_dials() < 6:
                    await trio.sleep(0.01)
            slammer.cancel()
            await trio.sleep(0.1)
            bob = Endpoint()
            await bob.start(nursery, fast_settings(listen=("127.0.0.1", port)), BOB, ALICE.public_key())
            assert (await alice.next_session()).epoch == 2
            await bob.next_session()
            bob.scope.cancel()                          # second restart, right away
            bob = Endpoint()
            await bob.start(nursery, fast_settings(listen=("127.0.0.1", port)), BOB, ALICE.public_key())
            back_s = trio.current_time()
            assert (await alice.next_session()).epoch == 3
            await bob.next_session()
            # Reset: the first redial waits 0.025-0.05 s (a refused one: another 0.025-0.05 s).
            assert trio.current_time() - back_s < 0.5
            assert await exchange(alice, bob, b"three") == (3, 1)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_refused_connection_is_redialled_without_backing_off(peer_log):
    """A refusal means the peer's host is up and its daemon (re)starting: the dialler keeps its first delay,
    so the session is back as soon as the peer listens (after kill -9 and a restart, a grown delay was most
    of the time to service)."""
    dial_settings = dict(backoff_initial_s=0.05, backoff_max_s=3.0)

    async def main():
        async with trio.open_nursery() as nursery:
            alice, port = await pair_with_the_listener_gone(nursery, **dial_settings)
            await trio.sleep(1.0)                       # refused all along: with backoff, ~5 dials and 1.6 s
            delays_s = [float(d) for d in re.findall(r"connection refused.*?retrying in ([0-9.]+) s",
                                                     log_text(peer_log))]
            assert len(delays_s) >= 10 and max(delays_s) <= 0.05, delays_s
            bob = Endpoint()
            await bob.start(nursery, fast_settings(listen=("127.0.0.1", port)), BOB, ALICE.public_key())
            back_s = trio.current_time()
            assert (await alice.next_session()).epoch == 2
            assert trio.current_time() - back_s < 0.5
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_connection_reset_before_the_handshake_is_redialled_without_backing_off(peer_log):
    """A host (or a proxy in front of it) that takes the connection and resets it unanswered has no daemon
    listening behind it yet: as a refusal, the dialler keeps its first delay (the chaos lab's Bob dials
    Alice through such a proxy, and after kill -9 of Alice a grown delay was most of the time to service)."""
    dial_settings = dict(backoff_initial_s=0.05, backoff_max_s=3.0)

    async def reset(stream: trio.SocketStream) -> None:
        await stream.aclose()           # the dialler's ClientHello unread: the kernel answers with a reset

    async def main():
        async with trio.open_nursery() as nursery:
            alice, port = await pair_with_the_listener_gone(nursery, **dial_settings)
            resetter = await stand_in_listener(nursery, reset, port)
            await trio.sleep(1.0)                       # reset all along: with backoff, ~5 dials and 1.6 s
            delays_s = [float(d) for d in re.findall(r"TLS with .*? failed: .*?retrying in ([0-9.]+) s",
                                                     log_text(peer_log))]
            assert len(delays_s) >= 10 and max(delays_s) <= 0.05, delays_s
            resetter.cancel()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_surviving_end_redials_at_once_after_a_session_that_lived(peer_log):
    """The peer died (its connection cut here, by a relay between the ends that stays up): the dialler's
    first redial comes at once, not after a backoff delay (1-2 s with these settings, before); the relay
    then takes it to the peer, which never went away, and the next session is up."""
    dial_settings = dict(backoff_initial_s=2.0, backoff_max_s=2.0)
    accepted_s: list[float] = []
    live: list[trio.SocketStream] = []

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, bob_port = await start_pair(nursery)

            async def relay(client: trio.SocketStream) -> None:
                accepted_s.append(trio.current_time())
                upstream = await trio.open_tcp_stream("127.0.0.1", bob_port)
                live[:] = [client, upstream]

                async def pump(source, sink):
                    try:
                        while data := await source.receive_some():
                            await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    await trio.aclose_forcefully(sink)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(pump, client, upstream)
                    pumps.start_soon(pump, upstream, client)

            listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
            relay_port = listeners[0].socket.getsockname()[1]
            await start_alice(nursery, alice, relay_port, **dial_settings)
            await alice.next_session(), await bob.next_session()
            await trio.sleep(dial_settings["backoff_max_s"] + 0.1)     # a session that lived
            cut_s = trio.current_time()
            for stream in live:
                await trio.aclose_forcefully(stream)
            assert (await alice.next_session()).epoch == 2
            assert len(accepted_s) == 2 and accepted_s[1] - cut_s < 0.9, (accepted_s, cut_s)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "retrying in" not in log_text(peer_log)


def test_a_new_authenticated_session_replaces_a_stale_one(peer_log):
    """The peer host died without closing its connection; the restarted peer's new session replaces
    the stale one (one live session per link), and the application is told by a new epoch."""
    from qkdd.peer import PeerSession, Role
    from qkdd.peer import tls

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stale_stream = trio.SSLStream(tcp, tls.client_context(), server_hostname=None)
            await stale_stream.do_handshake()
            stale = await PeerSession.establish(stale_stream, Role.INITIATOR, fast_settings(dial=("x", 1)),
                                                ALICE, BOB.public_key())
            first = await bob.next_session()
            assert first.epoch == 1 and first.session_id == stale.session_id
            # the stale end never runs its reader or closes: a dead host
            await start_alice(nursery, alice, port)
            await alice.next_session()
            second = await bob.next_session()
            assert second.epoch == 2 and first.closed
            assert bob.connector.session is second
            assert await exchange(alice, bob, b"fresh") == (1, 2)
            await trio.aclose_forcefully(stale_stream)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert "replaces session" in log_text(peer_log)


@pytest.mark.parametrize("pinned_by", ["listener", "dialer"])
def test_wrong_pinned_key_refuses_the_peer_with_a_clear_log_line(peer_log, pinned_by):
    async def main():
        async with trio.open_nursery() as nursery:
            bob_pins = MALLORY.public_key() if pinned_by == "listener" else None
            alice_pins = MALLORY.public_key() if pinned_by == "dialer" else None
            alice, bob, port = await start_pair(nursery, bob_pins=bob_pins)
            await start_alice(nursery, alice, port, pins=alice_pins)
            await trio.sleep(0.6)  # several dial attempts
            assert bob.connector.session is None and alice.connector.session is None
            assert bob.connector.epoch == alice.connector.epoch == 0
            nursery.cancel_scope.cancel()
    trio.run(main)
    text = log_text(peer_log)
    if pinned_by == "listener":
        assert "refused connection from 127.0.0.1" in text and "but link 'link-ab' pins sha256:" in text
        assert "peer aborted the handshake: unknown key" in text  # what the dialer logs
    else:
        assert "RESPONDER_HELLO: peer signs with key sha256:" in text and "peer refused" in text
        assert "refused connection" in text and "unknown key" in text  # the listener hears the alert
    assert "established" not in text


def test_the_count_of_refused_connections_is_logged_though_no_further_one_comes(peer_log, monkeypatch):
    """Garbage instead of TLS from more clients than the log's burst: the refusals held back are counted
    in a summary line within the summary interval, without waiting for another refusal."""
    from qkdd import log_limit

    monkeypatch.setattr(log_limit, "SUMMARY_INTERVAL_S", 0.2)
    flood = log_limit.DEFAULT_BURST + 5

    def accounted(text: str) -> int:
        lines = text.splitlines()
        return (sum("refused connection from" in line for line in lines)
                + sum(int(line.split()[0]) for line in lines
                      if line.endswith("similar messages suppressed (peer-refused)")))

    async def main():
        async with trio.open_nursery() as nursery:
            _, _, port = await start_pair(nursery)
            for _ in range(flood):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"\x00" * 64)
                await closed_by_listener(stream, WAIT_S)
            with trio.fail_after(WAIT_S):
                while accounted(log_text(peer_log)) < flood:
                    await trio.sleep(0.05)
            assert accounted(log_text(peer_log)) == flood
            assert "similar messages suppressed (peer-refused)" in log_text(peer_log)
            nursery.cancel_scope.cancel()
    trio.run(main)


async def closed_by_listener(stream, within_s):
    """Read until the listener closes `stream` (failing after `within_s`), then close our end."""
    try:
        with trio.fail_after(within_s):
            while await stream.receive_some(4096):
                pass
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


def test_silent_and_garbage_peers_are_dropped_without_a_hang(peer_log):
    from qkdd.peer import tls

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(
                nursery, listen_settings=fast_settings(listen=("127.0.0.1", 0), handshake_timeout_s=0.5))

            # 1. silent at the TCP level (never starts TLS): dropped at the handshake timeout
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            await closed_by_listener(silent, 2.0)
            # 2. TLS done, then silent
            quiet = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(),
                                   server_hostname=None)
            await quiet.do_handshake()
            await closed_by_listener(quiet, 2.0)
            # 3. garbage instead of TLS
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            await raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await closed_by_listener(raw, 2.0)
            # 4. garbage inside TLS, 5. an oversized frame header, 6. a record before the handshake,
            # 7. a frame of another version, 8. a frame type nobody knows: each refused at once,
            #    long before the handshake timeout
            for payload in (b"hello?\n", encode_header(FrameType.INITIATOR_HELLO, 1 << 30),
                            encode_header(FrameType.DATA, 60) + b"\x00" * 60,
                            HEADER.pack(MAGIC, FRAME_VERSION + 1, FrameType.INITIATOR_HELLO, 0),
                            HEADER.pack(MAGIC, FRAME_VERSION, 0x55, 0)):
                stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(),
                                        server_hostname=None)
                await stream.send_all(payload)
                await closed_by_listener(stream, 2.0)  # the log lines below prove the reasons
            # the listener still serves a real peer
            await start_alice(nursery, alice, port)
            await alice.next_session()
            await bob.next_session()
            assert await exchange(alice, bob, b"ok") == (1, 1)
            nursery.cancel_scope.cancel()
    trio.run(main)
    text = log_text(peer_log)
    assert text.count("not finished within 0.5 s") == 2
    assert "bad magic" in text and "exceeds the cap" in text
    assert "DATA frame before the handshake completed" in text
    assert "unsupported frame version 2" in text and "unknown frame type 0x55" in text
    assert "SSLError" in text  # the plain-text HTTP request failed TLS


def test_a_flood_of_refused_connections_costs_a_few_log_lines_not_one_each(peer_log):
    from qkdd.log_limit import DEFAULT_BURST, DEFAULT_PER_S
    from qkdd.peer import tls

    flood = 60

    async def garbage_inside_tls(port):
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(),
                                server_hostname=None)
        await stream.send_all(b"hello?\n")
        await closed_by_listener(stream, 2.0)

    async def main():
        async with trio.open_nursery() as nursery:
            _, _, port = await start_pair(nursery)
            started_s = trio.current_time()
            for _ in range(flood):
                await garbage_inside_tls(port)
            elapsed_s = trio.current_time() - started_s
            refused = log_text(peer_log).count("refused connection from")
            assert DEFAULT_BURST <= refused <= DEFAULT_BURST + elapsed_s * DEFAULT_PER_S + 1
            await trio.sleep(1.5 / DEFAULT_PER_S)          # a token again: the next refusal is logged...
            await garbage_inside_tls(port)
            nursery.cancel_scope.cancel()
            return refused
    refused = trio.run(main)
    text = log_text(peer_log)
    # ...preceded by the count of those held back, so the flood's size is still on record
    held_back = re.findall(r"(\d+) similar messages suppressed \(peer-refused\)", text)
    assert held_back and sum(map(int, held_back)) == flood - refused, held_back
    assert text.count("refused connection from") == refused + 1


def test_dialer_gives_up_on_a_silent_listener_and_retries(peer_log):
    async def main():
        accepted = []

        async def silent_server(stream):
            accepted.append(stream)
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, silent_server, 0)
            port = listeners[0].socket.getsockname()[1]
            alice = Endpoint()
            await start_alice(nursery, alice, port, handshake_timeout_s=0.3)
            with trio.fail_after(5):
                while len(accepted) < 2:
                    await trio.sleep(0.05)
            assert alice.connector.session is None
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert "handshake with 127.0.0.1" in log_text(peer_log) and "not finished within 0.3 s" in log_text(peer_log)


def test_a_peer_that_stops_sending_is_dropped_at_the_idle_timeout(peer_log):
    """Heartbeats keep a healthy session alive; a peer that goes silent (host gone, no FIN) is dropped."""
    from qkdd.peer import PeerSession, Role
    from qkdd.peer import tls

    async def main():
        async with trio.open_nursery() as nursery:
            _, bob, port = await start_pair(nursery, listen_settings=fast_settings(
                listen=("127.0.0.1", 0), heartbeat_interval_s=0.1, idle_timeout_s=0.5))
            stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), tls.client_context(),
                                    server_hostname=None)
            await stream.do_handshake()
            await PeerSession.establish(stream, Role.INITIATOR, fast_settings(dial=("x", 1)), ALICE,
                                        BOB.public_key())
            session = await bob.next_session()
            with trio.fail_after(3):
                await session.ended.wait()
            assert bob.connector.session is None
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert "torn down: no record from the peer for 0.5 s" in log_text(peer_log)


def test_listener_bounds_concurrent_handshakes(peer_log):
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery, listen_settings=fast_settings(
                listen=("127.0.0.1", 0), max_pending_handshakes=2, handshake_timeout_s=1.0))
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await trio.sleep(0.1)
            third = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(2.0):  # closed at once (the log line below proves why)
                assert await third.receive_some(10) == b""
            # once the silent ones time out, a real peer gets in
            await start_alice(nursery, alice, port)
            assert (await bob.next_session()).epoch == 1
            assert await exchange(alice, bob, b"in") == (1, 1)
            for stream in silent + [third]:
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert "2 handshakes already pending" in log_text(peer_log)


def test_application_can_wait_for_the_next_session_and_closes_cleanly():
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            await start_alice(nursery, alice, port)
            with trio.fail_after(5):
                first = await alice.connector.wait_session()
            assert first.epoch == 1 and first is alice.connector.session
            await first.aclose()  # an authenticated CLOSE: bob sees a clean end, both come back
            with trio.fail_after(5):
                second = await alice.connector.wait_session(after_epoch=1)
            assert second.epoch == 2
            with pytest.raises(SessionClosedError):
                await first.send(1, b"late")
            with pytest.raises(ValueError, match="exceeds the record cap"):
                await second.send(1, bytes(second.max_payload_bytes + 1))
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_after_a_clean_close_a_slow_handler_still_gets_every_message_sent_before_it():
    from qkdd.peer import PeerConnector

    async def main():
        received, ends = [], []

        async def slow_handler(session):
            try:
                while True:
                    channel, payload = await session.receive()
                    await trio.sleep(0.005)  # the application takes its time with each message
                    received.append((session.epoch, payload))
            except SessionClosedError:
                ends.append(session.epoch)
                raise

        async with trio.open_nursery() as nursery:
            bob = PeerConnector(fast_settings(listen=("127.0.0.1", 0)), BOB, ALICE.public_key(), slow_handler)
            port = await nursery.start(bob.run)
            alice = Endpoint()
            await start_alice(nursery, alice, port)
            session = await alice.next_session()
            for i in range(40):
                await session.send(4, b"last words %d" % i)
            await session.aclose()
            with trio.fail_after(5):
                await bob.wait_session(after_epoch=1)
            assert received == [(1, b"last words %d" % i) for i in range(40)] and ends == [1]
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_concurrent_senders_keep_their_own_order():
    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            await start_alice(nursery, alice, port)
            session = await alice.next_session()

            async def sender(channel):
                for i in range(30):
                    await session.send(channel, b"%d" % i)

            async with trio.open_nursery() as senders:
                for channel in range(4):
                    senders.start_soon(sender, channel)
            got = [await bob.next_message() for _ in range(120)]
            for channel in range(4):
                assert [p for _, c, p in got if c == channel] == [b"%d" % i for i in range(30)]
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_dialer_process_killed_with_sigkill_is_replaced_by_its_restart(peer_log, tmp_path):
    """A real second process dials with its identity files; kill -9 it mid-session and start it again:
    the listener notices, and the restarted process gets a new session with no manual step."""
    import os
    import signal
    import sys
    from functools import partial
    from pathlib import Path

    from qkdd.peer import save_private_key, save_public_key

    save_private_key(ALICE, tmp_path / "alice.key")
    save_public_key(BOB.public_key(), tmp_path / "bob.pub")
    script = Path(__file__).with_name("peer_dialer_process.py")

    async def main():
        async with trio.open_nursery() as nursery:
            bob = Endpoint()
            port = await bob.start(nursery, fast_settings(listen=("127.0.0.1", 0)), BOB, ALICE.public_key())
            command = [sys.executable, str(script), str(port), str(tmp_path / "alice.key"),
                       str(tmp_path / "bob.pub")]
            for round_number in (1, 2):
                process = await nursery.start(partial(trio.run_process, command, check=False))
                session = await bob.next_session()
                assert session.epoch == round_number
                assert await bob.next_message() == (round_number, 1, b"hello from pid %d" % process.pid)
                await session.send(3, b"echo %d" % round_number)
                assert await bob.next_message() == (round_number, 3, b"echo %d" % round_number)
                os.kill(process.pid, signal.SIGKILL)
                with trio.fail_after(10):
                    await process.wait()
                    await session.ended.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "torn down" in log_text(peer_log)


@pytest.mark.skipif(not retransmission_cap_supported(), reason="this kernel has no TCP_RTO_MAX_MS (Linux >= 6.15)")
def test_both_ends_cap_tcps_retransmission_timeout_at_one_second(peer_log):
    """After a short partition the session's next retransmission comes within 1 s of the path's return
    (tests/test_chaos_netns.py measures the partitions themselves)."""

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, port = await start_pair(nursery)
            await start_alice(nursery, alice, port)
            await alice.next_session(), await bob.next_session()
            await exchange(alice, bob, b"rto")
            for end in (alice, bob):
                tcp = end.connector.session._stream.transport_stream.socket     # the session's own socket
                assert tcp.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS) == RTO_CEILING_MS
            nursery.cancel_scope.cancel()

    trio.run(main)
