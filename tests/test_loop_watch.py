"""The event loop's watch (qkdd.loop_watch): a step that blocks the loop is measured as a stall with its task's
name and exported on /metrics; the daemon's own loop is watched."""
from __future__ import annotations

import logging
import time

import trio

from qkdd.loop_watch import STALL_THRESHOLD_S, LoopWatch
from qkdd.metrics import Metrics

BLOCK_S = 0.2


async def _blocks_the_loop() -> None:
    await trio.sleep(0)
    time.sleep(BLOCK_S)               # a step that never yields: what a stall is
    await trio.sleep(0)


async def _busy_in_a_thread() -> None:
    await trio.to_thread.run_sync(time.sleep, BLOCK_S)       # the same wait off the loop: no stall


def test_a_blocking_step_is_the_worst_stall_with_its_task_and_cpu_time_apart_from_wall_time(caplog):
    watch = LoopWatch(trace_s=0)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy_in_a_thread)
            nursery.start_soon(_blocks_the_loop)

    with caplog.at_level(logging.WARNING, logger="qkdd.loop"):
        trio.run(main, instruments=[watch])
    assert watch.worst_stall_s >= BLOCK_S and watch.stalls >= 1 and watch.ticks > 2
    assert watch.worst_task.endswith("_blocks_the_loop")
    assert watch.worst_stall_cpu_s < BLOCK_S / 2          # it slept: wall time, not CPU time
    assert watch.snapshot()["worst_stall_task"] == watch.worst_task
    assert not caplog.records                             # under LOG_STALL_S: no line


def test_work_in_worker_threads_is_no_stall():
    watch = LoopWatch(trace_s=0)
    trio.run(_busy_in_a_thread, instruments=[watch])
    assert watch.worst_stall_s < STALL_THRESHOLD_S and watch.stalls == 0


def test_the_trace_names_where_a_long_stall_spent_its_time(caplog, monkeypatch):
    monkeypatch.setattr("qkdd.loop_watch.LOG_STALL_S", BLOCK_S / 2)
    watch = LoopWatch(trace_s=0.02)
    try:
        with caplog.at_level(logging.WARNING, logger="qkdd.loop"):
            trio.run(_blocks_the_loop, instruments=[watch])
    finally:
        watch.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "event loop stalled" in line and "_blocks_the_loop" in line and "samples:" in line


def test_metrics_export_the_worst_stall_and_the_count():
    watch = LoopWatch(trace_s=0)
    trio.run(_blocks_the_loop, instruments=[watch])
    metrics = Metrics()
    metrics.watch_loop(watch)
    text = metrics.exposition().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("qkd_event_loop")}
    assert values["qkd_event_loop_stall_max_seconds"] >= BLOCK_S
    assert values["qkd_event_loop_stalls_total"] == watch.stalls >= 1
    assert values["qkd_event_loop_stall_max_cpu_seconds"] == watch.worst_stall_cpu_s
