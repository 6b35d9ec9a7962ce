"""ETSI 014 keys of `size` bits cut from, or assembled out of, a link's stored keys, and the Key container
(ETSI GS QKD 014 §6.3) that carries them to an SAE.

Stored keys are taken in reservation order and read as one byte string; each ETSI key is the next
`size_bits / 8` bytes of it. A key may span several stored keys and a stored key may feed several keys;
what is left of the last stored key after the request is erased with it (both ends do the same, so both
derive identical keys from the same plan).
"""
from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Sequence

from qkdd.reservation.protocol import ReservedKey, Segment


def time_ordered_uuid(clock_ns: Callable[[], int] = time.time_ns) -> str:
    """A UUID version 7 (RFC 9562 §5.7) in lowercase canonical form: the Unix time in milliseconds in its
    first 48 bits, then 74 random bits (version and variant in the other 6).

    The ETSI key_IDs and request ids. Keys are looked up by key_ID in B-tree indexes (the slave's ledger);
    random (version 4) ids land each insert on a random page, so a group commit of n reservations wrote
    about n pages, while ids in time order fill the last pages, a few per commit (bench.kme_store: a
    third less store time per reservation). The price is that a key_ID shows when its key was handed
    out, to the millisecond: a client already knows that, and the 74 random bits still make ids
    unguessable (nothing is granted for knowing one: dec_keys checks the caller's certificate)."""
    octets = bytearray((clock_ns() // 1_000_000 % (1 << 48)).to_bytes(6, "big") + os.urandom(10))
    octets[6] = (octets[6] & 0x0F) | 0x70          # version 7
    octets[8] = (octets[8] & 0x3F) | 0x80          # variant 10 (RFC 9562 §4.1)
    text = octets.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def plan_keys(stored: Sequence[tuple[str, int]], number: int, size_bits: int,
              new_key_id: Callable[[], str] | None = None) -> tuple[ReservedKey, ...]:
    """Cut `number` keys of `size_bits` out of `stored` ((stored_key_id, bits) pairs, bits a multiple of 8).

    ValueError if the stored keys hold too few bits or size_bits is not a positive multiple of 8.
    """
    if size_bits <= 0 or size_bits % 8:
        raise ValueError("size must be a positive multiple of 8 bits")
    new_key_id = new_key_id or time_ordered_uuid
    wanted_bytes = size_bits // 8
    keys = []
    source = iter(stored)
    current_id, current_left, current_offset = None, 0, 0
    for _ in range(number):
        segments = []
        need = wanted_bytes
        while need:
            if current_left == 0:
                try:
                    current_id, bits = next(source)
                except StopIteration:
                    raise ValueError("stored keys hold fewer bits than the request needs") from None
                if bits <= 0 or bits % 8:
                    raise ValueError("stored key lengths must be positive multiples of 8 bits")
                current_left, current_offset = bits // 8, 0
            take = min(need, current_left)
            segments.append(Segment(current_id, current_offset, take))
            current_offset += take
            current_left -= take
            need -= take
        keys.append(ReservedKey(new_key_id(), tuple(segments)))
    return tuple(keys)


def assemble(key: ReservedKey, materials: dict[str, bytes]) -> bytes:
    """The key's bytes from the stored keys' material (stored_key_id -> bytes)."""
    parts = []
    for segment in key.segments:
        material = materials[segment.stored_key_id]
        end = segment.offset_bytes + segment.length_bytes
        if end > len(material):
            raise ValueError(f"stored key {segment.stored_key_id} is shorter than the plan says")
        parts.append(material[segment.offset_bytes:end])
    return b"".join(parts)


def key_container(keys: Sequence[tuple[str, bytes]]) -> dict:
    """Key container data format (§6.3): key_ID as given (canonical UUID), key as padded base64 (RFC 4648 §4)."""
    return {"keys": [{"key_ID": key_id, "key": base64.b64encode(material).decode("ascii")}
                     for key_id, material in keys]}
