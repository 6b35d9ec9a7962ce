"""The `[links.sim]` config section of a simulated link and the driver's default system.

Names follow SimParams (qkdd.hal.sim.params). Both ends read the same section: Alice's device runs the
source and fiber with the physics fields, frame size, pacing, attack, drifts and seed; Bob's device uses
`protocol` (from the link), `max_detections_per_frame` and its photocurrent monitor (`monitor`,
`monitor_threshold_w`).
A `seed` makes every frame, hence every key, reproducible by whoever knows it: it is refused unless the
same table also sets `allow_insecure_seed = true` (tests and benchmarks).

Defaults are a modern system, not the GYS link of SimParams: with GYS (eta_Bob 4.5 %, e_det 3.3 %)
Lim's finite-key bound leaves no key even for 10^9-pulse blocks. The detector and fiber numbers are
those of Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Sec. IV (eta_Bob 10 %, dark count
6e-7 per detector, e_det 0.5 %, afterpulse 4 %, alpha 0.2 dB/km; the same system as
tests/test_protocols_finite_key.py's LIM), and the source settings are
`qkdd.protocols.bb84_design.optimize_settings` for that system at 25 km and n_X = 10^6 sifted X
detections (eps_sec 1e-10, f_EC 1.16, mu3 = 0), rounded. One default frame (2^28 slots, 0.27 s at 1 GHz)
then holds about 10^6 sifted X detections at 25 km; Lim's bound leaves about 2.5e5 key bits on the
expected counts and 3.4e5 on simulated frames (two seeds; tests/test_sim_driver.py checks > 1.5e5).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal
from typing import TYPE_CHECKING

from qkdd.config_schema import ConfigError, in_range, meta, positive
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.systems import SYSTEMS, preset

if TYPE_CHECKING:
    from qkdd.hal.sim.cv_channel import CvChannelSettings

MODERN_SYSTEM = dict(fiber_loss_db_per_km=0.2, detector_efficiency=0.1, dark_count_prob=6e-7,
                     misalignment=0.005, afterpulse_prob=0.04)
OPTIMISED_SOURCE = dict(mu_signal=0.43, mu_decoy=0.20, mu_vacuum=0.0, p_signal=0.20, p_decoy=0.55, q_x=0.78)
DEFAULT_FRAME_SLOTS = 1 << 28
DEFAULT_MAX_DETECTIONS = 1 << 22
MAX_FRAME_SLOTS = 1 << 40                # qkdd.hal.sim.wire.MAX_SLOTS
DEFAULT_DEVICE_ADDR = "127.0.0.1:7081"
DEFAULT_MONITOR_THRESHOLD_W = 1e-9      # as qkdd.hal.sim.montecarlo.MONITOR_THRESHOLD_W


def _attack_check(text: str) -> str | None:
    try:
        Attack.parse(text)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class SimConfig:
    distance_km: float = field(default=25.0, metadata=meta(check=in_range(0, 1000)))
    fiber_loss_db_per_km: float = MODERN_SYSTEM["fiber_loss_db_per_km"]
    detector_efficiency: float = MODERN_SYSTEM["detector_efficiency"]
    dark_count_prob: float = MODERN_SYSTEM["dark_count_prob"]
    misalignment: float = MODERN_SYSTEM["misalignment"]
    afterpulse_prob: float = MODERN_SYSTEM["afterpulse_prob"]
    clock_hz: float = field(default=1e9, metadata=meta(check=in_range(1, 1e11)))
    decoy: str = "vacuum-weak"
    mu_signal: float = OPTIMISED_SOURCE["mu_signal"]
    mu_decoy: float = OPTIMISED_SOURCE["mu_decoy"]
    mu_vacuum: float = OPTIMISED_SOURCE["mu_vacuum"]
    p_signal: float = OPTIMISED_SOURCE["p_signal"]
    p_decoy: float = OPTIMISED_SOURCE["p_decoy"]
    q_x: float = OPTIMISED_SOURCE["q_x"]
    pair_mean: float = 0.01
    pair_statistics: str = "thermal"
    source_position_km: float | None = None
    # E91 only (qkdd.hal.sim.pair_source): the end whose host runs the pair source, the detectors' dead time,
    # and the probabilities of the key settings (Alice 0 deg; Bob 0 deg, his three others share the rest)
    source_host: Literal["alice", "bob"] = "alice"
    dead_time_ns: float = field(default=0.0, metadata=meta(check=in_range(0, 1e6)))
    e91_alice_key_prob: float = field(default=0.5, metadata=meta(check=in_range(0, 1, low_open=True, high_open=True)))
    e91_bob_key_prob: float = field(default=0.25, metadata=meta(check=in_range(0, 1, low_open=True, high_open=True)))
    frame_slots: int = field(default=DEFAULT_FRAME_SLOTS, metadata=meta(check=in_range(1, MAX_FRAME_SLOTS)))
    max_detections_per_frame: int = field(default=DEFAULT_MAX_DETECTIONS, metadata=meta(check=in_range(1, 1 << 26)))
    realtime: bool = True                   # pace frames at clock_hz; false: as fast as possible
    attack: str = field(default="none", metadata=meta(check=_attack_check))
    blinding_power_w: float = field(default=1e-3, metadata=meta(check=positive))
    extra_loss_db: float = field(default=0.0, metadata=meta(check=in_range(0, 100)))
    misalignment_drift: float = field(default=0.0, metadata=meta(check=in_range(0, 0.5)))
    seed: int | None = None                 # reproducible frames: predictable keys, so refused unless
    allow_insecure_seed: bool = False       # this is true (tests and benchmarks only)
    monitor: bool = False                   # Bob's photocurrent monitor
    monitor_threshold_w: float = field(default=DEFAULT_MONITOR_THRESHOLD_W, metadata=meta(check=positive))
    temperature_c: float = field(default=22.0, metadata=meta(check=in_range(-60, 80)))
    # A published system (qkdd.hal.sim.systems: "yuan2018", "li2023"): its physics and source settings
    # replace the defaults above; keys set in the same table still override them.
    system: str | None = field(default=None, metadata=meta(check=lambda name: None if name in SYSTEMS else
                                                           f"unknown system {name!r}, known: {', '.join(SYSTEMS)}"))
    # protocol "cvqkd" (GG02, qkdd.hal.sim.cv_device): Gaussian modulation, homodyne or heterodyne detection.
    # cv_modulation_variance 0 = auto: V_A puts the SNR at the operating point of the LDPC code that gives the most
    # finite-size key for frames of cv_symbols_per_frame (qkdd.hal.sim.cv_run.operating_modulation_variance).
    cv_modulation_variance: float = field(default=0.0, metadata=meta(check=in_range(0, 1000)))
    cv_excess_noise: float = field(default=0.01, metadata=meta(check=in_range(0, 10)))
    cv_electronic_noise: float = field(default=0.01, metadata=meta(check=in_range(0, 10)))
    cv_detector_efficiency: float = field(default=0.6, metadata=meta(check=in_range(0.01, 1)))
    cv_detection: str = field(default="homodyne", metadata=meta(check=lambda d: None if d in ("homodyne", "heterodyne")
                                                                 else "must be homodyne or heterodyne"))
    cv_symbols_per_frame: int = field(default=4_000_000, metadata=meta(check=in_range(1000, 1 << 24)))
    cv_symbol_rate_hz: float = field(default=1e8, metadata=meta(check=in_range(1, 1e11)))
    cv_cloner_excess_noise: float = field(default=0.0, metadata=meta(check=in_range(0, 10)))   # Eve's cloner

    @classmethod
    def expand_table(cls, table: dict, key: str) -> dict:
        """The table with its `system` preset's values under the keys it does not set itself."""
        name = table.get("system")
        if not isinstance(name, str) or name not in SYSTEMS:
            return table                    # no preset, or a bad name that the field's check reports
        return {**preset(name).sim_fields(), **table}

    def validate(self, key: str) -> None:
        try:
            self.params("bb84")
        except ValueError as exc:
            field_name = str(exc).split(":", 1)[0].strip()
            known = field_name if field_name in {f.name for f in dataclasses.fields(self)} else None
            raise ConfigError(f"{key}.{known}" if known else key, str(exc)) from None
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"{key}.seed", f"must be >= 0, got {self.seed}")
        if self.seed is not None and not self.allow_insecure_seed:
            raise ConfigError(f"{key}.seed", "makes the simulated source reproducible, so anyone who knows the "
                              "seed knows the keys; only for tests: set allow_insecure_seed = true in the same table")

    def params(self, protocol: str) -> SimParams:
        """The simulator parameters of this section for `protocol` (bb84 or e91)."""
        names = set(SimParams.field_names())
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        if protocol == "e91":
            other = (1.0 - self.e91_bob_key_prob) / 3.0       # Bob's codes: 22.5, -22.5, 0 (key), 45 deg
            values.update(e91_alice_prob=(self.e91_alice_key_prob, 1.0 - self.e91_alice_key_prob),
                          e91_bob_prob=(other, other, self.e91_bob_key_prob, other))
        return SimParams(protocol=protocol, **values)

    def cv_settings(self) -> "CvChannelSettings":
        """The GG02 simulator settings of this section (protocol "cvqkd")."""
        from qkdd.hal.sim.cv_channel import CvChannelSettings
        from qkdd.hal.sim.cv_run import operating_modulation_variance
        from qkdd.protocols.cvqkd import CvParams
        params = CvParams(distance_km=self.distance_km, alpha_db_per_km=self.fiber_loss_db_per_km,
                          excess_noise=self.cv_excess_noise, eta_det=self.cv_detector_efficiency,
                          electronic_noise=self.cv_electronic_noise, detection=self.cv_detection)
        variance = self.cv_modulation_variance or operating_modulation_variance(params,
                                                                                symbols=self.cv_symbols_per_frame)
        return CvChannelSettings(dataclasses.replace(params, modulation_variance=variance),
                                 cloner_excess_noise=self.cv_cloner_excess_noise)

    def initial_attack(self) -> Attack:
        attack = Attack.parse(self.attack)
        return Attack(attack.kind, attack.fraction, self.blinding_power_w)

    def initial_drift(self) -> Drift:
        return Drift(extra_loss_db=self.extra_loss_db, misalignment=self.misalignment_drift)
