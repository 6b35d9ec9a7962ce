"""Work sent to a trio worker thread with the thread CPU time it took reported to a callback: the link's
CPU by frame stage and the simulated devices' own CPU (/v1 links/{id}/metrics `cpu_s`)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import trio

T = TypeVar("T")


async def run_sync_counted(on_cpu: Callable[[float], None], fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a worker thread, then `on_cpu(seconds)` with the thread CPU it took, whether it returned
    or raised. The callback runs on the event loop's thread, so callers' sums need no lock."""
    spent_s = 0.0

    def counted() -> T:
        nonlocal spent_s
        started_s = time.thread_time()
        try:
            return fn(*args)
        finally:
            spent_s = time.thread_time() - started_s
    try:
        return await trio.to_thread.run_sync(counted)
    finally:
        on_cpu(spent_s)
