"""Work in a trio worker thread reports the thread CPU it took (qkdd/thread_cpu.py), also when it raises,
to a callback on the event loop's thread."""
import threading
import time

import pytest
import trio

from qkdd.thread_cpu import run_sync_counted


def _burn(seconds: float) -> str:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass
    return "done"


def test_the_worker_threads_cpu_reaches_the_callback_and_the_result_the_caller():
    counted: list[tuple[float, threading.Thread]] = []

    async def main():
        return await run_sync_counted(lambda s: counted.append((s, threading.current_thread())), _burn, 0.05)
    assert trio.run(main) == "done"
    (seconds, thread), = counted
    assert 0.05 <= seconds < 1.0
    assert thread is threading.main_thread()          # the loop's thread: sums there need no lock


def test_a_step_that_raises_is_counted_too():
    counted: list[float] = []

    def fail():
        _burn(0.02)
        raise ValueError("bad frame")

    async def main():
        await run_sync_counted(counted.append, fail)
    with pytest.raises(ValueError, match="bad frame"):
        trio.run(main)
    assert len(counted) == 1 and counted[0] >= 0.02


def test_the_event_loops_own_cpu_is_not_counted():
    counted: list[float] = []

    async def main():
        _burn(0.05)                       # on the loop's thread, before the step
        await run_sync_counted(counted.append, lambda: None)
    trio.run(main)
    assert counted[0] < 0.02
