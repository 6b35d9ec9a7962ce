"""A scriptable vendor KME pair for the etsi014 driver's fault tests: a real ETSI 014 server over real
mutual TLS (trio, h11) whose two instances share their keys in memory, so that a key one SAE took with
enc_keys can be fetched by ID at the other. `fault` makes an instance misbehave the way a vendor KME
can: close the connection (down), answer slowly (slow: 30 s before the answer), hang mid-body
(hang_body: the head and half the body, then nothing), 401, 503, a body that is not JSON, keys of the
wrong size, or "not found" for key IDs. `KmeThread` serves instances from a thread of the test process, for
tests whose SAEs are real qkdd daemons. This stands in for vendor behaviour qkdd's own KME never shows; the
end-to-end test runs two real qkdd KMEs instead."""
from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import uuid

import h11
import trio


class SharedKeys:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.taken = 0


class ScriptedKme:
    def __init__(self, kme_id: str, shared: SharedKeys, cert_file, key_file, ca_file) -> None:
        self.kme_id = kme_id
        self.shared = shared
        self.fault: str | None = None
        self.requests: list[str] = []
        self.numbers: list[int] = []               # the `number` of each Get key
        self.status_fields: dict[str, int] = {}    # overrides of the Get status answer
        self.port = 0
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
        self._context.load_cert_chain(str(cert_file), str(key_file))
        self._context.verify_mode = ssl.CERT_REQUIRED

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        tls = [trio.SSLListener(listener, self._context, https_compatible=True) for listener in listeners]
        await trio.serve_listeners(self._handle, tls, task_status=task_status)

    async def _handle(self, stream) -> None:
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        try:
            while True:
                request, body = await self._read_request(stream)
                if request is None:
                    return
                self.requests.append(request.target.decode())
                if self.fault == "down":
                    await stream.aclose()
                    return
                if self.fault == "slow":
                    await trio.sleep(30)
                status, payload = self._answer(request.target.decode(), body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                        "\r\n").encode()
                if self.fault == "hang_body":          # the answer was made (keys handed out), then the KME hangs
                    await stream.send_all(head + data[:len(data) // 2])
                    await trio.sleep(3600)
                await stream.send_all(head + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(self, stream):
        conn = h11.Connection(h11.SERVER)
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body

    def _answer(self, target: str, body: bytes):
        if self.fault == "401":
            return 401, {"message": "unknown SAE certificate"}
        if self.fault == "503":
            return 503, {"message": "key store empty"}
        if self.fault == "malformed":
            return 200, b'{"keys": [ {"key_ID": '
        if target.endswith("/status"):
            return 200, {"source_KME_ID": self.kme_id, "target_KME_ID": "other", "master_SAE_ID": "m",
                         "slave_SAE_ID": "s", "key_size": 256, "stored_key_count": 1000, "max_key_count": 100000,
                         "max_key_per_request": 128, "max_key_size": 8192, "min_key_size": 64, "max_SAE_ID_count": 0,
                         **self.status_fields}
        request = json.loads(body or b"{}")
        if target.endswith("/enc_keys"):
            self.numbers.append(request.get("number", 1))
            if request.get("number", 1) > self.status_fields.get("max_key_per_request", 128):
                return 400, {"message": "number exceeds max_key_per_request"}
            size = request.get("size", 256) if self.fault != "short_key" else 128
            keys = []
            for _ in range(request.get("number", 1)):
                key_id, material = str(uuid.uuid4()), os.urandom(size // 8)
                self.shared.keys[key_id] = material
                self.shared.taken += 1
                keys.append({"key_ID": key_id, "key": base64.b64encode(material).decode()})
            return 200, {"keys": keys}
        if target.endswith("/dec_keys"):
            ids = [entry["key_ID"] for entry in request["key_IDs"]]
            if self.fault == "not_found" or any(key_id not in self.shared.keys for key_id in ids):
                return 400, {"message": "one or more keys specified are not found on KME"}
            keys = [{"key_ID": key_id, "key": base64.b64encode(self.shared.keys.pop(key_id)).decode()}
                    for key_id in ids]
            return 200, {"keys": keys}
        return 404, {"message": "no such route"}


class KmeThread:
    """ScriptedKme instances served by trio in a thread of their own, until `stop()`."""

    def __init__(self, *kmes: ScriptedKme) -> None:
        self.kmes = kmes
        self._ready = threading.Event()
        self._token = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start(self) -> KmeThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the scripted KMEs did not start")
        return self

    async def _main(self) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                for kme in self.kmes:
                    await nursery.start(kme.serve)
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()

    def stop(self) -> None:
        if self._token is not None:
            self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(10)
