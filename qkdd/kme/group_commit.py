"""Group commit for the KME's blocking store calls: calls that arrive while a batch is being written wait
and go together in the next one, in one worker thread and one transaction per store (one fsync each
instead of one per call). Each call still succeeds or fails on its own (stores run methods in savepoints).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import trio


class _Call:
    __slots__ = ("function", "args", "done", "result", "error")

    def __init__(self, function: Callable, args: tuple) -> None:
        self.function = function
        self.args = args
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """`await committer.call(function, *args)` runs `function(*args)` inside `open_batch()` (a context
    manager that opens one transaction per store, e.g. KeyStore.batch) together with the calls queued
    beside it. `run()` is the worker; it lives in the owner's nursery."""

    def __init__(self, open_batch: Callable[[], contextlib.AbstractContextManager], max_batch: int = 256) -> None:
        self._open_batch = open_batch
        self._max_batch = max_batch
        self._queue: list[_Call] = []
        self._wakeup = trio.Event()

    async def call(self, function: Callable, *args: Any) -> Any:
        call = _Call(function, args)
        self._queue.append(call)
        self._wakeup.set()
        await call.done.wait()      # the worker always finishes a batch it took (shielded)
        if call.error is not None:
            raise call.error
        return call.result

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._run_batch, batch)
                for call in batch:
                    call.done.set()

    def _run_batch(self, batch: list[_Call]) -> None:
        try:
            with self._open_batch():
                for call in batch:
                    try:
                        call.result = call.function(*call.args)
                    except Exception as exc:     # handed to the caller
                        call.error = exc
        except Exception as exc:                 # the commit itself failed: every call fails
            for call in batch:
                call.error = exc
