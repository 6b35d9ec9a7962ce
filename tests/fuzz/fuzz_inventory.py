"""Fuzz target: a peer's key-store resync messages. The input is one or more messages, each behind a 4-byte
big-endian length, added in order to a HelloAssembler (the resynchronisation point, the first step), a
SummaryAssembler (frame summaries) and an InventoryAssembler (the keys of the frames listed); a complete
point is compared with the local one (resync_scope), a complete summary with the local one
(frames_to_list), a complete inventory planned against a local inventory (plan_resync).

Expected: messages taken or a ResyncMessageError; a complete point gives the same scope whichever end
compares, within the frames either end named; complete summaries hold consistent counts and choose the
same frames whichever end compares; a complete inventory holds canonical key ids with known states, at most
MAX_KEYS of them, and its plan names only local keys, each once.
"""
from __future__ import annotations

import struct
import uuid

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.keystore.model import KeyState
    from qkdd.keystore.resync import (MAX_KEYS, FrameSummary, HelloAssembler, InventoryAssembler,
                                      ResyncMessageError, ResyncPoint, SummaryAssembler, encode_hello,
                                      encode_inventory, encode_summaries, frames_to_list, plan_resync,
                                      resync_scope)

LINK_ID = "link-ab"
_LENGTH = struct.Struct(">I")
LOCAL = {str(uuid.UUID(int=n, version=4)): state
         for n, state in enumerate([KeyState.PENDING, KeyState.AVAILABLE, KeyState.RESERVED, KeyState.DELIVERED,
                                    KeyState.EXPIRED, KeyState.PENDING], start=1)}

LOCAL_SUMMARIES = {1: FrameSummary(4, 0, 2, 1, min(LOCAL), max(LOCAL)),
                   2: FrameSummary(2, 2, 2, 0, min(LOCAL), max(LOCAL))}

LOCAL_POINT = ResyncPoint(b"A" * 16, 7, b"B" * 16, 3, frozenset({1, 5}))


def _messages(data: bytes) -> list[bytes]:
    messages, at = [], 0
    while at + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        messages.append(data[at:at + length])
        at += length
    return messages or [data]


def TestOneInput(data: bytes) -> None:
    messages = _messages(data)
    _check_hello(messages)
    _check_summaries(messages)
    if (assembler := _complete(InventoryAssembler(LINK_ID), messages)) is None:
        return
    remote = assembler.inventory
    if len(remote) > MAX_KEYS or not all(str(uuid.UUID(key_id)) == key_id and isinstance(state, KeyState)
                                         for key_id, state in remote.items()):
        raise Finding("an accepted inventory holds a malformed entry")
    plan = plan_resync(LOCAL, remote)
    named = plan.promote + plan.discard + plan.expire
    if len(set(named)) != len(named) or not set(named) <= set(LOCAL):
        raise Finding(f"resync plan names a key twice or a key this end lacks: {plan!r}")


def _complete(assembler, messages: list[bytes]):
    """`assembler` after taking every message, or None where one was refused or the last is missing."""
    try:
        for message in messages:
            assembler.add(message)
    except ResyncMessageError:
        return None
    return assembler if assembler.complete else None


def _check_hello(messages: list[bytes]) -> None:
    if (assembler := _complete(HelloAssembler(LINK_ID), messages)) is None:
        return
    peer = assembler.point
    scope = resync_scope(LOCAL_POINT, peer)
    if scope != resync_scope(peer, LOCAL_POINT):
        raise Finding("the two ends would choose different scopes")
    if scope is not None and not set(scope) <= LOCAL_POINT.changed_frames | peer.changed_frames:
        raise Finding("a scope names a frame neither end changed")


def _check_summaries(messages: list[bytes]) -> None:
    if (assembler := _complete(SummaryAssembler(LINK_ID), messages)) is None:
        return
    for summary in assembler.summaries.values():
        if not (0 < summary.keys and summary.pending <= summary.holding
                and summary.holding + summary.expired <= summary.keys and summary.lowest_id <= summary.highest_id):
            raise Finding(f"an accepted summary is inconsistent: {summary!r}")
    if frames_to_list(LOCAL_SUMMARIES, assembler.summaries) != frames_to_list(assembler.summaries, LOCAL_SUMMARIES):
        raise Finding("the two ends would list different frames")


def seeds() -> list[bytes]:
    def container(messages: list[bytes]) -> bytes:
        return b"".join(_LENGTH.pack(len(message)) + message for message in messages)

    remote = dict(list(LOCAL.items())[:4])
    remote[str(uuid.UUID(int=99, version=4))] = KeyState.AVAILABLE
    return [container(encode_inventory(LINK_ID, remote)),
            container(encode_inventory(LINK_ID, remote, max_message_bytes=50)),
            container(encode_inventory(LINK_ID, {})),
            encode_inventory(LINK_ID, LOCAL)[0],
            container(encode_summaries(LINK_ID, LOCAL_SUMMARIES)),
            container(encode_summaries(LINK_ID, LOCAL_SUMMARIES, max_message_bytes=80)),
            container(encode_hello(LINK_ID, ResyncPoint(b"B" * 16, 3, b"A" * 16, 7, frozenset({2, 5})))),
            container(encode_hello(LINK_ID, ResyncPoint(b"B" * 16, 3, b"A" * 16, 7, frozenset({2, 5, 9})),
                                   max_message_bytes=90))]


if __name__ == "__main__":
    fuzz(TestOneInput)
