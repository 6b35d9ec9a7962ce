"""Thin binding over the Cascade kernels (qkd_cascade.h): checks buffers, owns the C object, maps errors."""
from __future__ import annotations

import numpy as np

from qkdd._native import ffi, lib
from qkdd.bindings import as_words, check

ALICE = lib.QKD_CASCADE_ALICE
BOB = lib.QKD_CASCADE_BOB
PASS_CONTIGUOUS = lib.QKD_CASCADE_PASS_CONTIGUOUS
PASS_SHUFFLED = lib.QKD_CASCADE_PASS_SHUFFLED
PASS_HALVES = lib.QKD_CASCADE_PASS_HALVES
PASS_KINDS = (PASS_CONTIGUOUS, PASS_SHUFFLED, PASS_HALVES)
MAX_PASSES = lib.QKD_CASCADE_MAX_PASSES
MAX_BITS = lib.QKD_CASCADE_MAX_BITS
SEED_BYTES = lib.QKD_PRNG_SEED_BYTES
QUESTION_BYTES = lib.QKD_CASCADE_QUESTION_BYTES
MAX_LOOKAHEAD = lib.QKD_CASCADE_MAX_LOOKAHEAD
MAX_FEW_SEARCHES = lib.QKD_CASCADE_MAX_FEW_SEARCHES


def parities_bytes(count: int) -> int:
    """Length of a parities payload carrying `count` parity bits."""
    return check(lib.qkd_cascade_parities_bytes(count), "parities_bytes")


def _in(payload: bytes):
    return ffi.from_buffer("uint8_t[]", payload)


class CascadeKernel:
    """One end of one frame: the C state of Alice (answers parities) or Bob (searches and corrects).

    Bob's `key` is corrected in place; it must stay alive and unshared while the kernel runs.
    """

    def __init__(self, role: int, key: np.ndarray, n_bits: int, seed: bytes,
                 passes: list[tuple[int, int]]):
        as_words(key, "key", writable=(role == BOB))
        if role not in (ALICE, BOB):
            raise ValueError(f"unknown Cascade role {role}")
        if not 1 <= n_bits <= MAX_BITS:
            raise ValueError(f"Cascade frame of {n_bits} bits: must be 1 to {MAX_BITS}")
        if key.size != (n_bits + 63) // 64:
            raise ValueError(f"key holds {key.size} words, a {n_bits}-bit frame needs {(n_bits + 63) // 64}")
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"Cascade seed must be {SEED_BYTES} bytes")
        if not 1 <= len(passes) <= MAX_PASSES:
            raise ValueError(f"Cascade needs 1 to {MAX_PASSES} passes, got {len(passes)}")
        kinds = np.array([kind for kind, _ in passes], dtype=np.uint32)
        blocks = np.array([block for _, block in passes], dtype=np.uint32)
        self._key = key  # keep the buffer alive: the C object points into it
        handle = ffi.new("qkd_cascade **")
        key_ptr = ffi.cast("uint64_t *", ffi.from_buffer(key, require_writable=(role == BOB)))
        check(lib.qkd_cascade_new(handle, role, key_ptr, key.size, n_bits, _in(bytes(seed)), len(seed),
                                  ffi.from_buffer("uint32_t[]", kinds), ffi.from_buffer("uint32_t[]", blocks),
                                  len(passes)), "cascade_new")
        self._c = ffi.gc(handle[0], lib.qkd_cascade_free)
        self.top_blocks = check(lib.qkd_cascade_top_blocks(self._c), "top_blocks")
        self.question_capacity_bytes = check(lib.qkd_cascade_question_capacity_bytes(self._c), "capacity")
        self._out = bytearray(max(self.question_capacity_bytes, parities_bytes(self.top_blocks)))
        self._out_c = ffi.from_buffer("uint8_t[]", self._out)

    def _result(self, length: int) -> bytes:
        return bytes(self._out[:length])

    def alice_top_parities(self) -> bytes:
        """Alice: parities of every top-level block of every pass, as a parities payload."""
        return self._result(check(lib.qkd_cascade_alice_top_parities(self._c, self._out_c, len(self._out)),
                                  "top parities"))

    def alice_answer(self, questions: bytes) -> bytes:
        """Alice: the parities payload answering a questions payload (at most the question capacity)."""
        length = check(lib.qkd_cascade_alice_answer(self._c, _in(questions), len(questions), self._out_c,
                                                    len(self._out)), "questions")
        return self._result(length)

    def bob_set_top_parities(self, payload: bytes) -> None:
        check(lib.qkd_cascade_bob_set_top_parities(self._c, _in(payload), len(payload)), "top parities")

    def bob_set_lookahead(self, few_searches: int, levels: int) -> None:
        """Bob: once at most `few_searches` searches are open, ask `levels` tree levels per round."""
        if not 0 <= few_searches <= MAX_FEW_SEARCHES or not 1 <= levels <= MAX_LOOKAHEAD:
            raise ValueError(f"lookahead of {levels} levels below {few_searches} searches: levels must be 1 to "
                             f"{MAX_LOOKAHEAD}, searches 0 to {MAX_FEW_SEARCHES}")
        check(lib.qkd_cascade_bob_set_lookahead(self._c, few_searches, levels), "lookahead")

    def bob_next_questions(self) -> bytes | None:
        """Bob: the next questions payload, or None once every pass is done."""
        length = check(lib.qkd_cascade_bob_next_questions(self._c, self._out_c, len(self._out)), "next questions")
        return self._result(length) if length else None

    def bob_apply_answers(self, payload: bytes) -> None:
        check(lib.qkd_cascade_bob_apply_answers(self._c, _in(payload), len(payload)), "answers")

    def stats(self) -> dict[str, int]:
        out = ffi.new("qkd_cascade_stats *")
        check(lib.qkd_cascade_get_stats(self._c, out), "stats")
        return {"disclosed_bits": out.disclosed_bits, "corrected_bits": out.corrected_bits,
                "question_rounds": out.question_rounds, "passes_started": out.passes_started}
