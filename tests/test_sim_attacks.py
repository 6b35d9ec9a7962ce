"""Attacks of the literature on the simulated link, judged by the protocol engines.

Intercept-resend on a fraction p of pulses adds p/4 to the QBER (Gisin, Ribordy, Tittel, Zbinden,
RMP 74, 145 (2002)); photon-number splitting (Brassard, Lutkenhaus, Mor, Sanders, PRL 85, 1330
(2000)) keeps the signal gain and QBER but starves the weaker decoy pulses (Hwang, PRL 91, 057901 (2003));
detector blinding (Lydersen et al., Nature Photonics 4, 686 (2010)) is invisible in gain and QBER and
caught only by the receiver's photocurrent monitor.
"""
import math

from qkdd.hal.sim import Attack, Drift, SimParams, Simulator
from qkdd.hal.sim.montecarlo import run
from qkdd.hal.sim.tally import Bb84Tally

# 50 km, good detectors, symmetric bases: the honest link yields a finite key from 1e9 pulses.
LINK = SimParams(distance_km=50, detector_efficiency=0.1, misalignment=0.01, q_x=0.5)
PULSES = 10 ** 9


def _sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_honest_link_gives_a_key():
    report = run(LINK, PULSES, seed=11)
    assert not report["abort"], report["abort_reason"]
    assert report["key_length_bits"] > 10_000
    assert abs(report["qber_x"] - 0.01) < 0.002


def test_intercept_resend_all_pulses_gives_25_percent_and_aborts():
    params = LINK.replace(misalignment=0.0)
    report = run(params, 2 * 10 ** 8, seed=12, attack=Attack("intercept-resend", 1.0))
    n = report["sifted_bits"]
    assert abs(report["qber_x"] - 0.25) <= 5 * _sigma(0.25, report["sifted_bits_x"]) + 0.001
    assert report["abort"] and report["key_length_bits"] == 0
    assert n > 0


def test_intercept_resend_a_fifth_of_pulses_gives_5_percent():
    params = LINK.replace(misalignment=0.0)
    report = run(params, 2 * 10 ** 8, seed=13, attack=Attack.parse("intercept-resend:0.2"))
    assert abs(report["qber_x"] - 0.05) <= 5 * _sigma(0.05, report["sifted_bits_x"]) + 0.001
    # gains are untouched: Eve resends as many photons as she took
    assert abs(report["gain"]["signal"] / report["gain_expected"]["signal"] - 1) < 0.01


def test_pns_is_invisible_without_decoys_but_decoys_expose_it():
    honest = run(LINK.replace(decoy="none"), PULSES, seed=14)
    attacked = run(LINK.replace(decoy="none"), PULSES, seed=14, attack=Attack("pns"))
    n = attacked["sifted_bits_x"]
    assert abs(attacked["qber_x"] - honest["qber_x"]) <= 5 * _sigma(honest["qber_x"], n)
    q = attacked["gain_expected"]["signal"]
    assert abs(attacked["gain"]["signal"] - q) <= 5 * math.sqrt(q / PULSES)
    decoy = run(LINK, PULSES, seed=15, attack=Attack("pns"))
    assert decoy["abort"] and decoy["key_length_bits"] == 0
    assert "single-photon" in decoy["abort_reason"]
    # the signature: signal gain as expected, decoy gain far below it
    assert decoy["gain"]["decoy"] < 0.5 * decoy["gain_expected"]["decoy"]


def test_blinding_is_invisible_and_aborts_only_with_the_monitor():
    attack = Attack("blinding")
    blind = run(LINK, PULSES, seed=16, attack=attack)
    assert abs(blind["qber_x"] - LINK.misalignment) < 0.003
    assert abs(blind["gain"]["signal"] / blind["gain_expected"]["signal"] - 1) < 0.01
    assert not blind["abort"] and blind["key_length_bits"] > 0        # Eve holds this key
    monitored = run(LINK, PULSES, seed=16, attack=attack, monitor=True)
    assert monitored["abort"] and monitored["key_length_bits"] == 0
    assert "monitor" in monitored["abort_reason"]
    honest_monitored = run(LINK, PULSES, seed=16, monitor=True)
    assert not honest_monitored["abort"]


def test_attack_and_drift_switch_at_run_time():
    sim = Simulator(LINK.replace(misalignment=0.0), seed=17)

    def qber_of_next(slots: int) -> float:
        tally = Bb84Tally()
        for frame in sim.frames(slots):
            tally.add(frame)
        return float(tally.errors.sum() / tally.sifted.sum())

    assert qber_of_next(10 ** 8) < 0.005
    sim.attack = Attack("intercept-resend", 1.0)
    assert abs(qber_of_next(10 ** 8) - 0.25) < 0.01
    sim.attack = Attack()
    sim.drift = Drift(misalignment=0.04)
    assert abs(qber_of_next(10 ** 8) - 0.04) < 0.005
    before = sim.expected()["click_prob"]
    sim.drift = Drift(extra_loss_db=3.0, misalignment=0.04)
    assert abs(sim.expected()["click_prob"] / before - 10 ** -0.3) < 0.01
    assert sim.realign() == Drift(extra_loss_db=3.0)
    assert qber_of_next(10 ** 8) < 0.005
