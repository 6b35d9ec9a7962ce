"""Thin binding over the QC-LDPC kernels (qkd_ldpc.h): code tables, syndromes and the layered decoder.

Bits are numpy uint8 arrays of 0/1, LLRs int8 (LLR_UNITS_PER_NAT per nat, positive = bit 0). The
decode call runs in C without the GIL (cffi releases it around every call into the library), so
decoders in different threads run in parallel; a Decoder itself belongs to one thread at a time.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qkdd._native import ffi, lib
from qkdd.bindings import check

PATH_AUTO = lib.QKD_LDPC_PATH_AUTO
PATH_PORTABLE = lib.QKD_LDPC_PATH_PORTABLE
PATH_LANES = lib.QKD_LDPC_PATH_LANES
PATH_AVX2 = lib.QKD_LDPC_PATH_AVX2
PATH_AVX512 = lib.QKD_LDPC_PATH_AVX512
PATH_AVX512VBMI = lib.QKD_LDPC_PATH_AVX512VBMI
LLR_MAX = lib.QKD_LDPC_LLR_MAX
LLR_UNITS_PER_NAT = 4
MAX_ITERATIONS = lib.QKD_LDPC_MAX_ITERATIONS
SPA_MAX_UNITS = lib.QKD_LDPC_SPA_MAX_UNITS
ENSEMBLE_MIN_SUM = lib.QKD_LDPC_ENSEMBLE_MIN_SUM
ENSEMBLE_SUM_PRODUCT = lib.QKD_LDPC_ENSEMBLE_SUM_PRODUCT
SEED_BYTES = lib.QKD_PRNG_SEED_BYTES
DEFAULT_SCALE_EIGHTHS = 7           # normalised (7/8) offset (1/4 nat) min-sum: the best of the variants simulated
DEFAULT_OFFSET = 1                  # on the shipped codes (README), clearly ahead of pure offset min-sum at low rates


@dataclasses.dataclass(frozen=True)
class CodeInfo:
    index: int
    z: int
    mb: int
    nb: int
    edges: int
    n_bits: int        # codeword length
    m_bits: int        # syndrome length
    ensemble: int = 0  # ENSEMBLE_MIN_SUM or ENSEMBLE_SUM_PRODUCT: the decoder its degree profile was chosen for

    @property
    def rate(self) -> float:
        return 1.0 - self.m_bits / self.n_bits


class CodeFamily:
    """One set of shipped code tables and the library's accessors of it, by index: the BB84 codes here, the
    CV-QKD codes in qkdd.bindings.ldpc_bp (each set has its own index space)."""

    def __init__(self, name: str, label: str, count, get_info, get_entries, syndrome):
        self._name, self._label = name, label
        self._count, self._get_info, self._get_entries, self._syndrome = count, get_info, get_entries, syndrome
        self._codes: tuple[CodeInfo, ...] | None = None
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def codes(self) -> tuple[CodeInfo, ...]:
        """Every shipped code of the set, by index."""
        if self._codes is None:
            out = []
            for index in range(self._count()):
                info = ffi.new("qkd_ldpc_code_info *")
                check(self._get_info(index, info), f"{self._label}code_get_info")
                out.append(CodeInfo(index, info.z, info.mb, info.nb, info.edges, info.n_bits, info.m_bits,
                                    info.ensemble))
            self._codes = tuple(out)
        return self._codes

    def code(self, index: int) -> CodeInfo:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.codes()):
            raise ValueError(f"no {self._name} code {index!r} (the library ships {len(self.codes())})")
        return self.codes()[index]

    def entries(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The base matrix of code `index`: (rows, cols, shifts) of its non-empty entries, row-major."""
        info = self.code(index)
        rows, cols, shifts = (np.zeros(info.edges, dtype=np.uint32) for _ in range(3))
        check(self._get_entries(index, ffi.from_buffer("uint32_t[]", rows), ffi.from_buffer("uint32_t[]", cols),
                                ffi.from_buffer("uint32_t[]", shifts), info.edges), f"{self._label}code_get_entries")
        return rows, cols, shifts

    def check_bits(self, index: int, checks: np.ndarray) -> np.ndarray:
        """The code bits that checks `checks` (indices into the syndrome) of code `index` involve, ascending, each
        once. Check r z + i of base row r takes bit c z + (i + shift) mod z of each entry (r, c, shift)."""
        info = self.code(index)
        if index not in self._rows:
            rows, cols, shifts = self.entries(index)
            self._rows[index] = (np.searchsorted(rows, np.arange(info.mb + 1)), cols.astype(np.int64),
                                 shifts.astype(np.int64))
        row_start, cols, shifts = self._rows[index]
        checks = np.asarray(checks, dtype=np.int64)
        if checks.ndim != 1 or (checks.size and (checks.min() < 0 or checks.max() >= info.m_bits)):
            raise ValueError(f"checks must be indices below {info.m_bits}")
        z = info.z
        parts = [cols[row_start[r]:row_start[r + 1]] * z + (i + shifts[row_start[r]:row_start[r + 1]]) % z
                 for r, i in zip(*np.divmod(checks, z))]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def syndrome(self, index: int, bits: np.ndarray) -> np.ndarray:
        """H x for codeword candidate `bits` (n_bits uint8) of code `index`: m_bits uint8."""
        info = self.code(index)
        bits = _bits(bits, info.n_bits, "bits")
        out = np.empty(info.m_bits, dtype=np.uint8)
        check(self._syndrome(index, ffi.from_buffer("uint8_t[]", bits), info.n_bits,
                             ffi.from_buffer("uint8_t[]", out, require_writable=True), info.m_bits),
              f"{self._label}syndrome")
        return out


