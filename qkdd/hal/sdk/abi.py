"""The binding of a vendor SDK (native/include/qkd_device.h) in cffi's ABI mode: loads the library,
refuses another ABI version, hands numpy buffers with their capacity to C and turns each return code into
an SdkError carrying the library's own message. Nothing above this module sees a cffi pointer."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from cffi import FFI

from qkdd.hal.base import DeviceError

ABI_VERSION = 1
# The declarations between "sdk:begin" and "sdk:end" of native/include/qkd_device.h, for cffi (which
# takes no preprocessor conditionals or includes); tests/test_driver_sdk.py checks they match the header.
CDEF = """
#define QKD_DEVICE_ABI_VERSION 1

#define QKD_DEVICE_OK 0
#define QKD_DEVICE_E_INVALID -1
#define QKD_DEVICE_E_IO -2
#define QKD_DEVICE_E_AGAIN -3
#define QKD_DEVICE_E_BUFFER -4
#define QKD_DEVICE_E_NOT_READY -5

#define QKD_DEVICE_ROLE_ALICE 0
#define QKD_DEVICE_ROLE_BOB 1

typedef struct qkd_device qkd_device;

typedef struct {
    uint64_t frame_id;
    uint64_t slot_count;
    uint64_t pulses_per_intensity[3];
    uint64_t records;
} qkd_device_frame_t;

typedef struct {
    int32_t ok;
    double temperature_c;
    double uptime_s;
    char detail[128];
} qkd_device_status_t;

typedef struct {
    double mu_signal, mu_decoy, mu_vacuum;
    double p_signal, p_decoy;
    double q_x;
} qkd_device_decoy_t;

uint32_t qkd_device_abi_version(void);
int qkd_device_open(const char *config, int role, qkd_device **out);
void qkd_device_close(qkd_device *device);
int qkd_device_read_frame(qkd_device *device, qkd_device_frame_t *frame, uint64_t *slots, uint8_t *bases,
                          uint8_t *bits, uint8_t *intensities, size_t capacity);
int qkd_device_status(qkd_device *device, qkd_device_status_t *status);
int qkd_device_decoy(qkd_device *device, qkd_device_decoy_t *decoy);
const char *qkd_device_strerror(int code);
"""
E_AGAIN = -3
_ffi = FFI()
_ffi.cdef(CDEF)


def normalised(declarations: str) -> str:
    """Declarations without comments and whitespace differences (for comparing with the header)."""
    text = re.sub(r"/\*.*?\*/", "", declarations, flags=re.S)
    return re.sub(r"\s+", " ", text).strip()


class SdkError(DeviceError):
    """The vendor library failed; `code` is its QKD_DEVICE_E_* code (0 for load and version problems)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FrameInfo:
    frame_id: int
    slot_count: int
    pulses_per_intensity: tuple[int, int, int]
    records: int


@dataclass(frozen=True)
class SdkStatus:
    ok: bool
    temperature_c: float
    uptime_s: float
    detail: str


class Library:
    """One loaded vendor library (SdkError when it cannot be loaded or has another ABI version)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._lib = _ffi.dlopen(path)
        except OSError as exc:
            raise SdkError(f"SDK library {path}: cannot load: {exc}") from None
        try:
            version = int(self._lib.qkd_device_abi_version())
        except AttributeError as exc:
            self.close()
            raise SdkError(f"SDK library {path}: not a qkd_device.h library ({exc})") from None
        if version != ABI_VERSION:
            self.close()
            raise SdkError(f"SDK library {path} implements qkd_device ABI version {version}; qkdd speaks "
                           f"{ABI_VERSION}")

    def close(self) -> None:
        """Unload the library (dlclose), so that a fixed file at the same path is loaded afresh next time."""
        if self._lib is not None:
            _ffi.dlclose(self._lib)
            self._lib = None

    def error(self, code: int, what: str) -> SdkError:
        message = _ffi.string(self._lib.qkd_device_strerror(code)).decode("utf-8", "replace")[:200]
        return SdkError(f"SDK library {self.path}: {what}: {''.join(c for c in message if c.isprintable())} "
                        f"(code {code})", code)

    def open(self, config: str, role: str) -> "Handle":
        out = _ffi.new("qkd_device **")
        code = self._lib.qkd_device_open(config.encode(), 0 if role == "alice" else 1, out)
        if code != 0:
            raise self.error(code, "open")
        return Handle(self, out[0])


class Handle:
    def __init__(self, library: Library, device) -> None:
        self.library = library
        self._lib = library._lib
        self._device = device
        self._frame = _ffi.new("qkd_device_frame_t *")

    def read_frame(self, slots: np.ndarray, bases: np.ndarray, bits: np.ndarray,
                   intensities: np.ndarray) -> FrameInfo:
        """One frame into the caller's buffers (blocking; call from a worker thread)."""
        capacity = slots.size
        if not (slots.dtype == np.uint64 and bases.dtype == bits.dtype == intensities.dtype == np.uint8
                and bases.size == bits.size == intensities.size == capacity):
            raise ValueError("read_frame needs uint64 slots and uint8 bases, bits, intensities of one size")
        code = self._lib.qkd_device_read_frame(
            self._device, self._frame, _ffi.cast("uint64_t *", _ffi.from_buffer(slots)),
            _ffi.cast("uint8_t *", _ffi.from_buffer(bases)), _ffi.cast("uint8_t *", _ffi.from_buffer(bits)),
            _ffi.cast("uint8_t *", _ffi.from_buffer(intensities)), capacity)
        if code != 0:
            raise self.library.error(code, "read_frame")
        frame = self._frame
        if frame.records > capacity:
            raise SdkError(f"SDK library {self.library.path}: read_frame reports {frame.records} records in a "
                           f"buffer of {capacity}", -4)
        return FrameInfo(int(frame.frame_id), int(frame.slot_count),
                         tuple(int(p) for p in frame.pulses_per_intensity), int(frame.records))

    def status(self) -> SdkStatus:
        out = _ffi.new("qkd_device_status_t *")
        code = self._lib.qkd_device_status(self._device, out)
        if code != 0:
            raise self.library.error(code, "status")
        detail = _ffi.string(out.detail, 127).decode("utf-8", "replace")
        return SdkStatus(bool(out.ok), float(out.temperature_c), float(out.uptime_s),
                         "".join(c for c in detail if c.isprintable()))

    def decoy(self) -> tuple[float, ...]:
        out = _ffi.new("qkd_device_decoy_t *")
        code = self._lib.qkd_device_decoy(self._device, out)
        if code != 0:
            raise self.library.error(code, "decoy")
        return (out.mu_signal, out.mu_decoy, out.mu_vacuum, out.p_signal, out.p_decoy, out.q_x)

    def close(self) -> None:
        if self._device is not None:
            self._lib.qkd_device_close(self._device)
            self._device = None
