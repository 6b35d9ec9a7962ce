"""The HTTP access log writes its lines in the event loop's idle moments, or MAX_DELAY_S late at most
when the loop never idles, each line stamped with the time its exchange ended; and all of them when the
listener stops."""
from __future__ import annotations

import logging
import time

import trio

from qkdd.http import access_log
from qkdd.http.access_log import AccessLog


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logger_with_lines(level: int = logging.INFO) -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"qkdd.test.access.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(level)
    lines = Lines()
    logger.addHandler(lines)
    return logger, lines


async def wait_until(condition) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.001)


def run_beside_writer(log: AccessLog, body):
    """trio.run of `await body(nursery)` with the log's writer running in that nursery; body's result."""
    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            result = await body(nursery)
            nursery.cancel_scope.cancel()
        return result
    return trio.run(main)


def test_lines_wait_for_an_idle_moment_and_carry_the_exchange_end_time():
    logger, lines = logger_with_lines()
    log = AccessLog(logger, "api")

    async def body(nursery):
        noted_at = time.time()
        log.note("ab12", "GET", "/api/v1/keys/sae-b/enc_keys", 200, 1.26, "127.0.0.1:5555")
        assert lines.records == []                      # not written while the caller runs
        await wait_until(lambda: lines.records)
        return noted_at

    noted_at = run_beside_writer(log, body)
    [record] = lines.records
    assert record.getMessage() == "request" and record.levelno == logging.INFO
    assert (record.listener, record.request_id, record.method, record.path, record.status, record.duration_ms,
            record.client) == ("api", "ab12", "GET", "/api/v1/keys/sae-b/enc_keys", 200, 1.3, "127.0.0.1:5555")
    assert abs(record.created - noted_at) < 0.01 and 0 <= record.msecs < 1000


def test_a_loop_that_never_idles_still_gets_its_lines_within_the_delay():
    """On trio's MockClock, a task that is always runnable and takes a mock millisecond per step: the
    loop never idles, and the lines are written once MAX_DELAY_S has passed since they were noted."""
    from trio.testing import MockClock

    logger, lines = logger_with_lines()
    log = AccessLog(logger, "api")
    clock = MockClock()
    step_s = 0.001

    async def busy():                                   # always runnable: the loop never idles
        while True:
            clock.jump(step_s)
            await trio.sleep(0)

    async def body(nursery):
        nursery.start_soon(busy)
        await trio.sleep(0.01)
        for number in range(40):
            log.note(f"id{number}", "GET", "/x", 200, 0.1, "client")
        noted = trio.current_time()
        while len(lines.records) < 40:
            assert trio.current_time() - noted < 10 * access_log.MAX_DELAY_S, "the lines never came"
            await trio.sleep(0)
        return trio.current_time() - noted

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            result = await body(nursery)
            nursery.cancel_scope.cancel()
        return result

    waited = trio.run(main, clock=clock)
    assert access_log.MAX_DELAY_S <= waited <= access_log.MAX_DELAY_S + 10 * step_s     # a few scheduler passes
    assert [record.request_id for record in lines.records] == [f"id{number}" for number in range(40)]


def test_flush_writes_what_is_left_and_nothing_is_noted_below_the_logger_level():
    logger, lines = logger_with_lines()
    log = AccessLog(logger, "api")
    for number in range(3):
        log.note(f"id{number}", "POST", "/y", 503, 2.0, "client")
    assert lines.records == []
    log.flush()
    assert [record.request_id for record in lines.records] == ["id0", "id1", "id2"]

    quiet_logger, quiet_lines = logger_with_lines(logging.WARNING)
    quiet = AccessLog(quiet_logger, "api")
    quiet.note("id9", "GET", "/z", 200, 1.0, "client")
    quiet.flush()
    assert quiet_lines.records == []


def test_the_idle_wait_is_trios_own_without_importing_trio_testing():
    """The writer's idle wait is trio.testing.wait_all_tasks_blocked itself, imported from where trio keeps it:
    `import trio.testing` imports pytest too wherever it is installed (a daemon's restart paid for it)."""
    import trio.testing

    assert access_log.wait_all_tasks_blocked is trio.testing.wait_all_tasks_blocked
