"""E91 / BBM92 with a CHSH test: S and QBER of a Werner state, the abort rule, Shor-Preskill and the
device-independent bound of Acin et al., PRL 98, 230501 (2007)."""
import math

import numpy as np
import pytest

from qkdd.protocols import e91
from qkdd.protocols.entropy import binary_entropy


def sampled_counts(visibility, per_pair, rng):
    """Coincidences drawn from the quantum prediction P(agree) = (1 + V cos 2(a - b)) / 2 per setting pair."""
    def pair(a, b):
        e = visibility * math.cos(2 * math.radians(e91.ALICE_ANGLES_DEG[a] - e91.BOB_ANGLES_DEG[b]))
        agree = int(rng.binomial(per_pair, (1 + e) / 2))
        return e91.Correlation(agree, per_pair - agree)
    return e91.E91Counts(chsh=tuple(pair(a, b) for a, b, _ in e91.CHSH_TERMS),
                         key_z=pair(*e91.KEY_PAIRS["z"]), key_x=pair(*e91.KEY_PAIRS["x"]), pairs_emitted=0)


@pytest.mark.parametrize("visibility", [1.0, 0.95, 0.85, 0.75])
def test_werner_state_gives_s_2_sqrt2_v_and_qber_half_one_minus_v(visibility):
    s, q = e91.werner_statistics(visibility)
    assert s == pytest.approx(2 * math.sqrt(2) * visibility)
    assert q == pytest.approx((1 - visibility) / 2)
    counts = sampled_counts(visibility, 40_000, np.random.default_rng(1991))
    estimate = e91.chsh_estimate(counts)
    assert abs(estimate.s - 2 * math.sqrt(2) * visibility) < 5 * estimate.sigma + 1e-3
    assert counts.key_z.error_rate == pytest.approx((1 - visibility) / 2, abs=0.006)
    assert counts.key_x.error_rate == pytest.approx((1 - visibility) / 2, abs=0.006)


def test_werner_relation_joins_naiks_measured_chsh_value_and_bit_error_rate():
    """Naik, Peterson, White, Berglund & Kwiat, PRL 84, 4733 (2000), measured on one E91 run S = -2.665 +- 0.019,
    S' = -2.644 +- 0.019 and a key bit error rate of 3.06 +- 0.11 % (one standard error each). The Werner
    state with the visibility their error rate gives, V = 1 - 2 Q, has |S| = 2 sqrt 2 V = 2.655 +- 0.006:
    within one combined standard error of each measured value; and back, the mean |S| gives their Q."""
    qber, qber_sigma = 0.0306, 0.0011
    s, q = e91.werner_statistics(1 - 2 * qber)
    assert q == pytest.approx(qber)
    s_sigma = 2 * math.sqrt(2) * 2 * qber_sigma                 # dS/dQ = -4 sqrt 2
    for measured in (2.665, 2.644):
        assert abs(s - measured) < math.hypot(0.019, s_sigma), (s, measured)
    visibility = (2.665 + 2.644) / 2 / (2 * math.sqrt(2))
    assert e91.werner_statistics(visibility)[1] == pytest.approx(qber, abs=qber_sigma)


def test_no_key_when_s_is_at_most_2():
    # V = 1/sqrt(2) gives S = 2 exactly; V = 0.69 a local S < 2. Even with huge blocks: abort.
    for visibility in (1 / math.sqrt(2), 0.69):
        result = e91.e91_key_length(e91.expected_counts(visibility, 1e9))
        assert result.abort and result.key_length_bits == 0 and "CHSH" in result.abort_reason
        assert result.chsh_s <= 2.0 + 1e-12


def test_violation_must_be_significant_not_just_above_2():
    # S = 2.4 measured on 50 coincidences per correlator: Hoeffding delta ~ 3 -> abort; 1e6 -> key.
    small = e91.e91_key_length(e91.expected_counts(0.85, 50))
    assert small.abort and small.chsh_s > 2.3 and small.chsh_s_lower < 2
    large = e91.e91_key_length(e91.expected_counts(0.85, 1e6))
    assert not large.abort and large.key_length_bits > 0


def test_sampled_block_above_the_bound_yields_a_key_below_asymptotic():
    counts = sampled_counts(0.96, 200_000, np.random.default_rng(7))
    result = e91.e91_key_length(counts)
    assert not result.abort
    assert 0 < result.key_length_bits / counts.key_z.total < e91.shor_preskill_rate(0.02, 1.16)
    di = e91.e91_key_length(counts, device_independent=True)
    assert di.device_independent and di.key_length_bits < result.key_length_bits * 1.2


def test_device_independent_bound_at_the_ends_of_the_chsh_range():
    # S = 2: Eve may know everything (chi = 1), no key. Tsirelson S = 2 sqrt 2: chi = 0, r = 1 - h(Q).
    assert e91.eve_holevo_bound(2.0) == 1.0
    assert e91.device_independent_rate(2.0, 0.0) == 0.0
    assert e91.eve_holevo_bound(2 * math.sqrt(2)) == pytest.approx(0.0, abs=1e-12)
    assert e91.device_independent_rate(2 * math.sqrt(2), 0.02) == pytest.approx(1 - binary_entropy(0.02))


def test_device_independent_threshold_is_7_1_percent_for_depolarising_noise():
    # Acin et al. 2007: with S = 2 sqrt2 (1 - 2Q) the DI key rate is positive up to Q ~ 7.1 %.
    def rate(q):
        return 1 - binary_entropy(q) - e91.eve_holevo_bound(2 * math.sqrt(2) * (1 - 2 * q))
    low, high = 0.01, 0.2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if rate(mid) > 0 else (low, mid)
    assert low == pytest.approx(0.071, abs=0.001)


def test_shor_preskill_rate():
    assert e91.shor_preskill_rate(0.0) == 1.0
    assert e91.shor_preskill_rate(0.03) == pytest.approx(1 - 2 * binary_entropy(0.03))
    assert e91.shor_preskill_rate(0.111) == 0.0


def test_counts_from_mapping_and_bad_input():
    data = {"chsh": [{"agree": 85, "disagree": 15}] * 3 + [{"agree": 15, "disagree": 85}],
            "key_z": {"agree": 98, "disagree": 2}, "key_x": {"agree": 97, "disagree": 3}, "pairs_emitted": 1e4}
    counts = e91.E91Counts.from_mapping(data)
    assert e91.chsh_estimate(counts).s == pytest.approx(4 * 0.7)
    with pytest.raises(ValueError, match="malformed"):
        e91.E91Counts.from_mapping({"chsh": []})
    with pytest.raises(ValueError, match="chsh"):
        e91.E91Counts.from_mapping({**data, "chsh": data["chsh"][:3]})
    with pytest.raises(ValueError, match="agree"):
        e91.Correlation(-1, 3)
    with pytest.raises(ValueError, match="visibility"):
        e91.werner_statistics(1.2)
    with pytest.raises(ValueError, match="eps_pe"):
        e91.chsh_estimate(counts, eps_pe=0.0)
