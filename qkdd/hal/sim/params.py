"""Simulator parameters with their units, validated with messages that name the parameter.

Defaults: the GYS link of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Table I (alpha 0.21 dB/km, eta_Bob
4.5 %, Y0 1.7e-6 i.e. 8.5e-7 per detector, e_d 3.3 %), the decoy settings of qkdd.protocols.bb84_finite,
a 1 GHz clock.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from qkdd.protocols.channel import check_finite, check_non_negative, check_probability

ATTACK_KINDS = ("none", "intercept-resend", "pns", "blinding")
PROTOCOLS = ("bb84", "e91")
DECOY_MODES = ("vacuum-weak", "none")
PAIR_STATISTICS = ("thermal", "poisson")


@dataclass(frozen=True)
class Attack:
    """Eve's action on the quantum channel. kind: none | intercept-resend | pns | blinding."""

    kind: str = "none"
    fraction: float = 1.0            # intercept-resend: fraction of pulses intercepted
    blinding_power_w: float = 1e-3   # CW blinding power at Bob's detectors (Lydersen et al. 2010: ~1 mW)

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"attack: must be one of {', '.join(ATTACK_KINDS)}, got {self.kind!r}")
        check_probability("attack fraction", self.fraction)
        check_non_negative("blinding_power_w", self.blinding_power_w)

    @classmethod
    def parse(cls, text: str) -> "Attack":
        """'none', 'pns', 'blinding', 'intercept-resend' or 'intercept-resend:P' (fraction P)."""
        kind, _, arg = text.strip().partition(":")
        if kind == "intercept-resend" and arg:
            try:
                fraction = float(arg)
            except ValueError:
                raise ValueError(f"attack: intercept-resend fraction must be a number, got {arg!r}") from None
            return cls(kind, fraction)
        if arg:
            raise ValueError(f"attack: {kind!r} takes no argument, got {text!r}")
        return cls(kind)


@dataclass(frozen=True)
class Drift:
    """Slow changes of the link: extra attenuation (bends, connectors) and polarisation misalignment."""

    extra_loss_db: float = 0.0
    misalignment: float = 0.0

    def __post_init__(self) -> None:
        check_non_negative("extra_loss_db", self.extra_loss_db)
        v = check_non_negative("misalignment drift", self.misalignment)
        if v > 0.5:
            raise ValueError(f"misalignment drift: must be <= 0.5, got {self.misalignment!r}")


