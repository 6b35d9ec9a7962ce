"""Work sent to a trio worker thread with the thread CPU time it took reported to a callback: the link's
CPU by frame stage and the simulated devices' own CPU (/v1 links/{id}/metrics `cpu_s`)."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import trio

T = TypeVar("T")


async def run_sync_counted(on_cpu: Callable[[float], None], fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a worker thread; `on_cpu(seconds)` in that thread once it returns or raises."""
    def counted() -> T:
        started_s = time.thread_time()
        try:
            return fn(*args)
        finally:
            on_cpu(time.thread_time() - started_s)      # callers add a float: atomic under the GIL
    return await trio.to_thread.run_sync(counted)
