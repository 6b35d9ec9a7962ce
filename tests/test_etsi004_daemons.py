"""Two real `qkdd run` daemons on a simulated link (Alice and Bob, keys flowing within seconds) with
`[etsi004]` and `[skip]`: 004 streams opened at both ends deliver equal chunks at equal indexes, a kill -9
of one end mid-stream loses no chunk the other end served, and a router's SKIP key at one end is the same
key by id at the other."""
from __future__ import annotations

import uuid

import pytest
import trio

from qkdd.etsi004.wire import GetKey, OpenConnect, Status
from tests.apps_pair import AppPair
from tests.etsi004_support import ROUTERS, Client004, qos, skip_get

pytestmark = pytest.mark.slow
FIRST_KEY_WAIT_MS = 60_000           # the first chunk waits for the link's first frame


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One pair for the module (starting two daemons and their link is most of each test's time); the 004
    test leaves both running again after its kill -9 and restart."""
    pair = AppPair(tmp_path_factory.mktemp("pair"))
    pair.start("kme-a")
    pair.start("kme-b")
    pair.wait_link("kme-a")
    pair.wait_link("kme-b")
    yield pair
    pair.stop_all()


async def fetch(client: Client004, ksid: str, index: int) -> bytes:
    response = await client.call(GetKey(ksid, index, 1024))
    assert response.status is Status.SUCCESSFUL, (index, response.status)
    return response.key


def test_004_daemons_agree_on_chunks_and_a_killed_end_loses_none_the_other_served(pair):
    ksid = str(uuid.uuid4())
    wait_qos = qos(32, timeout_ms=FIRST_KEY_WAIT_MS)

    async def first_part():
        served = {"kme-a": {}, "kme-b": {}}
        async with pair.client("kme-a", "app-a") as a, pair.client("kme-b", "app-b") as b:
            for name, client in (("kme-a", a), ("kme-b", b)):
                opened = await client.call(OpenConnect("app://x", "app://y", wait_qos, ksid))
                assert opened.status is Status.SUCCESSFUL
            for index in range(6):                # each end asks first for every other index
                first, second = (a, b) if index % 2 else (b, a)
                served["kme-a" if first is a else "kme-b"][index] = await fetch(first, ksid, index)
            for index in range(6):                # A catches up on B's first three... and B on A's, but not all
                if index not in served["kme-a"] and index < 3:
                    served["kme-a"][index] = await fetch(a, ksid, index)
                if index not in served["kme-b"]:
                    served["kme-b"][index] = await fetch(b, ksid, index)
        return served

    served = trio.run(first_part)
    # B served all six; A served 1, 3, 5 and 0, 2: then B is killed mid-stream
    pair.daemons["kme-b"].kill()

    async def after_kill():
        async with pair.client("kme-a", "app-a") as a:
            await a.call(OpenConnect("app://x", "app://y", wait_qos, ksid))
            return await fetch(a, ksid, 4)       # B served it before it died: A's copy is its twin
    assert trio.run(after_kill) == served["kme-b"][4]
    for index, chunk in served["kme-a"].items():
        assert served["kme-b"][index] == chunk
    assert len(set(served["kme-b"].values())) == 6

    pair.start("kme-b")
    pair.wait_link("kme-b")

    async def after_restart():
        async with pair.client("kme-a", "app-a") as a, pair.client("kme-b", "app-b") as b:
            for client in (a, b):
                opened = await client.call(OpenConnect("app://x", "app://y", wait_qos, ksid))
                assert opened.status is Status.SUCCESSFUL
            assert (await b.call(GetKey(ksid, 0, 1024))).status is Status.INSUFFICIENT_KEY   # served before
            assert await fetch(b, ksid, 6) == await fetch(a, ksid, 6)
    trio.run(after_restart)


def test_skip_daemons_a_routers_key_at_one_end_is_the_other_routers_by_id(pair):
    async def main():
        a, b = pair.skip_address("kme-a"), pair.skip_address("kme-b")
        with trio.fail_after(90):
            while True:                   # the link's first keys take a few seconds
                status, key = await skip_get(a, *ROUTERS["a"], "/key?remoteSystemID=KP_Bob&size=256")
                if status == 200:
                    break
                assert status == 503, key
                await trio.sleep(0.5)
        status, same = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID=KP_Alice")
        assert status == 200 and same == key
        status, _ = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID=KP_Alice")
        assert status == 404
        with pytest.raises(trio.BrokenResourceError):
            await skip_get(b, *ROUTERS["a"], "/capabilities")     # router A's PSK is not known at B
    trio.run(main)