@dataclass(frozen=True)
class SimParams:
    protocol: str = "bb84"
    distance_km: float = 25.0
    fiber_loss_db_per_km: float = 0.21
    detector_efficiency: float = 0.045
    dark_count_prob: float = 8.5e-7          # per gate and detector
    misalignment: float = 0.033              # e_d
    afterpulse_prob: float = 0.0             # per click, next gate
    clock_hz: float = 1e9
    # BB84 source: three intensities (Lim et al. 2014 notation mu1 > mu2 + mu3, mu2 > mu3 >= 0)
    decoy: str = "vacuum-weak"
    mu_signal: float = 0.5
    mu_decoy: float = 0.1
    mu_vacuum: float = 0.0
    p_signal: float = 0.8
    p_decoy: float = 0.1
    q_x: float = 0.9                         # probability of the key basis X, for Alice and Bob
    # E91 source
    pair_mean: float = 0.01                  # mean pair number per slot (2 lambda)
    pair_statistics: str = "thermal"         # thermal: single-mode SPDC; poisson: many modes per gate
    source_position_km: float | None = None  # from Alice; None: midpoint
    e91_alice_prob: tuple[float, float] = (0.5, 0.5)
    e91_bob_prob: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.decoy not in DECOY_MODES:
            raise ValueError(f"decoy: must be one of {', '.join(DECOY_MODES)}, got {self.decoy!r}")
        check_non_negative("distance_km", self.distance_km)
        check_non_negative("fiber_loss_db_per_km", self.fiber_loss_db_per_km)
        for name in ("detector_efficiency", "dark_count_prob", "afterpulse_prob", "q_x", "p_signal", "p_decoy"):
            check_probability(name, getattr(self, name))
        if check_probability("misalignment", self.misalignment) > 0.5:
            raise ValueError(f"misalignment: must be <= 0.5, got {self.misalignment!r}")
        if check_finite("clock_hz", self.clock_hz) <= 0:
            raise ValueError(f"clock_hz: must be > 0, got {self.clock_hz!r}")
        for name in ("mu_signal", "mu_decoy", "mu_vacuum"):
            if check_non_negative(name, getattr(self, name)) > 10:
                raise ValueError(f"{name}: mean photon number above 10 is not a weak pulse, "
                                 f"got {getattr(self, name)!r}")
        if self.mu_signal <= 0:
            raise ValueError(f"mu_signal: must be > 0, got {self.mu_signal!r}")
        if self.protocol == "bb84" and self.decoy == "vacuum-weak":
            if not self.mu_signal > self.mu_decoy:
                raise ValueError(f"mu_signal: must exceed mu_decoy (mu > nu), got mu={self.mu_signal!r}, "
                                 f"nu={self.mu_decoy!r}")
            if not self.mu_decoy > self.mu_vacuum:
                raise ValueError(f"mu_decoy: must exceed mu_vacuum, got {self.mu_decoy!r} <= {self.mu_vacuum!r}")
            if not self.p_signal + self.p_decoy < 1.0 or self.p_signal <= 0 or self.p_decoy <= 0:
                raise ValueError(f"p_signal, p_decoy: need p_signal > 0, p_decoy > 0 and p_signal + p_decoy < 1, "
                                 f"got {self.p_signal!r}, {self.p_decoy!r}")
        if self.protocol == "e91":
            if self.pair_statistics not in PAIR_STATISTICS:
                raise ValueError(f"pair_statistics: must be one of {', '.join(PAIR_STATISTICS)}, "
                                 f"got {self.pair_statistics!r}")
            if not 0 < check_finite("pair_mean", self.pair_mean) <= 10:
                raise ValueError(f"pair_mean: must be in (0, 10], got {self.pair_mean!r}")
            if self.source_position_km is not None:
                pos = check_non_negative("source_position_km", self.source_position_km)
                if pos > self.distance_km:
                    raise ValueError(f"source_position_km: must lie on the fiber, 0..{self.distance_km}, got {pos}")
            for name, probs, n in (("e91_alice_prob", self.e91_alice_prob, 2), ("e91_bob_prob", self.e91_bob_prob, 4)):
                if len(probs) != n or abs(sum(check_probability(name, p) for p in probs) - 1.0) > 1e-9:
                    raise ValueError(f"{name}: need {n} probabilities summing to 1, got {probs!r}")

    def replace(self, **changes: object) -> "SimParams":
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def class_probabilities(self) -> tuple[float, float, float]:
        """Probability of signal, decoy, vacuum pulses (all signal without decoys)."""
        if self.decoy == "none":
            return (1.0, 0.0, 0.0)
        return (self.p_signal, self.p_decoy, 1.0 - self.p_signal - self.p_decoy)

    @property
    def intensities(self) -> tuple[float, float, float]:
        return (self.mu_signal, self.mu_decoy, self.mu_vacuum)

    def native(self, attack: Attack, drift: Drift) -> dict:
        """The flat field mapping of the C struct qkd_sim_params."""
        z_prob = 1.0 - self.q_x   # basis code 0 is Z, 1 is X
        source = self.source_position_km if self.source_position_km is not None else self.distance_km / 2
        return {
            "protocol": self.protocol, "intensity": self.intensities, "class_prob": self.class_probabilities,
            "alice_z_prob": z_prob, "bob_z_prob": z_prob, "pair_mean": self.pair_mean,
            "pair_statistics": self.pair_statistics,
            "source_position_km": source, "e91_alice_prob": self.e91_alice_prob,
            "e91_bob_prob": self.e91_bob_prob, "fiber_loss_db_per_km": self.fiber_loss_db_per_km,
            "distance_km": self.distance_km, "detector_efficiency": self.detector_efficiency,
            "dark_count_prob": self.dark_count_prob, "misalignment": self.misalignment,
            "afterpulse_prob": self.afterpulse_prob, "clock_hz": self.clock_hz,
            "extra_loss_db": drift.extra_loss_db, "misalignment_drift": drift.misalignment,
            "attack": attack.kind, "attack_fraction": attack.fraction,
            "blinding_power_w": attack.blinding_power_w,
        }
