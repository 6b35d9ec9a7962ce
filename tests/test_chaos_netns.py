"""Chaos on a live link, the short version of `python -m bench.chaos`: two qkdd daemons in network
namespaces (tests/chaos_lab.py), consumers taking keys at both ends over /v1 and ETSI 014 all along, and
one fault after another: 5 % loss, a 10 s partition, an asymmetric one, kill -9 of either end five
times, the key store's filesystem full, and the wall clock stepped an hour forward at one end. After each,
no key was served twice, none was lost (both stores compared), and the service came back by itself
within 5 s of the fault's end (tests/chaos_scenarios.py says exactly what is measured). Where today's
daemon misses the 5 s, the test is an expected failure naming the cause; the benchmark's figures and
the expiry times of keys stored during a clock step are in the README.

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

PARTITION_DEFECT = ("a partition shorter than the peer idle timeout (20 s) leaves the session up; with TCP's "
                    "retransmission timeout capped at 1 s (qkdd/peer/tcp_tuning.py) its traffic resumes within "
                    "about 1 s of the end and the abandoned reservations are answered at once, but the first key "
                    "after 8-15 s partitions still came 3.3-9.3 s after the end on a loaded machine (README)")
KILL_DEFECT = ("after kill -9 the restarted daemon needs its start-up (Python, numpy and cryptography imports, "
               "self-tests), the handshake and the key-store resynchronisation before it serves: on a quiet "
               "machine median 1.6 s and at most 3.6 s over 100 loops (README, chaos benchmark); with only the "
               "imports a configuration uses, an immediate redial and fewer worker-thread trips, 40 loops at "
               "load average 7-11 resumed in a median of 5.5 s, at most 12.4 s (before: 9.4 s, 30.8 s; "
               "docs/performance.md): CPU-bound imports and post-processing still exceed 5 s on a loaded machine")
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
    assert not result["crashed"], shown(result)
    assert result["resume_s"] is not None and result["resume_s"] <= RESUME_LIMIT_S, shown(result)


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


@pytest.mark.xfail(reason=PARTITION_DEFECT, strict=False)
def test_a_10_s_partition_resumes_within_5_s(partition):
    resumes_by_itself(partition)


@pytest.fixture(scope="module")
def asymmetric(lab, partition):          # (after the partition: the fixtures keep the order written)
    return SCENARIOS["asymmetric"](lab, SHORT)


def test_an_asymmetric_partition_loses_no_key(asymmetric):
    keeps_every_key(asymmetric)
    assert not asymmetric["crashed"], shown(asymmetric)


@pytest.mark.xfail(reason=PARTITION_DEFECT, strict=False)
def test_an_asymmetric_partition_resumes_within_5_s(asymmetric):
    resumes_by_itself(asymmetric)


@pytest.fixture(scope="module")
def kill9(lab, asymmetric):
    return SCENARIOS["kill9"](lab, SHORT)


def test_kill_9_of_either_end_five_times_loses_no_key(lab, kill9):
    keeps_every_key(kill9)
    assert lab.restarts["a"] >= 3 and lab.restarts["b"] >= 2
    assert not kill9["crashed"], shown(kill9)


@pytest.mark.xfail(reason=KILL_DEFECT, strict=False)
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
