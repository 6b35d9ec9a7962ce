"""ETSI GS QKD 004 key streams between two ends of a link (tests/etsi004_support.py): real key stores, the
real reservation exchange, real TLS listeners with client certificates and real TLS clients."""
from __future__ import annotations

import json
import uuid

import pytest
import trio

from qkdd.etsi004.wire import NIL_KSID, Close, GetKey, OpenConnect, Status
from tests.etsi004_support import Client004, make_pki, qos, two_ends


def run(test, *args):
    trio.run(test, *args)


async def open_both(ends, pki, ksid, q):
    clients = {}
    for name, app in (("a", "app-a"), ("b", "app-b")):
        client = Client004(pki, app, f"kme-{name}", ends[name].address)
        await client.__aenter__()
        response = await client.call(OpenConnect(f"app://{app}", "app://peer", q, ksid))
        assert response.status is Status.SUCCESSFUL, response
        assert response.key_stream_id == ksid
        clients[name] = client
    return clients


def test_004_streams_at_both_ends_deliver_equal_chunks_at_equal_indexes(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki) as ends:
            ksid = str(uuid.uuid4())
            clients = await open_both(ends, pki, ksid, qos(48))
            chunks = {"a": {}, "b": {}}
            # both ends ask for the same indexes at once, in opposite orders: both assign, one wins each
            async def fetch(name, indexes):
                for index in indexes:
                    response = await clients[name].call(GetKey(ksid, index, 1024))
                    assert response.status is Status.SUCCESSFUL, (name, index, response.status)
                    assert response.index == index and len(response.key) == 48
                    meta = json.loads(response.metadata)
                    assert meta["index"] == index and meta["key_stream_id"] == ksid
                    chunks[name][index] = response.key
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, "a", range(12))
                nursery.start_soon(fetch, "b", reversed(range(12)))
            assert chunks["a"] == chunks["b"]
            assert len(set(chunks["a"].values())) == 12          # every chunk its own key material
            # a chunk is handed out once per end
            again = await clients["a"].call(GetKey(ksid, 3, 1024))
            assert again.status is Status.INSUFFICIENT_KEY
            for client in clients.values():
                assert (await client.call(Close(ksid))).status is Status.SUCCESSFUL
                await client.__aexit__()
    run(main)


def test_004_open_assigns_a_ksid_and_refuses_one_in_use_by_another_client(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki) as ends:
            async with Client004(pki, "app-a", "kme-a", ends["a"].address) as first, \
                    Client004(pki, "app-c", "kme-a", ends["a"].address) as other:
                opened = await first.call(OpenConnect("app://a", "app://b", qos(), NIL_KSID))
                assert opened.status is Status.SUCCESSFUL
                ksid = opened.key_stream_id
                assert ksid != NIL_KSID and uuid.UUID(ksid).version == 4
                taken = await other.call(OpenConnect("app://c", "app://b", qos(), ksid))
                assert taken.status is Status.KSID_IN_USE
                # the owner may OPEN again: the QoS first granted comes back (clause 6.1)
                again = await first.call(OpenConnect("app://a", "app://b", qos(64), ksid))
                assert again.status is Status.SUCCESSFUL and again.qos.key_chunk_size == 32
                # another client cannot read or close the stream
                assert (await other.call(GetKey(ksid, 0, 1024))).status is Status.NO_QKD_CONNECTION
                assert (await other.call(Close(ksid))).status is Status.NO_QKD_CONNECTION
    run(main)


def test_004_close_then_reopen_continues_the_stream(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki) as ends:
            ksid = str(uuid.uuid4())
            clients = await open_both(ends, pki, ksid, qos())
            first = (await clients["a"].call(GetKey(ksid, 0, 1024))).key
            assert (await clients["a"].call(Close(ksid))).status is Status.SUCCESSFUL
            assert (await clients["a"].call(GetKey(ksid, 1, 1024))).status is Status.NO_QKD_CONNECTION
            reopened = await clients["a"].call(OpenConnect("app://a", "app://b", qos(), ksid))
            assert reopened.status is Status.SUCCESSFUL
            assert (await clients["a"].call(GetKey(ksid, 0, 1024))).status is Status.INSUFFICIENT_KEY
            second = (await clients["a"].call(GetKey(ksid, 1, 1024))).key
            assert (await clients["b"].call(GetKey(ksid, 0, 1024))).key == first
            assert (await clients["b"].call(GetKey(ksid, 1, 1024))).key == second
    run(main)


