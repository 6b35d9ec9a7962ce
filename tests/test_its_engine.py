"""Two link engines with auth "its" over real parts (TLS peer channel, sim devices over TCP, SQLite key stores
and authentication pools): identical keys, equal pools, metrics; and a pool that runs dry halts the link
(DEGRADED) without touching a stored key."""
import trio

from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool
from qkdd.auth.wegman_carter import CHUNKS_PER_FRAME
from qkdd.keystore import KeyState
from qkdd.link.pipeline import PipelineSettings
from qkdd.link_channel import PIPELINE_CHANNEL
from qkdd.metrics import Metrics
from tests.test_link_engine import LINK, start_pair, wait_for

KEK = bytes(32)


def pools_for(tmp_path, chunks, metrics=None):
    secret = auth_secret.generate(LINK, 128 * chunks)
    pools = {}
    for role in ("alice", "bob"):
        pools[role] = AuthPool(str(tmp_path / f"pool-{role}.sqlite3"), KEK, LINK,
                               metrics=metrics.link(LINK) if role == "alice" and metrics else None)
        pools[role].seed(secret)
    return pools


def test_its_engines_store_the_same_keys_and_keep_their_pools_equal(tmp_path):
    metrics = Metrics()
    pools = pools_for(tmp_path, 30, metrics)
    settings = PipelineSettings(auth="its", auth_refill_bits=1024)

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, _, stores = await start_pair(
                nursery, tmp_path, engine_options=lambda role: dict(settings=settings, auth_pool=pools[role]),
                transcript_channels=frozenset({PIPELINE_CHANNEL}))     # as the daemon runs auth "its"
            await wait_for(lambda: alice.status.frames_done >= 2 and bob.status.frames_done >= 2)
            nursery.cancel_scope.cancel()
        return stores

    stores = trio.run(main)
    a_inv, b_inv = stores["alice"].inventory(LINK), stores["bob"].inventory(LINK)
    committed = [k for k, s in a_inv.items() if s is KeyState.AVAILABLE]
    assert len(committed) >= 10
    for key_id in committed[:10]:
        if b_inv.get(key_id) is KeyState.AVAILABLE:
            assert stores["alice"].peek(LINK, key_id).material == stores["bob"].peek(LINK, key_id).material
    # frames cut short by the cancellation may leave Bob a few chunks Alice never names; never the reverse
    assert set(pools["alice"].positions()) <= set(pools["bob"].positions())
    assert pools["alice"].consumed_bits >= 2 * 128 * CHUNKS_PER_FRAME
    text = metrics.exposition().decode()
    assert f'qkd_auth_pool_bits{{link_id="{LINK}"}} {float(pools["alice"].bits)}' in text
    assert f'qkd_auth_key_bits_consumed_total{{link_id="{LINK}"}} {float(pools["alice"].consumed_bits)}' in text


def test_a_dry_pool_halts_the_link_degraded(tmp_path):
    pools = pools_for(tmp_path, 2 * CHUNKS_PER_FRAME)        # two frames' worth, no refill
    settings = PipelineSettings(auth="its", auth_refill_bits=0)

    async def main():
        async with trio.open_nursery() as nursery:
            alice, bob, _, stores = await start_pair(
                nursery, tmp_path, engine_options=lambda role: dict(settings=settings, auth_pool=pools[role]),
                transcript_channels=frozenset({PIPELINE_CHANNEL}))     # as the daemon runs auth "its"
            await wait_for(lambda: bob.status.auth_halted and alice.status.auth_halted)
            await wait_for(lambda: not bob.engine._inboxes)   # the frames already in flight have ended
            keys = len(stores["alice"].inventory(LINK))
            done = bob.status.frames_done
            await trio.sleep(1.0)                           # no frame starts once halted
            assert bob.status.frames_done == done
            assert alice.status.state == bob.status.state == "degraded"
            assert len(stores["alice"].inventory(LINK)) == keys
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert pools["alice"].chunks < CHUNKS_PER_FRAME
