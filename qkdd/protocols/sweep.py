"""Key rate against distance for each protocol `qkdctl sim rate` models over a fibre: decoy-state BB84
(asymptotic GLLP without decoys, with vacuum+weak decoys, and with infinitely many decoys) and GG02 CV-QKD.
E91's analytic rate depends on the visibility, not on the distance, so it has no curve here."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from qkdd.protocols import bb84, cvqkd
from qkdd.protocols.channel import ChannelParams

MAX_POINTS = 10_000


@dataclass(frozen=True)
class Sweep:
    distances_km: list[float]
    rates: dict[str, list[float]]          # series name -> key bits per pulse (BB84) or per symbol (CV-QKD)

    def as_dict(self) -> dict:
        return {"distance_km": self.distances_km, "key_rate_per_pulse": self.rates}


def parse_range(text: str) -> list[float]:
    """"START:STOP:STEP" (km, STOP included) -> the distances; ValueError names what is wrong."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"sweep_distance: expected START:STOP:STEP in km, got {text!r}")
    try:
        start, stop, step = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"sweep_distance: START, STOP and STEP must be numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in (start, stop, step)) or start < 0 or stop < start or step <= 0:
        raise ValueError(f"sweep_distance: need 0 <= START <= STOP and STEP > 0, got {text!r}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_POINTS:
        raise ValueError(f"sweep_distance: {count} points, at most {MAX_POINTS}")
    return [round(start + i * step, 9) for i in range(count)]


def sweep(distances_km: list[float], channel: ChannelParams, cv: cvqkd.CvParams) -> Sweep:
    """Each series at each distance; the other parameters are those given (`channel`, `cv`)."""
    # Without decoys GLLP leaves no key at a decoy protocol's mu (~0.5): that curve uses its own best mu.
    rates: dict[str, list[float]] = {f"bb84 ({decoy} decoy)" if decoy != "none" else "bb84 (no decoy, best mu)": []
                                     for decoy in bb84.DECOY_METHODS}
    rates["cvqkd (GG02, per symbol)"] = []
    names = list(rates)
    for distance in distances_km:
        at = dataclasses.replace(channel, distance_km=distance)
        for name, decoy in zip(names, bb84.DECOY_METHODS):
            rate = bb84.optimize_mu(at, decoy) if decoy == "none" else bb84.key_rate(at, decoy)
            rates[name].append(rate.key_rate_per_pulse)
        rates[names[-1]].append(cvqkd.gg02_key_rate(dataclasses.replace(cv, distance_km=distance)).key_rate_per_symbol)
    return Sweep(distances_km, rates)
