"""The published-system presets (qkdd.hal.sim.systems): their analytic finite-key rates against the papers'
reported figures, the `[links.sim] system` key, and `qkdctl sim rate --system`."""
import json

import pytest

from qkdd.config_schema import ConfigError, build
from qkdd.ctl import main as qkdctl
from qkdd.hal.sim.settings import SimConfig
from qkdd.hal.sim.systems import SYSTEMS, preset


@pytest.mark.parametrize("name,reported_bits_per_s", [("yuan2018", 13.72e6), ("li2023", 115.8e6)])
def test_presets_give_the_papers_rates_at_10_km(name, reported_bits_per_s):
    # Yuan et al. JLT 36, 3427 (2018): 13.72 Mb/s over a 2 dB (10 km) channel, 10^8-bit blocks, 1 GHz;
    # Li et al. Nat. Photon. 17, 416 (2023): 115.8 Mb/s over 10 km at 2.5 GHz (eta_bob calibrated to these)
    rate = preset(name).analytic_rate()
    assert rate["distance_km"] == 10.0 and rate["n_x"] == 1e8 and not rate["abort"]
    assert rate["analytic_secret_bits_per_s"] == pytest.approx(reported_bits_per_s, rel=0.01)
    assert rate["reported_secret_bits_per_s"] == reported_bits_per_s


def test_rate_falls_with_distance_and_small_blocks_abort():
    yuan = preset("yuan2018")
    rates = [yuan.analytic_rate(km)["analytic_secret_bits_per_s"] for km in (10, 30, 50)]
    assert rates[0] > rates[1] > rates[2] > 0
    # the biased basis choice (q_x 0.9) leaves too few Z detections for Lim's bound in small blocks
    assert yuan.analytic_rate(10, 1e6)["abort"]


def test_system_key_fills_the_section_and_explicit_keys_win():
    config = build(SimConfig, {"system": "li2023", "distance_km": 10.0, "misalignment": 0.02}, "links.sim")
    li = SYSTEMS["li2023"]
    assert (config.clock_hz, config.detector_efficiency, config.mu_signal, config.q_x) == (
        li.clock_hz, li.detector_efficiency, li.mu_signal, li.q_x)
    assert config.misalignment == 0.02                    # the table's own key overrides the preset
    params = config.params("bb84")
    assert params.clock_hz == 2.5e9 and params.dark_count_prob == li.dark_count_prob
    assert build(SimConfig, {}, "links.sim").system is None


def test_unknown_system_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"links\.sim\.system: unknown system 'toshiba', known: yuan2018, li2023"):
        build(SimConfig, {"system": "toshiba"}, "links.sim")


def test_qkdctl_sim_rate_prints_a_presets_rate(capsys):
    assert qkdctl(["sim", "rate", "--system", "yuan2018", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["system"] == "yuan2018" and out["clock_hz"] == 1e9
    assert out["analytic_secret_bits_per_s"] == pytest.approx(13.72e6, rel=0.01)
    assert qkdctl(["sim", "rate", "--system", "li2023", "--distance-km", "50"]) == 0
    text = capsys.readouterr().out
    assert "analytic secret bits per s" in text and "Nature Photonics" in text
