"""The sim devices' connection handling on the simulated quantum channel, one class per end: Alice's device
listens and accepts Bob's (ListeningEnd), Bob's dials Alice's with backoff (DialingEnd). The wire (BB84/E91 or
GG02) is the device's: it names its hello and its receiver; these classes hold the one connection.
"""
from __future__ import annotations

import logging

import trio

from qkdd.hal.base import DeviceError
from qkdd.hal.sim.stream import ConnectionLost, read_message
from qkdd.hal.sim.wire import WireError

log = logging.getLogger("qkdd.hal.sim")


class HeldConnection:
    """The one quantum-channel connection a device holds (`_stream`); dropping it survives cancellation."""

    _stream: trio.SocketStream | None = None

    async def _drop_connection(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()


class ListeningEnd(HeldConnection):
    """Alice's side. The device sets listen_host, listen_port, hello_timeout_s, _listener (None), _receiver,
    _pacer and stats["connections"], and gives `_hello_message()`, the ALICE_HELLO it answers Bob's with."""

    async def init(self) -> None:
        """Listen for Bob's device on the device address."""
        if self._listener is not None:
            return
        try:
            listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        except OSError as exc:
            raise DeviceError(f"sim: cannot listen on {self.listen_host}:{self.listen_port}: {exc.strerror}") from None
        self._listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) Bob's device connects to (the bound port when 0 was asked for)."""
        if self._listener is None:
            raise DeviceError("sim: device not initialised")
        host, port = self._listener.socket.getsockname()[:2]
        return host, port

    async def close(self) -> None:
        await self._drop_connection()
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None

    def _hello_message(self) -> bytes:
        raise NotImplementedError

    def _connected(self) -> None:
        """Called once a receiver's handshake is done (a hook for the device's log line)."""

    async def _connection(self) -> trio.SocketStream:
        """The connected receiver's stream (waits for one; a receiver whose hello fails is refused)."""
        if self._listener is None:
            raise DeviceError("sim: device not initialised (call init())")
        while self._stream is None:
            try:
                stream = await self._listener.accept()
            except trio.ClosedResourceError:
                raise DeviceError("sim: device closed") from None
            self._receiver.reset()
            try:
                await read_message(stream, self._receiver, idle_timeout_s=self.hello_timeout_s,
                                   message_timeout_s=self.hello_timeout_s)     # BOB_HELLO, by the state table
                await stream.send_all(self._hello_message())
            except (ConnectionLost, WireError, trio.BrokenResourceError, OSError) as exc:
                log.warning("sim: refused a receiver connection", extra={"reason": str(exc)})
                await stream.aclose()
                continue
            self._stream = stream
            self.stats["connections"] += 1
            self._pacer.restart(trio.current_time())
            self._connected()
        return self._stream


class DialingEnd(HeldConnection):
    """Bob's side. The device sets host, port, connect_timeout_s, idle_timeout_s, message_timeout_s, _backoff,
    _receiver, _hello (None), _closed and stats["connections"], and gives `_hello_message()`, its BOB_HELLO,
    and `_send_ack()`. Bad data from Alice's device is raised (the stream dropped); a lost connection is
    reconnected, with backoff."""

    async def init(self) -> None:
        """Nothing to open yet: the first next_frame() connects (Alice's device may start later)."""
        self._closed = False

    @property
    def wire_bytes_received(self) -> int:
        """Bytes read from Alice's device so far, over every connection."""
        return self._receiver.bytes_received

    async def close(self) -> None:
        self._closed = True
        await self._drop_connection()

    def _hello_message(self) -> bytes:
        raise NotImplementedError

    def _retrying(self, stage: str, exc: BaseException, delay_s: float) -> None:
        """Called before each backoff sleep; stage is "connect" or "hello" (a hook for logs and health)."""

    def _refused(self, stage: str, exc: WireError) -> None:
        """Called when Alice's hello (stage "hello") or a frame ("frame") is bad data, before it is raised
        (a hook for logs and health)."""

    async def _send_ack(self, stream: trio.SocketStream, frame_id: int) -> None:
        raise NotImplementedError

    def _connected(self) -> None:
        """Called once the handshake is done (a hook for the device's log line)."""

    async def _connection(self) -> trio.SocketStream:
        """The stream to Alice's device (connects, with backoff, until the device is closed)."""
        while self._stream is None:
            if self._closed:
                raise DeviceError("sim: device closed")
            try:
                with trio.fail_after(self.connect_timeout_s):
                    stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as exc:
                delay_s = self._backoff.next_delay_s()
                self._retrying("connect", exc, delay_s)
                await trio.sleep(delay_s)
                continue
            self._receiver.reset()
            try:
                await stream.send_all(self._hello_message())
                hello = await read_message(stream, self._receiver, idle_timeout_s=self.idle_timeout_s,
                                           message_timeout_s=self.message_timeout_s)  # ALICE_HELLO, by the table
            except (ConnectionLost, trio.BrokenResourceError, OSError) as exc:
                await stream.aclose()
                delay_s = self._backoff.next_delay_s()
                self._retrying("hello", exc, delay_s)
                await trio.sleep(delay_s)
                continue
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                if isinstance(exc, WireError):
                    self._refused("hello", exc)
                raise
            self._hello = hello
            self._stream = stream
            self._backoff.reset()
            self.stats["connections"] += 1
            self._connected()
        return self._stream

    async def _next_frame_message(self):
        """The next frame from Alice's device, acknowledged (reconnects when the connection is lost)."""
        while True:
            stream = await self._connection()
            try:
                message = await read_message(stream, self._receiver, idle_timeout_s=self.idle_timeout_s,
                                             message_timeout_s=self.message_timeout_s,   # FRAME, by the table
                                             on_cpu=self.count_cpu)
                await self._send_ack(stream, message.frame_id)
            except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.warning("sim: quantum channel to Alice's device lost", extra={"reason": str(exc)})
                await self._drop_connection()
                continue
            except BaseException as exc:
                await self._drop_connection()
                if isinstance(exc, WireError):
                    self._refused("frame", exc)
                raise
            return message
