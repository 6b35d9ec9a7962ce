"""Chaos on a live link, the short version of `python -m bench.chaos`: two qkdd daemons in network
namespaces (tests/chaos_lab.py), consumers taking keys at both ends over /v1 and ETSI 014 all along, and
one fault after another: 5 % loss, a 10 s partition, an asymmetric one, kill -9 of either end five
times, the key store's filesystem full, and the wall clock stepped an hour forward at one end. After each,
no key was served twice, none was lost (both stores compared), and the service came back by itself
within 5 s of the fault's end, not counting the time the host kept the daemons waiting for a CPU
(tests/chaos_scenarios.py says exactly what is measured and why). The benchmark's figures, wall time
only, and the expiry times of keys stored during a clock step are in the README.

The scenarios run in the order written on one lab (module scope; each fixture names the one before), and
the whole file takes 80-100 s. Needs root, iptables and tc (skips otherwise); the clock step
needs libfaketime.
"""
from __future__ import annotations

import json

import pytest

from tests.chaos_lab import Lab, faketime_available
from tests.chaos_net import missing_requirements
from tests.chaos_scenarios import RESUME_LIMIT_S, SHORT, SCENARIOS

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")]

SEEDED_KEYS = 5000      # enough for this run's consumers and the ETSI 014 pools five kills drop


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("chaos"), seeded_keys=SEEDED_KEYS) as running:
        running.wait_for_session()
        running.driver.start()
        yield running


def shown(result: dict) -> str:
    """The whole verdict, for a failed assertion (pytest would abridge the dict)."""
    return json.dumps(result, indent=1, default=str)


def keeps_every_key(result: dict) -> None:
    assert result["served_twice"] == 0, shown(result)
    assert result["lost"] == 0, shown(result)
    assert result["mismatched"] == 0, shown(result)
    assert not [outcome for outcome in result["fetch_refused"] if "dropped answer" not in outcome], shown(result)
    assert result["handed_out"]["alice"] > 0 and result["handed_out"]["bob"] > 0, shown(result)


def resumes_by_itself(result: dict) -> None:
    """Back within the limit of the fault's end, less the time the host kept the daemons waiting for a CPU
    (tests/chaos_scenarios.py CpuWait): the wall time is in the verdict, and within the limit itself on a
    quiet machine (README)."""
    assert not result["crashed"], shown(result)
    assert result["resume_net_s"] is not None and result["resume_net_s"] <= RESUME_LIMIT_S, shown(result)


def test_loss_of_5_percent(lab):
    result = SCENARIOS["loss"](lab, SHORT)
    keeps_every_key(result)
    assert result["served_during_fault"] > 0, shown(result)          # TCP carries the link through the loss
    resumes_by_itself(result)


@pytest.fixture(scope="module")
def partition(lab):
    return SCENARIOS["partition"](lab, SHORT)


def test_a_10_s_partition_loses_no_key(partition):
    keeps_every_key(partition)
    assert not partition["crashed"], shown(partition)


def test_a_10_s_partition_resumes_within_5_s(partition):
    resumes_by_itself(partition)


@pytest.fixture(scope="module")
def asymmetric(lab, partition):          # (after the partition: the fixtures keep the order written)
    return SCENARIOS["asymmetric"](lab, SHORT)


def test_an_asymmetric_partition_loses_no_key(asymmetric):
    keeps_every_key(asymmetric)
    assert not asymmetric["crashed"], shown(asymmetric)


def test_an_asymmetric_partition_resumes_within_5_s(asymmetric):
    resumes_by_itself(asymmetric)


@pytest.fixture(scope="module")
def kill9(lab, asymmetric):
    return SCENARIOS["kill9"](lab, SHORT)


def test_kill_9_of_either_end_five_times_loses_no_key(lab, kill9):
    keeps_every_key(kill9)
    assert lab.restarts["a"] >= 3 and lab.restarts["b"] >= 2
    assert not kill9["crashed"], shown(kill9)


def test_kill_9_of_either_end_five_times_resumes_within_5_s_each_time(kill9):
    resumes_by_itself(kill9)


@pytest.fixture(scope="module")
def disk_full(lab, kill9):
    return SCENARIOS["disk_full"](lab, SHORT)


def test_a_full_key_store_filesystem_loses_no_key(disk_full):
    keeps_every_key(disk_full)


def test_a_full_key_store_filesystem_pauses_and_resumes_by_itself(disk_full):
    resumes_by_itself(disk_full)


@pytest.fixture(scope="module")
def clock_forward(lab, disk_full):
    if not faketime_available():
        pytest.skip("needs libfaketime (scripts/system-packages.txt)")
    return SCENARIOS["clock_forward"](lab, SHORT)


def test_the_wall_clock_stepped_an_hour_forward_at_one_end(clock_forward):
    keeps_every_key(clock_forward)
    resumes_by_itself(clock_forward)
