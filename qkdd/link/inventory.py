"""The key-store resynchronisation at each session start, over the link's inventory channel: both ends
send their inventory while reading the other's, then apply the same plan (qkdd.keystore.resync), so no
frame of an earlier session stays half stored at one end only."""
from __future__ import annotations

import logging

import trio

from qkdd.keystore import KeyStore, KeyStoreError
from qkdd.keystore.resync import InventoryAssembler, encode_inventory, plan_resync
from qkdd.peer import MuxStream, PeerError

log = logging.getLogger("qkdd.link")


async def resynchronise(link_id: str, store: KeyStore, stream: MuxStream) -> None:
    """Exchange inventories with the peer and apply the plan; PeerError when the exchange fails."""
    local = await trio.to_thread.run_sync(store.inventory, link_id)
    try:
        messages = await trio.to_thread.run_sync(encode_inventory, link_id, local, stream.session.max_payload_bytes)
    except KeyStoreError as exc:
        raise PeerError(f"cannot send this end's key inventory: {exc}") from None
    assembler = InventoryAssembler(link_id)
    failures: list[PeerError] = []
    async with trio.open_nursery() as nursery:
        async def guarded(step) -> None:          # the first failure ends both, re-raised below as is
            try:
                await step()
            except PeerError as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
        # sent while the peer's messages are read: two large inventories must not wait on each other
        nursery.start_soon(guarded, lambda: stream.send_many(messages))
        await guarded(lambda: _receive_inventory(stream, assembler))
    if failures:
        raise failures[0]
    # O(N) in the keys stored: off the event loop, as reading and encoding the inventory are
    plan = await trio.to_thread.run_sync(plan_resync, local, assembler.inventory)
    await trio.to_thread.run_sync(store.apply_resync, link_id, plan.promote, plan.discard, plan.expire)
    log.info("link %s: key store resynchronised", link_id,
             extra={"promoted": len(plan.promote), "discarded": len(plan.discard), "expired": len(plan.expire)})


async def _receive_inventory(stream: MuxStream, assembler: InventoryAssembler) -> None:
    while not assembler.complete:
        payload = await stream.receive()
        try:
            await trio.to_thread.run_sync(assembler.add, payload)    # up to millions of entries a message
        except KeyStoreError as exc:
            raise PeerError(f"peer inventory refused: {exc}") from None