BB84_CODES = CodeFamily("LDPC", "", lib.qkd_ldpc_code_count, lib.qkd_ldpc_code_get_info,
                        lib.qkd_ldpc_code_get_entries, lib.qkd_ldpc_syndrome)
codes, code, entries, syndrome = BB84_CODES.codes, BB84_CODES.code, BB84_CODES.entries, BB84_CODES.syndrome
check_bits = BB84_CODES.check_bits


def _bits(array: np.ndarray, length: int, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != (length,):
        raise ValueError(f"{name} must be a uint8 array of {length} bits")
    return np.ascontiguousarray(array)


def path_available(path: int) -> bool:
    return bool(lib.qkd_ldpc_path_available(path))


def permutation(seed: bytes, stream: int, n: int) -> np.ndarray:
    """The keyed permutation of range(n) both ends derive from a public seed (qkd_prng.h)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes")
    prng = ffi.new("qkd_prng *")
    check(lib.qkd_prng_init(prng, bytes(seed), len(seed), stream), "prng_init")
    out = np.empty(n, dtype=np.uint32)
    check(lib.qkd_prng_permutation(prng, ffi.from_buffer("uint32_t[]", out, require_writable=True), n), "permutation")
    return out


class Decoder:
    """Scratch state for decoding codewords of one code; use from one thread at a time."""

    def __init__(self, index: int, self_correcting: bool = False, sum_product_units: int = 0):
        """`self_correcting`: self-corrected min-sum (qkd_ldpc.h, QKD_LDPC_SELF_CORRECTING) instead of plain.
        `sum_product_units` > 0: the fixed-point sum-product decoder instead of min-sum, for LLRs of that many units
        per nat (1 to SPA_MAX_UNITS; qkd_ldpc_decoder_set_sum_product); scale and offset are then not used."""
        if (isinstance(sum_product_units, bool) or not isinstance(sum_product_units, int)
                or not 0 <= sum_product_units <= SPA_MAX_UNITS):
            raise ValueError(f"sum_product_units must be 0 to {SPA_MAX_UNITS}")
        self.info = code(index)
        self.self_correcting = bool(self_correcting)
        self.sum_product_units = sum_product_units
        handle = ffi.new("qkd_ldpc_decoder **")
        check(lib.qkd_ldpc_decoder_new(handle, index), "decoder_new")
        self._d = ffi.gc(handle[0], lib.qkd_ldpc_decoder_free)
        if self.self_correcting:
            check(lib.qkd_ldpc_decoder_set_flags(self._d, lib.QKD_LDPC_SELF_CORRECTING), "decoder_set_flags")
        if sum_product_units:
            check(lib.qkd_ldpc_decoder_set_sum_product(self._d, sum_product_units), "decoder_set_sum_product")

    def decode(self, llr: np.ndarray, target_syndrome: np.ndarray, max_iterations: int = 60,
               scale_eighths: int = DEFAULT_SCALE_EIGHTHS, offset: int = DEFAULT_OFFSET,
               path: int = PATH_AUTO, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Decode one codeword: (iterations used, or 0 if the syndrome was not reached; hard decisions).
        `out`, if given, is a writable uint8 array of n_bits that receives the hard decisions."""
        return self._call(lib.qkd_ldpc_decode, llr, target_syndrome, max_iterations, scale_eighths, offset, path, out)

    def resume(self, llr: np.ndarray, target_syndrome: np.ndarray, max_iterations: int = 60,
               scale_eighths: int = DEFAULT_SCALE_EIGHTHS, offset: int = DEFAULT_OFFSET,
               path: int = PATH_AUTO, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Continue this decoder's last decode with new channel LLRs (bits revealed since): as decode()."""
        return self._call(lib.qkd_ldpc_decode_resume, llr, target_syndrome, max_iterations, scale_eighths, offset,
                          path, out)

    def _call(self, function, llr, target_syndrome, max_iterations, scale_eighths, offset, path, out):
        info = self.info
        if not isinstance(llr, np.ndarray) or llr.dtype != np.int8 or llr.shape != (info.n_bits,):
            raise ValueError(f"llr must be an int8 array of {info.n_bits} values")
        target_syndrome = _bits(target_syndrome, info.m_bits, "syndrome")
        if not 1 <= max_iterations <= MAX_ITERATIONS:
            raise ValueError(f"max_iterations must be 1 to {MAX_ITERATIONS}")
        if not 1 <= scale_eighths <= 8 or not 0 <= offset <= LLR_MAX:
            raise ValueError("scale_eighths must be 1 to 8 and offset 0 to LLR_MAX")
        if not path_available(path):
            raise ValueError(f"decoder path {path} is not available on this machine")
        if out is None:
            out = np.empty(info.n_bits, dtype=np.uint8)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (info.n_bits,)
              or not out.flags.c_contiguous):
            raise ValueError(f"out must be a contiguous uint8 array of {info.n_bits} bits")
        iterations = check(function(
            self._d, ffi.from_buffer("int8_t[]", np.ascontiguousarray(llr)), info.n_bits,
            ffi.from_buffer("uint8_t[]", target_syndrome), info.m_bits,
            ffi.from_buffer("uint8_t[]", out, require_writable=True), info.n_bits,
            max_iterations, scale_eighths, offset, path), "decode")
        return iterations, out
