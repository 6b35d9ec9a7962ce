"""Hypothesis strategies for the hostile-input tests: a genuine encoding with a few edits, the kinds of
damage a buggy or hostile peer, or a broken device, puts on the wire."""
from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


@st.composite
def edited(draw, valid: bytes, *, edits: int = 3, max_cut: int | None = None, max_insert: int = 9,
           overwrites: Sequence[bytes] = ()) -> bytes:
    """`valid` with 1 to `edits` edits at random places: a bit flipped; the rest cut off (with `max_cut`:
    up to that many bytes cut out); 1 to `max_insert` random bytes inserted; or, with `overwrites`, bytes
    overwritten by one of them (edge values of a length or count field)."""
    data = bytearray(valid)
    kinds = ["flip", "cut", "insert"] + (["overwrite"] if overwrites else [])
    for _ in range(draw(st.integers(1, edits))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(kinds))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at:at + draw(st.integers(1, max_cut)) if max_cut else len(data)]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=max_insert))
        elif edit == "overwrite":
            value = draw(st.sampled_from(list(overwrites)))
            data[at:at + len(value)] = value
    return bytes(data)


def fields(values: Sequence[int], width: int, byteorder: str) -> list[bytes]:
    """Integer edge values as `width`-byte fields, for `edited(..., overwrites=...)`."""
    return [value.to_bytes(width, byteorder) for value in values]
