"""Afterpulses in the simulator against the closed form of its one-gate model.

Model (qkd_sim.h; the detector model of Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Sec. IV,
resolved gate by gate): each detector that clicked in gate s fires again in gate s + 1 with probability
p_ap, independently of that gate's photons. With Z-only pulses, no dark counts and no misalignment a
photon only ever lights the detector of Alice's bit, and the gates form a Markov chain over what clicked
in the previous gate: nothing (S0), one detector (S1) or both (S2). Its stationary distribution gives the
gain, the QBER and the chance that a click follows a click in closed form; the simulator must match all
three within statistical error. To first order in p_ap and the click probability P this is Lim et al.'s
Q -> Q (1 + p_ap), E Q -> E Q + p_ap Q / 2 (qkdd.protocols.channel), also checked below.
"""
from __future__ import annotations

import math

import numpy as np

from qkdd.hal.sim import SimParams, Simulator
from qkdd.protocols.channel import ChannelParams, gain as lmc_gain


def one_gate_chain(p_click: float, p_ap: float) -> dict:
    """Stationary gain, QBER and P(click | click before) of the one-gate afterpulse chain.

    A transition row lists (next state, probability, error probability of that gate's outcome). From S1
    an afterpulse (p_ap) lights the previous detector d: with a photon on d (P/2) the outcome is right;
    a photon on the other detector (P/2) makes a double click, squashed to a random bit (S2, error 1/2);
    no photon (1 - P) leaves d's value, independent of Alice's new bit (error 1/2). From S2 each detector
    afterpulses independently: none ((1 - p_ap)^2) is an ordinary gate, one acts as S1's afterpulse, two
    (p_ap^2) is a double click (error 1/2)."""
    P, a = p_click, p_ap
    ordinary = [(1, P, 0.0), (0, 1 - P, 0.0)]
    afterpulse = [(1, P / 2, 0.0), (2, P / 2, 0.5), (1, 1 - P, 0.5)]
    rows = [
        ordinary,
        [(s, (1 - a) * p, e) for s, p, e in ordinary] + [(s, a * p, e) for s, p, e in afterpulse],
        [(s, (1 - a) ** 2 * p, e) for s, p, e in ordinary]
        + [(s, 2 * a * (1 - a) * p, e) for s, p, e in afterpulse] + [(2, a * a, 0.5)],
    ]
    m = np.zeros((3, 3))
    errors_from = np.zeros(3)
    for s, row in enumerate(rows):
        for t, p, e in row:
            m[s, t] += p
            errors_from[s] += p * e
    assert np.allclose(m.sum(axis=1), 1.0)
    values, vectors = np.linalg.eig(m.T)
    pi = np.real(vectors[:, np.argmin(abs(values - 1))])
    pi /= pi.sum()
    detections = pi[1] + pi[2]
    follow = pi[1] * m[1, 1:].sum() + pi[2] * m[2, 1:].sum()
    return {"gain": detections, "qber": float(pi @ errors_from) / detections, "follow": follow / detections}


def simulate(params: SimParams, slots: int, seed: int):
    """Bob's detection slots and error flags, run in several frames (afterpulses cross frame edges)."""
    sim = Simulator(params, seed=seed)
    slot, wrong = [], []
    for frame in sim.frames(slots, max_records=1 << 18):
        slot.append(frame.bob.slot)
        wrong.append(frame.bob.outcome != frame.alice.bit)
        assert np.all(frame.alice.basis == 0) and np.all(frame.bob.basis == 0)
    return sim.expected()["click_prob"], np.concatenate(slot), np.concatenate(wrong)


def within(measured: float, expected: float, n: float, sigmas: float = 5.0) -> bool:
    return abs(measured - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


def test_afterpulse_rate_gain_and_qber_match_the_one_gate_chain():
    p_ap, slots = 0.1, 2 * 10 ** 7
    params = SimParams(distance_km=0, detector_efficiency=0.3, dark_count_prob=0.0, misalignment=0.0,
                       afterpulse_prob=p_ap, decoy="none", mu_signal=0.5, q_x=0.0)
    p_click, slot, wrong = simulate(params, slots, seed=11)
    assert math.isclose(p_click, 1 - math.exp(-0.3 * 0.5), rel_tol=1e-12)
    chain = one_gate_chain(p_click, p_ap)
    n = slot.size
    assert np.all(np.diff(slot.astype(np.int64)) > 0)
    assert within(n / slots, chain["gain"], slots)
    assert within(float(wrong.mean()), chain["qber"], n)
    followed = float(np.isin(slot + 1, slot).mean())
    assert within(followed, chain["follow"], n)
    # afterpulses are visible: the gain rises by ~p_ap (1 - P) and the QBER by ~p_ap / 2 from zero
    assert n / slots > p_click * (1 + 0.5 * p_ap) and wrong.mean() > 0.3 * p_ap


def test_without_afterpulses_the_chain_and_the_simulator_have_no_errors():
    params = SimParams(distance_km=0, detector_efficiency=0.3, dark_count_prob=0.0, misalignment=0.0,
                       afterpulse_prob=0.0, decoy="none", mu_signal=0.5, q_x=0.0)
    p_click, slot, wrong = simulate(params, 4 * 10 ** 6, seed=12)
    assert one_gate_chain(p_click, 0.0)["qber"] == 0.0
    assert not wrong.any()
    assert within(slot.size / 4e6, p_click, 4e6)


def test_the_chain_reduces_to_lim_et_al_to_first_order():
    # Lim et al. 2014 Sec. IV: Q (1 + p_ap) and QBER p_ap / 2 / (1 + p_ap) here (no other errors).
    p_ap = 0.04
    channel = ChannelParams(distance_km=50.0, alpha_db_per_km=0.2, eta_bob=0.1, y0=0.0, e_det=0.0,
                            p_afterpulse=p_ap)
    q = lmc_gain(channel, 0.5) / (1 + p_ap)
    chain = one_gate_chain(q, p_ap)
    assert math.isclose(chain["gain"], lmc_gain(channel, 0.5), rel_tol=10 * q)
    assert math.isclose(chain["qber"], p_ap / 2 / (1 + p_ap), rel_tol=10 * q)