def test_004_min_bps_above_the_link_capacity_is_refused_with_a_counter_proposal(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki, capacity_bps=5000) as ends:
            async with Client004(pki, "app-a", "kme-a", ends["a"].address) as client:
                ksid = str(uuid.uuid4())
                refused = await client.call(OpenConnect("app://a", "app://b", qos(min_bps=8000), ksid))
                assert refused.status is Status.QOS_NOT_MET
                assert refused.qos.min_bps == 5000
                assert (await client.call(GetKey(ksid, 0, 1024))).status is Status.NO_QKD_CONNECTION
                odd = await client.call(OpenConnect("app://a", "app://b", qos(mimetype="text/x-odd"), ksid))
                assert odd.status is Status.QOS_NOT_MET and odd.qos.metadata_mimetype == "application/json"
                accepted = await client.call(OpenConnect("app://a", "app://b", qos(min_bps=5000), ksid))
                assert accepted.status is Status.SUCCESSFUL
    run(main)


def test_004_get_key_times_out_when_the_peer_application_never_gets_keys(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki, keys=2) as ends:
            first, short = str(uuid.uuid4()), str(uuid.uuid4())
            async with Client004(pki, "app-a", "kme-a", ends["a"].address) as client:
                await client.call(OpenConnect("app://a", "app://b", qos(32), first))
                assert (await client.call(GetKey(first, 0, 1024))).status is Status.SUCCESSFUL
                # end A's share (one key) is spent: a chunk of a stream with a short timeout waits for
                # keys, then TIMEOUT_ERROR
                await client.call(OpenConnect("app://a", "app://b", qos(32, timeout_ms=300), short))
                started = trio.current_time()
                assert (await client.call(GetKey(short, 0, 1024))).status is Status.TIMEOUT
                assert trio.current_time() - started >= 0.3
                assert (await client.call(GetKey(short, 1, 2))).status is Status.METADATA_SIZE_INSUFFICIENT
    run(main)


def test_004_rejects_clients_without_a_certificate_and_malformed_frames(tmp_path):
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki) as ends:
            with pytest.raises((trio.BrokenResourceError, EOFError)):
                async with Client004(pki, None, "kme-a", ends["a"].address) as anonymous:
                    await anonymous.call(OpenConnect("app://x", "app://b", qos(), NIL_KSID))
            async with Client004(pki, "app-a", "kme-a", ends["a"].address) as client:
                await client.stream.send_all(b"\x01\x00\x01\x04\xff\xff\xff\xff")     # a 4 GiB payload
                try:
                    ended = await client.stream.receive_some(100) == b""
                except trio.BrokenResourceError:        # closed without a TLS close_notify
                    ended = True
                assert ended
    run(main)


def test_004_both_ends_racing_on_many_streams_never_hand_out_different_chunks(tmp_path):
    """Both applications of each stream ask for every index at nearly the same moment (each end assigns,
    the roles decide), on several streams at once: every index's two chunks are equal, and no key serves
    two chunks."""
    async def main():
        pki = make_pki(tmp_path)
        async with two_ends(tmp_path, pki=pki, keys=1000) as ends:
            results = []

            async def stream_pair(seed: int):
                ksid = str(uuid.uuid4())
                clients = await open_both(ends, pki, ksid, qos(32))
                got = {"a": {}, "b": {}}

                async def fetch(name, index, delay_s):
                    await trio.sleep(delay_s)
                    response = await clients[name].call(GetKey(ksid, index, 1024))
                    assert response.status is Status.SUCCESSFUL, (name, index, response.status)
                    got[name][index] = response.key
                for index in range(20):
                    async with trio.open_nursery() as nursery:
                        skew = ((seed * 7 + index * 3) % 5) / 1000       # 0..4 ms, either end first
                        nursery.start_soon(fetch, "a", index, skew if index % 2 else 0)
                        nursery.start_soon(fetch, "b", index, 0 if index % 2 else skew)
                results.append(got)
                for client in clients.values():
                    await client.__aexit__()
            async with trio.open_nursery() as nursery:
                for seed in range(6):
                    nursery.start_soon(stream_pair, seed)
            chunks = [chunk for got in results for chunk in got["a"].values()]
            assert all(got["a"] == got["b"] for got in results)
            assert len(set(chunks)) == len(chunks) == 120
    run(main)
