"""The fallback policy every consumer shares (qkdd.consumers.rotation): when one end dies (its tasks
cancelled with no clean-up and its session cut, as kill -9 does), the survivor keeps the last key past its
expiry instead of falling back alone; the dead end, restarted from its state file past the expiry, applies
the fallback at once (never re-installs the expired key) and the survivor follows once they meet. Real
SQLite key stores, the real reservation service over an in-memory session."""
from __future__ import annotations

import os
import time
import uuid

import pytest
import trio

from qkdd.consumers.rotation import EpochChannel, KeyRotation
from qkdd.consumers.wg_epoch import consumer_tag
from qkdd.keystore import KeyStore
from qkdd.metrics import Metrics
from tests.consumer_support import RecordingSink, RotationPolicy
from tests.reservation_support import memory_session, reservation_service

LINK_ID = RotationPolicy.link_id
NAME = RotationPolicy.name


class _ShortPolicy(RotationPolicy):
    expiry_s = 1.5


@pytest.mark.parametrize("dead", ["alice", "bob"])
def test_a_survivor_keeps_the_last_key_past_expiry_until_the_dead_end_returns(tmp_path, dead):
    """One key only: epoch 1 is installed at both ends, then one end dies. Past expiry the survivor keeps
    the key (a one-sided fallback would leave the ends with different keys); the dead end restarts from its
    state file, the ends meet, and both apply the "clear" fallback together."""
    run_kill_past_expiry(tmp_path, dead, fresh_key=False)


def test_a_survivor_kept_past_expiry_takes_the_fresh_key_of_the_returning_leader(tmp_path):
    """A second key waits in the stores: alice, the leader, dies past expiry; restarted, she falls back at once
    and proposes the fresh key as soon as the ends meet. Bob, who kept the expired key, installs it (whether
    or not his own fallback came first) and no longer reports a key kept past its expiry."""
    run_kill_past_expiry(tmp_path, "alice", fresh_key=True)


def run_kill_past_expiry(tmp_path, dead: str, *, fresh_key: bool) -> None:
    keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2 if fresh_key else 1)]
    key_id, material = keys[0]
    stores, sinks = {}, {}
    for role in ("alice", "bob"):
        (tmp_path / role).mkdir()
        stores[role] = KeyStore(str(tmp_path / role / "keys.sqlite3"), os.urandom(32))
        stores[role].put_pending(LINK_ID, 1, keys, expires_at=time.time() + 3600,
                                 allocatable=[role == "alice"] * len(keys))
        stores[role].commit_frame(LINK_ID, 1)
        sinks[role] = RecordingSink(role)

    def rotation(role: str) -> KeyRotation:
        return KeyRotation(_ShortPolicy("none"), kind="kms", tag=consumer_tag("kms", NAME), leader=role == "alice",
                           sink=sinks[role], store=stores[role], metrics=Metrics().consumer("kms", NAME),
                           state_dir=str(tmp_path / role), rotation_interval_s=3600)

    async def until(predicate, timeout_s=60.0):          # an upper bound for a loaded machine
        with trio.fail_after(timeout_s):
            while not predicate():
                await trio.sleep(0.05)

    async def session(nursery, rotations):
        a_stream, b_stream = memory_session()
        for role, stream in (("alice", a_stream), ("bob", b_stream)):
            service, serve = reservation_service(LINK_ID)
            EpochChannel([rotations[role]]).attach_to(service)
            nursery.start_soon(serve, stream)
        return a_stream, b_stream

    async def main():
        rotations = {role: rotation(role) for role in ("alice", "bob")}
        async with trio.open_nursery() as outer:
            scopes = {}
            for role in ("alice", "bob"):
                scopes[role] = trio.CancelScope()

                async def run(role=role):
                    with scopes[role]:
                        await rotations[role].run()
                outer.start_soon(run)
            session_scope = trio.CancelScope()

            async def serve_session():
                with session_scope:
                    async with trio.open_nursery() as nursery:
                        await session(nursery, rotations)
                        await trio.sleep_forever()
            outer.start_soon(serve_session)
            await until(lambda: all(len(sinks[role].installed) == 1 for role in sinks))
            scopes[dead].cancel()                            # the end dies: no clean-up runs ...
            session_scope.cancel()                           # ... and its session ends with it
            survivor = "bob" if dead == "alice" else "alice"
            await trio.sleep(_ShortPolicy.expiry_s + 2 * 1.0)     # past expiry, a few monitor rounds
            assert sinks[survivor].installed == [(1, key_id, material)]     # no one-sided fallback
            assert rotations[survivor].status()["kept_past_expiry"] is True
            # the dead end restarts from its state file; the ends meet and fall back together
            rotations[dead] = await KeyRotation.open(
                _ShortPolicy("none"), kind="kms", tag=consumer_tag("kms", NAME), leader=dead == "alice",
                sink=sinks[dead], store=stores[dead], metrics=Metrics().consumer("kms", NAME),
                state_dir=str(tmp_path / dead), rotation_interval_s=3600)
            assert rotations[dead].state.epoch.key_id == key_id
            outer.start_soon(rotations[dead].run)
            # set at the end of each end's next install (state saved, the previous key erased)
            installed = [rotations[role].installed for role in ("alice", "bob")]
            async with trio.open_nursery() as nursery:
                await session(nursery, rotations)
                if fresh_key:
                    with trio.fail_after(60):
                        for event in installed:
                            await event.wait()
                else:
                    await until(lambda: all(sinks[role].installed[-1][:2] == (0, "clear") for role in sinks))
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
            # the restarted end never re-installed the expired key: it fell back at once, from its state file
            assert sinks[dead].installed[:2] == [(1, key_id, material), (0, "clear", b"")]
            if fresh_key:
                fresh = (2, *keys[1])
                assert sinks[dead].installed == [(1, key_id, material), (0, "clear", b""), fresh]
                assert sinks[survivor].installed in ([(1, key_id, material), fresh],
                                                     [(1, key_id, material), (0, "clear", b""), fresh])
                assert rotations[survivor].status()["kept_past_expiry"] is False
            else:
                assert sinks[dead].installed == [(1, key_id, material), (0, "clear", b"")]
                assert sinks[survivor].installed == [(1, key_id, material), (0, "clear", b"")]

    trio.run(main)
    for role in ("alice", "bob"):
        assert stores[role].state(LINK_ID, key_id).value == "delivered"      # the expired key is erased
