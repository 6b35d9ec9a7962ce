"""Fuzz target: a peer's key-store inventory during resync. The input is one or more inventory messages, each
behind a 4-byte big-endian length, added in order to an InventoryAssembler; a complete inventory is then
planned against a local inventory (plan_resync).

Expected: messages taken or a ResyncMessageError; a complete inventory holds canonical key ids with known
states, at most MAX_KEYS of them, and its plan names only local keys, each once.
"""
from __future__ import annotations

import struct
import uuid

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.keystore.model import KeyState
    from qkdd.keystore.resync import (MAX_KEYS, InventoryAssembler, ResyncMessageError, encode_inventory,
                                      plan_resync)

LINK_ID = "link-ab"
_LENGTH = struct.Struct(">I")
LOCAL = {str(uuid.UUID(int=n, version=4)): state
         for n, state in enumerate([KeyState.PENDING, KeyState.AVAILABLE, KeyState.RESERVED, KeyState.DELIVERED,
                                    KeyState.EXPIRED, KeyState.PENDING], start=1)}


def _messages(data: bytes) -> list[bytes]:
    messages, at = [], 0
    while at + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        messages.append(data[at:at + length])
        at += length
    return messages or [data]


def TestOneInput(data: bytes) -> None:
    assembler = InventoryAssembler(LINK_ID)
    try:
        for message in _messages(data):
            assembler.add(message)
    except ResyncMessageError:
        return
    if not assembler.complete:
        return
    remote = assembler.inventory
    if len(remote) > MAX_KEYS or not all(str(uuid.UUID(key_id)) == key_id and isinstance(state, KeyState)
                                         for key_id, state in remote.items()):
        raise Finding("an accepted inventory holds a malformed entry")
    plan = plan_resync(LOCAL, remote)
    named = plan.promote + plan.discard + plan.expire
    if len(set(named)) != len(named) or not set(named) <= set(LOCAL):
        raise Finding(f"resync plan names a key twice or a key this end lacks: {plan!r}")


def seeds() -> list[bytes]:
    def container(messages: list[bytes]) -> bytes:
        return b"".join(_LENGTH.pack(len(message)) + message for message in messages)

    remote = dict(list(LOCAL.items())[:4])
    remote[str(uuid.UUID(int=99, version=4))] = KeyState.AVAILABLE
    return [container(encode_inventory(LINK_ID, remote)),
            container(encode_inventory(LINK_ID, remote, max_message_bytes=50)),
            container(encode_inventory(LINK_ID, {})),
            encode_inventory(LINK_ID, LOCAL)[0]]


if __name__ == "__main__":
    fuzz(TestOneInput)
