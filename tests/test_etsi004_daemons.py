"""Two real `qkdd run` daemons on a simulated link (Alice and Bob, keys flowing within seconds) with
`[etsi004]` and `[skip]`: 004 streams opened at both ends deliver equal chunks at equal indexes, a kill -9
of one end mid-stream loses no chunk the other end served, and a router's SKIP key at one end is the same
key by id at the other."""
from __future__ import annotations

import shutil
import subprocess
import uuid

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from qkdd.etsi004.wire import Close, GetKey, OpenConnect, Status
from tests.apps_pair import AppPair
from tests.etsi004_support import ROUTERS, Client004, qos, skip_get
from tests.seed_metrics import ACCEPTED_LINT

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


def _scrape(pair, name: str) -> tuple[str, dict]:
    text = httpx.get(f"{pair.daemons[name].health_url}/metrics", timeout=10).text
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}
    return text, samples


def test_004_and_skip_daemons_export_their_metrics_and_promtool_accepts_them(pair):
    """After the tests above (module order): one more stream at A, opened, one chunk, an unknown KSID and
    CLOSE, counted exactly; SKIP's counts at B (one key by id, one 404); promtool accepts the scrape."""
    link = (("link_id", "a-b"),)
    before = _scrape(pair, "kme-a")[1]
    ksid = str(uuid.uuid4())

    async def one_stream():
        async with pair.client("kme-a", "app-a") as a:
            assert (await a.call(OpenConnect("app://x", "app://y", qos(32, timeout_ms=FIRST_KEY_WAIT_MS), ksid))
                    ).status is Status.SUCCESSFUL
            await fetch(a, ksid, 0)
            assert (await a.call(GetKey(str(uuid.uuid4()), 0, 1024))).status is Status.NO_QKD_CONNECTION
            assert (await a.call(Close(ksid))).status is Status.SUCCESSFUL
    trio.run(one_stream)
    text, after = _scrape(pair, "kme-a")

    def delta(name: str, labels=link) -> float:
        return after[(name, labels)] - before[(name, labels)]
    assert delta("qkd_etsi004_chunks_total") == 1 and delta("qkd_etsi004_key_bytes_total") == 32
    assert delta("qkd_etsi004_get_key_wait_seconds_count") == 1
    assert delta("qkd_etsi004_refusals_total", link + (("status", "no_qkd_connection"),)) == 1
    assert after[("qkd_etsi004_streams", link)] == before[("qkd_etsi004_streams", link)]
    assert ksid not in text and ksid.replace("-", "") not in text
    _, at_b = _scrape(pair, "kme-b")
    assert at_b[("qkd_skip_keys_total", link + (("request", "by_id"),))] == 1
    assert at_b[("qkd_skip_key_bytes_total", link)] == 32
    assert at_b[("qkd_skip_refusals_total", (("code", "404"),))] == 1
    assert after[("qkd_skip_keys_total", link + (("request", "new"),))] >= 1
    new_keys = after[("qkd_skip_keys_total", link + (("request", "new"),))]
    assert after[("qkd_skip_key_wait_seconds_count", link)] == new_keys
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: scripts/bootstrap-system.sh installs the Debian package prometheus")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    findings = {line.strip() for line in (check.stdout + check.stderr).splitlines() if line.strip()}
    assert check.returncode in (0, 3) and findings <= ACCEPTED_LINT, findings
