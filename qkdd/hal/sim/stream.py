"""Reading the simulated quantum channel's messages from a trio stream, with the two timeouts both
devices use: how long the line may stay idle between messages, and how long one message may take."""
from __future__ import annotations

import trio

from qkdd.hal.sim import wire

RECEIVE_BYTES = 1 << 16


class ConnectionLost(Exception):
    """The quantum-channel connection ended or idled between messages; the device reconnects."""


async def read_message(stream: trio.abc.Stream, receiver: wire.Receiver, *, idle_timeout_s: float,
                       message_timeout_s: float) -> wire.Message:
    """The next message: its first byte within idle_timeout_s, the rest within message_timeout_s.

    A connection that ends or idles between messages is ConnectionLost (reconnect quietly); one that ends
    or stalls in the middle of a message is a WireError (truncated data is reported)."""
    started = receiver.bytes_buffered() > 0
    with trio.move_on_after(message_timeout_s if started else idle_timeout_s) as scope:
        while (message := receiver.next_message()) is None:
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
