"""Thin binding over the CV-QKD codes and their floating-point sum-product decoder (qkd_ldpc_bp.h), which also
decodes the BB84 codes of qkdd.bindings.ldpc (BpDecoder(index, bb84=True)).

Bits are numpy uint8 arrays of 0/1, LLRs float32 nats (positive = bit 0). The codes have their own index space,
separate from the BB84 codes of qkdd.bindings.ldpc. cffi releases the GIL around every call into the library,
so decoders in different threads run in parallel; a BpDecoder belongs to one thread at a time.
"""
from __future__ import annotations


import numpy as np

from qkdd._native import ffi, lib
from qkdd.bindings import check
from qkdd.bindings.ldpc import BB84_CODES, CodeFamily

MAX_ITERATIONS = lib.QKD_LDPC_BP_MAX_ITERATIONS


CV_CODES = CodeFamily("CV LDPC", "cv_", lib.qkd_ldpc_cv_code_count, lib.qkd_ldpc_cv_code_get_info,
                      lib.qkd_ldpc_cv_code_get_entries, lib.qkd_ldpc_cv_syndrome)
codes, code, entries, syndrome = CV_CODES.codes, CV_CODES.code, CV_CODES.entries, CV_CODES.syndrome


class BpDecoder:
    """Scratch state for decoding codewords of one code; use from one thread at a time."""

    def __init__(self, index: int, bb84: bool = False):
        """Code `index` of the CV codes here, or with `bb84` of the BB84 codes (qkdd.bindings.ldpc)."""
        self.info = BB84_CODES.code(index) if bb84 else code(index)
        handle = ffi.new("qkd_ldpc_bp **")
        check((lib.qkd_ldpc_bp_new_bb84 if bb84 else lib.qkd_ldpc_bp_new)(handle, index), "bp_new")
        self._d = ffi.gc(handle[0], lib.qkd_ldpc_bp_free)

    def decode(self, llr: np.ndarray, target_syndrome: np.ndarray, max_iterations: int = 500,
               stall_iterations: int = 0, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Decode one codeword: (iterations used, or 0 if the syndrome was not reached; hard decisions).
        `stall_iterations` > 0: give up after that many iterations without fewer unsatisfied checks."""
        info = self.info
        if not isinstance(llr, np.ndarray) or llr.dtype != np.float32 or llr.shape != (info.n_bits,):
            raise ValueError(f"llr must be a float32 array of {info.n_bits} values")
        if not np.all(np.isfinite(llr)):
            raise ValueError("llr must be finite")
        if (not isinstance(target_syndrome, np.ndarray) or target_syndrome.dtype != np.uint8
                or target_syndrome.shape != (info.m_bits,)):
            raise ValueError(f"syndrome must be a uint8 array of {info.m_bits} bits")
        if isinstance(max_iterations, bool) or not 1 <= max_iterations <= MAX_ITERATIONS:
            raise ValueError(f"max_iterations must be 1 to {MAX_ITERATIONS}")
        if isinstance(stall_iterations, bool) or not 0 <= stall_iterations <= MAX_ITERATIONS:
            raise ValueError(f"stall_iterations must be 0 to {MAX_ITERATIONS}")
        if out is None:
            out = np.empty(info.n_bits, dtype=np.uint8)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (info.n_bits,)
              or not out.flags.c_contiguous):
            raise ValueError(f"out must be a contiguous uint8 array of {info.n_bits} bits")
        iterations = check(lib.qkd_ldpc_bp_decode(
            self._d, ffi.from_buffer("float[]", np.ascontiguousarray(llr)), info.n_bits,
            ffi.from_buffer("uint8_t[]", np.ascontiguousarray(target_syndrome)), info.m_bits,
            ffi.from_buffer("uint8_t[]", out, require_writable=True), info.n_bits, max_iterations,
            stall_iterations), "bp_decode")
        return iterations, out
