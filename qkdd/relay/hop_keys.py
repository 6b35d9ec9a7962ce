"""Key-store work of relay hops: the link keys a hop takes (by id from the sender's share, or from this
end's own share), and the batches that run the work of concurrent requests in one worker-thread call
and one transaction."""
from __future__ import annotations

import math

import trio

from qkdd.keystore import KeyState, KeyStoreError, StoredKey

HOLDER_PREFIX = "relay:"


class StoreBatches:
    """Key-store work of the relay requests under way, run together: whatever queued while the previous
    batch ran goes to one worker thread in one transaction (one fsync; each job a savepoint of it), so a
    busy relay pays one thread hand-off and one flush per burst, not per request."""

    def __init__(self, store) -> None:
        self.store = store
        self._send, self._receive = trio.open_memory_channel(math.inf)

    async def call(self, job, *args):
        """job(*args) in the next batch; its result, or its exception raised here."""
        done, box = trio.Event(), {}
        self._send.send_nowait((job, args, box, done))
        await done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]

    async def run(self) -> None:
        while True:
            jobs = [await self._receive.receive()]
            while True:
                try:
                    jobs.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await trio.to_thread.run_sync(self._run, jobs)
            except KeyStoreError as exc:             # the batch's commit failed: none of it happened
                for _, _, box, _ in jobs:
                    box.pop("result", None)
                    box["error"] = exc
            for _, _, _, done in jobs:
                done.set()

    def _run(self, jobs) -> None:
        with self.store.batch():
            for job, args, box, _ in jobs:
                try:
                    box["result"] = job(*args)
                except Exception as exc:           # noqa: BLE001 - handed to the job's caller
                    box["error"] = exc


def take_hop_keys(store, up_link: str, key_ids: tuple[str, ...], relay_id: str, down_link: str | None,
                   bits: int) -> tuple[list[StoredKey], list[StoredKey] | None]:
    """Blocking. The upstream keys by id (all or none), then at a relay `bits` of this end's share of
    `down_link`: (upstream keys, downstream keys or None)."""
    upstream = _take_by_id(store, up_link, key_ids, relay_id)
    return upstream, (store.take_bits(down_link, bits) if down_link is not None else None)


def _take_by_id(store, link_id: str, key_ids: tuple[str, ...], relay_id: str) -> list[StoredKey]:
    """Take (deliver and erase) the named keys of the other end's share of `link_id`, in order, all or none."""
    holder = f"{HOLDER_PREFIX}{relay_id}"
    with store.batch():
        try:
            store.reserve_ids(link_id, list(key_ids), holder, peer_share_only=True)
        except KeyStoreError:
            # a key still pending here: the sender holds it available, so its frame committed there
            pending = [k for k in key_ids if store.state(link_id, k) is KeyState.PENDING]
            if not pending:
                raise
            store.apply_resync(link_id, pending, [], [])
            store.reserve_ids(link_id, list(key_ids), holder, peer_share_only=True)
        return [store.deliver(link_id, key_id, holder=holder) for key_id in key_ids]


def erase_sent_keys(store, link_id: str, key_ids: tuple[str, ...], relay_id: str) -> int:
    """Blocking. The keys the other end took and erased for a hop whose FORWARD never got here (it was
    lost when a node died): each one of its share still held here is taken and erased as the FORWARD would
    have; the others (taken already, or not its share) stay as they are. Returns how many went."""
    erased = 0
    for key_id in key_ids:
        try:
            _take_by_id(store, link_id, (key_id,), relay_id)
            erased += 1
        except KeyStoreError:
            pass
    return erased
