"""The key-store resynchronisation at each session start, over the link's inventory channel: both ends
exchange their resynchronisation points, then summaries of the frames changed since (of every frame when
the points disagree), then list key by key only the frames the summaries cannot settle, and apply the same
plan (qkdd.keystore.resync), so no frame of an earlier session stays half stored at one end only."""
from __future__ import annotations

import logging

import trio

from qkdd.keystore import KeyStore, KeyStoreError
from qkdd.keystore.resync import (HelloAssembler, InventoryAssembler, SummaryAssembler, encode_hello,
                                  encode_inventory, encode_summaries, frames_to_list, plan_resync, resync_scope)
from qkdd.peer import MuxStream, PeerError

log = logging.getLogger("qkdd.link")


# A message of the peer this small is parsed on the event loop (~1 ms: about 1 000 inventory entries); larger
# ones in a worker thread. After a restart the messages are a few dozen bytes, and on a loaded host each trip
# to a worker thread and back cost 0.1-0.3 s of waiting for a CPU (chaos lab, kill -9 loops).
INLINE_PARSE_BYTES = 16 * 1024


async def resynchronise(link_id: str, store: KeyStore, stream: MuxStream) -> None:
    """Exchange resynchronisation points, frame summaries, then the inventories of the frames they leave
    open, and apply the plan; PeerError when the exchange fails. Each step's store query and the encoding
    of its message share one worker thread, and the plan is made and applied in one."""
    max_bytes = stream.session.max_payload_bytes

    def read_point():
        point = store.resync_point(link_id)
        return point, _encoded(lambda: encode_hello(link_id, point, max_bytes), "resynchronisation point")

    point, hello = await trio.to_thread.run_sync(read_point)
    peer = (await _exchange(stream, hello, HelloAssembler(link_id), "resynchronisation point")).point
    scope = resync_scope(point, peer)                         # None: every frame

    def read_summaries():
        summaries = store.frame_summaries(link_id, scope)
        return summaries, _encoded(lambda: encode_summaries(link_id, summaries, max_bytes), "frame summary")

    summaries, messages = await trio.to_thread.run_sync(read_summaries)
    remote_summaries = (await _exchange(stream, messages, SummaryAssembler(link_id), "frame summary")).summaries
    frames = frames_to_list(summaries, remote_summaries)        # the same frames at both ends

    def read_inventory():
        local = store.inventory(link_id, frames)
        return local, _encoded(lambda: encode_inventory(link_id, local, max_bytes), "key inventory")

    local, messages = await trio.to_thread.run_sync(read_inventory)
    remote = (await _exchange(stream, messages, InventoryAssembler(link_id), "key inventory")).inventory

    def plan_and_apply():
        # O(N) in the keys listed: off the event loop, as reading and encoding them are
        plan = plan_resync(local, remote)
        store.apply_resync(link_id, plan.promote, plan.discard, plan.expire, peer=peer, scope=scope)
        return plan

    plan = await trio.to_thread.run_sync(plan_and_apply)
    log.info("link %s: key store resynchronised", link_id,
             extra={"scope": "every frame" if scope is None else "frames changed",
                    "frames": len(summaries), "frames_listed": len(frames), "keys_listed": len(local),
                    "promoted": len(plan.promote), "discarded": len(plan.discard), "expired": len(plan.expire)})


def _encoded(encode, what: str) -> list[bytes]:
    """This end's messages; a store that cannot give them is the peer exchange's failure (PeerError)."""
    try:
        return encode()
    except KeyStoreError as exc:
        raise PeerError(f"cannot send this end's {what}: {exc}") from None


async def _exchange(stream: MuxStream, messages: list[bytes], assembler, what: str):
    """Send this end's messages while reading the peer's into `assembler` (two large exchanges must not
    wait on each other); the assembler once complete."""
    failures: list[PeerError] = []
    async with trio.open_nursery() as nursery:
        async def guarded(step) -> None:          # the first failure ends both, re-raised below as is
            try:
                await step()
            except PeerError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
        nursery.start_soon(guarded, lambda: stream.send_many(messages))
        await guarded(lambda: _receive(stream, assembler, what))
    if failures:
        raise failures[0]
    return assembler


async def _receive(stream: MuxStream, assembler, what: str) -> None:
    while not assembler.complete:
        payload = await stream.receive()
        try:
            if len(payload) <= INLINE_PARSE_BYTES:
                assembler.add(payload)
            else:
                await trio.to_thread.run_sync(assembler.add, payload)    # up to millions of entries a message
        except KeyStoreError as exc:
            raise PeerError(f"peer {what} refused: {exc}") from None
