"""Photon-level simulator kernel (qkd_sim.h): parameter struct in, columnar detection records out.

`Kernel` owns one C simulator state. Parameters are a flat mapping named exactly like the fields of
`qkd_sim_params`; records come back as numpy columns (slot uint64 increasing; bits, bases, outcomes and
intensity classes uint8). Validation with readable messages lives above, in `qkdd.hal.sim.params`; here
a refusal of the C checks is a NativeBufferError.
"""
from __future__ import annotations

import numpy as np

from qkdd._native import ffi, lib
from qkdd.bindings import check, wptr

CLASSES = lib.QKD_SIM_CLASSES
PROTOCOLS = {"bb84": lib.QKD_SIM_BB84, "e91": lib.QKD_SIM_E91}
PAIR_STATISTICS = {"thermal": lib.QKD_SIM_PAIRS_THERMAL, "poisson": lib.QKD_SIM_PAIRS_POISSON}
ATTACKS = {"none": lib.QKD_SIM_ATTACK_NONE, "intercept-resend": lib.QKD_SIM_ATTACK_INTERCEPT_RESEND,
           "pns": lib.QKD_SIM_ATTACK_PNS, "blinding": lib.QKD_SIM_ATTACK_BLINDING}
SEED_BYTES = 32
RECORD_COLUMNS = ("slot", "alice_bit", "alice_basis", "intensity", "bob_basis", "bob_outcome")


def _params_struct(params: dict):
    struct = ffi.new("qkd_sim_params *")
    for name, value in params.items():
        if name == "protocol":
            struct.protocol = PROTOCOLS[value]
        elif name == "attack":
            struct.attack = ATTACKS[value]
        elif name == "pair_statistics":
            struct.pair_statistics = PAIR_STATISTICS[value]
        elif isinstance(value, (tuple, list)):
            field = getattr(struct, name)
            if len(value) != len(field):
                raise ValueError(f"{name}: expected {len(field)} values, got {len(value)}")
            for i, v in enumerate(value):
                field[i] = float(v)
        else:
            setattr(struct, name, float(value))
    return struct


class Kernel:
    """One simulator state: the channel table, the ChaCha20 streams and the slot position."""

    def __init__(self, params: dict, seed: bytes):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            raise ValueError(f"seed: need {SEED_BYTES} bytes")
        self._owner = ffi.new("char[]", lib.qkd_sim_size())
        self._state = ffi.cast("qkd_sim *", self._owner)
        seed_buf = ffi.new("uint8_t[32]", bytes(seed))
        check(lib.qkd_sim_init(self._state, _params_struct(params), seed_buf), "simulator parameters")

    def configure(self, params: dict) -> None:
        """Replace the parameters (attack, drifts, ...) from the current slot on."""
        check(lib.qkd_sim_configure(self._state, _params_struct(params)), "simulator parameters")

    @property
    def position(self) -> int:
        return int(lib.qkd_sim_position(self._state))

    def model(self) -> dict:
        """What the channel model predicts per slot for the current parameters."""
        m = ffi.new("qkd_sim_model *")
        check(lib.qkd_sim_model_of(self._state, m), "simulator model")
        return {"click_prob": m.click_prob, "class_gain": list(m.class_gain), "class_error": list(m.class_error),
                "transmittance": m.transmittance, "monitor_power_w": m.monitor_power_w, "types": m.n_types}

    def run(self, n_slots: int, capacity: int) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
        """Simulate up to `n_slots` slots, stopping early when `capacity` records are full.

        Returns (records, slots_done, pulses per intensity class)."""
        if n_slots < 0 or capacity < 0:
            raise ValueError("n_slots and capacity must be non-negative")
        columns = {"slot": np.empty(capacity, np.uint64)}
        for name in RECORD_COLUMNS[1:]:
            columns[name] = np.empty(capacity, np.uint8)
        out = ffi.new("qkd_sim_records *")
        out.slot = wptr("uint64_t *", columns["slot"])
        for name in RECORD_COLUMNS[1:]:
            setattr(out, name, wptr("uint8_t *", columns[name]))
        n_records = ffi.new("size_t *")
        slots_done = ffi.new("uint64_t *")
        pulses = np.zeros(CLASSES, np.uint64)
        check(lib.qkd_sim_run(self._state, n_slots, out, capacity, n_records, slots_done,
                              wptr("uint64_t *", pulses)), "simulator run")
        n = int(n_records[0])
        return {name: col[:n] for name, col in columns.items()}, int(slots_done[0]), pulses
