"""GG02 with reverse reconciliation: the closed-form Holevo bound against a direct covariance-matrix
computation, the repeaterless PLOB bound, the 3 dB limit that reverse reconciliation beats, and input checks."""
import math

import pytest

from qkdd.protocols.cvqkd import CvParams, gg02_key_rate, holevo_bound_untrusted_detector


@pytest.mark.parametrize("detection", ["homodyne", "heterodyne"])
@pytest.mark.parametrize("modulation_variance, distance_km, excess_noise",
                         [(4.0, 10.0, 0.0), (10.0, 25.0, 0.02), (2.5, 60.0, 0.05), (30.0, 5.0, 0.1)])
def test_closed_form_holevo_bound_matches_the_covariance_matrix(detection, modulation_variance, distance_km,
                                                                 excess_noise):
    params = CvParams(modulation_variance=modulation_variance, distance_km=distance_km, excess_noise=excess_noise,
                      eta_det=1.0, electronic_noise=0.0, detection=detection)
    direct = holevo_bound_untrusted_detector(modulation_variance, params.transmittance, excess_noise, detection)
    assert gg02_key_rate(params).holevo_bound == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_lossless_noiseless_channel_leaks_nothing():
    params = CvParams(modulation_variance=9.0, eta_det=1.0, electronic_noise=0.0, excess_noise=0.0, beta=1.0)
    rate = gg02_key_rate(params)
    assert rate.holevo_bound == pytest.approx(0.0, abs=1e-12)
    assert rate.key_rate_per_symbol == pytest.approx(0.5 * math.log2(10.0))   # Shannon: 1/2 log2(1 + V_A)


@pytest.mark.parametrize("detection", ["homodyne", "heterodyne"])
@pytest.mark.parametrize("distance_km", [5.0, 20.0, 50.0, 120.0])
def test_key_rate_stays_below_the_plob_bound(detection, distance_km):
    # Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017): -log2(1 - T) per channel use.
    params = CvParams(modulation_variance=20.0, distance_km=distance_km, excess_noise=0.0, eta_det=1.0,
                      electronic_noise=0.0, beta=1.0, detection=detection)
    rate = gg02_key_rate(params)
    assert 0.0 < rate.key_rate_per_symbol < -math.log2(1.0 - params.transmittance)


def test_reverse_reconciliation_beats_the_3_db_limit():
    # Direct reconciliation gives no key once T < 1/2; reverse reconciliation does (Grosshans et al. 2003).
    params = CvParams(distance_km=40.0, excess_noise=0.0, eta_det=1.0, electronic_noise=0.0, beta=1.0)
    assert params.transmittance < 0.5
    assert gg02_key_rate(params).key_rate_per_symbol > 0.0


def test_excess_noise_and_imperfect_reconciliation_reduce_the_key():
    rates = [gg02_key_rate(CvParams(distance_km=50.0, excess_noise=xi)).key_rate_per_symbol for xi in (0.0, 0.05, 0.2)]
    assert rates[0] > rates[1] > rates[2] == 0.0
    assert gg02_key_rate(CvParams(distance_km=20.0, beta=0.9)).key_rate_per_symbol \
        < gg02_key_rate(CvParams(distance_km=20.0, beta=0.98)).key_rate_per_symbol


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(modulation_variance=0.0), "modulation_variance"),
    (dict(distance_km=-1.0), "distance_km"),
    (dict(excess_noise=-0.01), "excess_noise"),
    (dict(eta_det=1.3), "eta_det"),
    (dict(beta=0.0), "beta"),
    (dict(detection="photon-counting"), "detection"),
])
def test_bad_parameters_raise_clear_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        CvParams(**kwargs)
