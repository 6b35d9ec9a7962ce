"""Rate-limited logging (qkdd.log_limit): a token bucket per kind through a real logger, and the
"N similar messages suppressed" line that keeps the count of what a flood cost."""
from __future__ import annotations

import logging

import pytest
import trio

from qkdd.log_limit import RateLimitedLog


class Clock:
    """Monotonic time the test moves by hand, so refill is exact."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="qkdd.test.limit")
    return caplog


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_a_flood_writes_the_burst_then_one_line_per_refill_with_the_suppressed_count(records):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("qkdd.test.limit"), burst=3, per_s=0.5, clock=clock)
    written = [limited.log(logging.WARNING, "refused", "refused connection %d", i) for i in range(100)]
    assert written == [True] * 3 + [False] * 97
    assert messages(records) == ["refused connection 0", "refused connection 1", "refused connection 2"]
    assert limited.suppressed("refused") == 97
    clock.now_s += 1.0                                   # half a token: still held back
    assert not limited.log(logging.WARNING, "refused", "refused connection %d", 100)
    clock.now_s += 1.0                                   # one token
    assert limited.log(logging.WARNING, "refused", "refused connection %d", 101)
    assert messages(records)[3:] == ["98 similar messages suppressed (refused)", "refused connection 101"]
    assert records.records[3].levelno == logging.WARNING and limited.suppressed("refused") == 0


def test_kinds_have_their_own_buckets_and_a_quiet_kind_refills_to_the_burst_only(records):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("qkdd.test.limit"), burst=2, per_s=1.0, clock=clock)
    for _ in range(5):
        limited.log(logging.INFO, "tls", "tls failed")
    assert limited.log(logging.INFO, "peer", "peer refused")       # another kind is not held back
    clock.now_s += 3600.0                                          # an hour of quiet buys `burst`, not 3600
    assert [limited.log(logging.INFO, "tls", "tls failed") for _ in range(4)] == [True, True, False, False]
    assert messages(records).count("3 similar messages suppressed (tls)") == 1


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), burst=0)
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), per_s=0)


def test_flush_writes_the_count_of_a_flood_that_no_further_message_follows(records):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("qkdd.test.limit"), burst=2, per_s=1.0, clock=clock)
    for i in range(7):
        limited.log(logging.WARNING, "refused", "refused connection %d", i)
    limited.log(logging.INFO, "tls", "tls failed")
    assert "similar messages suppressed" not in records.text
    limited.flush()
    assert messages(records)[3:] == ["5 similar messages suppressed (refused)"]
    assert records.records[3].levelno == logging.WARNING and limited.suppressed("refused") == 0
    limited.flush()                                          # written once, not again
    clock.now_s += 10.0
    assert limited.log(logging.WARNING, "refused", "refused connection %d", 7)
    assert messages(records)[3:] == ["5 similar messages suppressed (refused)", "refused connection 7"]


def test_run_writes_the_summary_after_the_interval_without_further_messages(records):
    from trio.testing import MockClock

    async def main():
        limited = RateLimitedLog(logging.getLogger("qkdd.test.limit"), burst=1, per_s=0.01, clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limited.run, 5.0)
            for _ in range(4):
                limited.log(logging.INFO, "peer", "peer refused")
            await trio.sleep(4.9)
            assert messages(records) == ["peer refused"]
            await trio.sleep(0.2)
            assert messages(records) == ["peer refused", "3 similar messages suppressed (peer)"]
            await trio.sleep(60.0)                           # nothing new held back: nothing more written
            assert len(messages(records)) == 2
            nursery.cancel_scope.cancel()
    trio.run(main, clock=MockClock(autojump_threshold=0))
