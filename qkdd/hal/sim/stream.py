"""Reading the simulated quantum channel's messages from a trio stream, with the two timeouts both
devices use: how long the line may stay idle between messages, and how long one message may take."""
from __future__ import annotations

import time
from typing import Callable

import trio

from qkdd.hal.sim import wire
from qkdd.thread_cpu import run_sync_counted

RECEIVE_BYTES = 1 << 16
THREAD_PARSE_BYTES = 1 << 20     # a message body this large is checked and copied out in a worker thread


class ConnectionLost(Exception):
    """The quantum-channel connection ended or idled between messages; the device reconnects."""


async def read_message(stream: trio.abc.Stream, receiver: wire.Receiver, *, idle_timeout_s: float,
                       message_timeout_s: float, on_cpu: Callable[[float], None] = lambda seconds: None
                       ) -> wire.Message:
    """The next message: its first byte within idle_timeout_s, the rest within message_timeout_s.

    A connection that ends or idles between messages is ConnectionLost (reconnect quietly); one that ends
    or stalls in the middle of a message is a WireError (truncated data is reported). A large message
    (a frame of detections) is checked in a worker thread, so the event loop never waits for it."""
    started = receiver.bytes_buffered() > 0
    with trio.move_on_after(message_timeout_s if started else idle_timeout_s) as scope:
        while (message := await _next_message(receiver, on_cpu)) is None:
            data = await stream.receive_some(max(RECEIVE_BYTES, min(receiver.bytes_wanted(), 1 << 20)))
            if not data:
                if started:
                    raise wire.WireError(f"quantum channel: connection closed mid-message "
                                         f"(truncated after {receiver.bytes_buffered()} bytes)")
                raise ConnectionLost("the other end closed the connection")
            if not started:
                started = True
                scope.deadline = trio.current_time() + message_timeout_s
            receiver.receive_data(data)
        return message
    if started:
        raise wire.WireError(f"quantum channel: message stalled for {message_timeout_s:g} s "
                             f"after {receiver.bytes_buffered()} bytes")
    raise ConnectionLost(f"no message for {idle_timeout_s:g} s")


async def _next_message(receiver: wire.Receiver, on_cpu: Callable[[float], None]) -> wire.Message | None:
    """The next message if complete; a large one parsed in a worker thread, a smaller one here. Either way the
    parse's CPU is the device's (on_cpu)."""
    body_bytes = receiver.ready_body_bytes()
    if body_bytes >= THREAD_PARSE_BYTES:
        return await run_sync_counted(on_cpu, receiver.next_message)
    if not body_bytes:
        return receiver.next_message()      # a header, a message without body, or more bytes needed
    started_s = time.thread_time()
    message = receiver.next_message()
    on_cpu(time.thread_time() - started_s)
    return message
