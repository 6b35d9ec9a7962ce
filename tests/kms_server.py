"""An Infisical-compatible KMS for the tests: exactly the routes qkdd's KMS push uses (Universal Auth
login, token renewal, raw secrets by name: get, create, update, delete; and the list the SDK offers),
with the request checks and response shapes of the Infisical API, so that the official SDK
(`infisicalsdk`) and qkdd can both be run against it.

One `FakeKms` holds the state; `serve(listener)` speaks HTTP/1.1 over real sockets (h11, trio), and
`transport()` hands the same routes to httpx in process (for tests under trio's MockClock, where a real
socket's latency would let the clock jump past timeouts). `faults` queues failures for the next
requests: an HTTP status (401, 429, 500, 503) or "drop" (the connection closes without an answer).
"""
from __future__ import annotations

import datetime
import json
import secrets
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import httpx
import trio

LOGIN = "/api/v1/auth/universal-auth/login"
RENEW = "/api/v1/auth/token/renew"
SECRETS = "/api/v3/secrets/raw"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict
    token: str | None


@dataclass
class FakeKms:
    client_id: str = "qkd-agent"
    client_secret: str = "s3cret-client-secret"
    project_slug: str = "qkd-keys"
    project_id: str = "6f1c0a5e-7d0b-4c39-a1e8-3b3c2f9e0d11"
    environments: tuple[str, ...] = ("production", "staging")
    folders: set[str] = field(default_factory=lambda: {"/", "/inter-cluster", "/model-transfer"})
    token_ttl_s: float = 300.0
    token_max_ttl_s: float = 3600.0
    clock: object = None                      # () -> seconds; trio.current_time by default
    faults: list = field(default_factory=list)
    secrets: dict = field(default_factory=dict)     # (environment, folder, name) -> record
    tokens: dict = field(default_factory=dict)      # token -> (expires_at, max_until)
    log: list = field(default_factory=list)         # every Request served (faults included)

    def now(self) -> float:
        return (self.clock or trio.current_time)()

    def value(self, name: str, folder: str = "/", environment: str = "production") -> str | None:
        record = self.secrets.get((environment, _folder(folder), name))
        return None if record is None else record["secretValue"]

    # -- routing -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> tuple[int, dict, dict]:
        """(status, extra headers, JSON body) for one request."""
        self.log.append(request)
        if self.faults:
            fault = self.faults.pop(0)
            if fault == "drop":
                raise ConnectionResetError("fault: connection dropped")
            headers = {"retry-after": "7"} if fault == 429 else {}
            return fault, headers, _error(fault, "injected fault")
        if request.method == "POST" and request.path == LOGIN:
            return self._login(request.body)
        if request.method == "POST" and request.path == RENEW:
            return self._renew(request.body)
        if not request.path.startswith(SECRETS):
            return 404, {}, _error(404, f"Route {request.method}:{request.path} not found")
        if not self._authorised(request.token):
            return 401, {}, _error(401, "Token missing or expired")
        name = unquote(request.path[len(SECRETS):].lstrip("/"))
        where = request.query if request.method == "GET" else request.body
        project = where.get("workspaceId") or where.get("workspaceSlug") or where.get("projectSlug")
        if project not in (self.project_id, self.project_slug):
            return 404, {}, _error(404, "Project not found")
        environment = where.get("environment")
        if environment not in self.environments:
            return 404, {}, _error(404, f"Environment with slug '{environment}' not found")
        folder = _folder(where.get("secretPath", "/"))
        if folder not in self.folders:
            return 404, {}, _error(404, f"Folder with path '{folder}' not found")
        if not name:
            if request.method != "GET":
                return 404, {}, _error(404, "Route not found")
            return 200, {}, {"secrets": [self._shape(key, record) for key, record in sorted(self.secrets.items())
                                         if key[:2] == (environment, folder)], "imports": []}
        key = (environment, folder, name)
        record = self.secrets.get(key)
        if request.method == "GET":
            return (200, {}, {"secret": self._shape(key, record)}) if record else _missing(name)
        if request.body.get("type", "shared") != "shared":
            return 400, {}, _error(400, "only shared secrets here")
        if request.method == "POST":
            if record is not None:
                return 400, {}, _error(400, "Secret already exist")
            if not isinstance(request.body.get("secretValue"), str):
                return 400, {}, _error(400, "secretValue: Required")
            now = _iso(self.now())
            record = {"id": str(uuid.uuid4()), "version": 1, "secretValue": request.body["secretValue"],
                      "secretComment": request.body.get("secretComment") or "", "createdAt": now, "updatedAt": now}
            self.secrets[key] = record
            return 200, {}, {"secret": self._shape(key, record)}
        if request.method == "PATCH":
            if record is None:
                return _missing(name)
            if "secretValue" in request.body:
                if not isinstance(request.body["secretValue"], str):
                    return 400, {}, _error(400, "secretValue: Expected string")
                record["secretValue"] = request.body["secretValue"]
            record["version"] += 1
            record["updatedAt"] = _iso(self.now())
            return 200, {}, {"secret": self._shape(key, record)}
        if request.method == "DELETE":
            if record is None:
                return _missing(name)
            del self.secrets[key]
            return 200, {}, {"secret": self._shape(key, record)}
        return 404, {}, _error(404, f"Route {request.method}:{request.path} not found")

    def _login(self, body: dict) -> tuple[int, dict, dict]:
        if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
            return 401, {}, _error(401, "Invalid credentials")
        return self._issue(self.now() + self.token_max_ttl_s)

    def _renew(self, body: dict) -> tuple[int, dict, dict]:
        token = body.get("accessToken")
        if not self._authorised(token):
            return 401, {}, _error(401, "Failed to renew access token")
        _, max_until = self.tokens.pop(token)
        if self.now() + self.token_ttl_s > max_until:
            return 401, {}, _error(401, "Failed to renew due to max ttl")
        return self._issue(max_until)

    def _issue(self, max_until: float) -> tuple[int, dict, dict]:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (self.now() + self.token_ttl_s, max_until)
        return 200, {}, {"accessToken": token, "expiresIn": int(self.token_ttl_s),
                         "accessTokenMaxTTL": int(self.token_max_ttl_s), "tokenType": "Bearer"}

    def _authorised(self, token: str | None) -> bool:
        entry = self.tokens.get(token or "")
        return entry is not None and self.now() < entry[0]

    def _shape(self, key: tuple, record: dict) -> dict:
        environment, folder, name = key
        return {"id": record["id"], "_id": record["id"], "workspace": self.project_id, "environment": environment,
                "version": record["version"], "type": "shared", "secretKey": name,
                "secretValue": record["secretValue"], "secretComment": record["secretComment"],
                "secretReminderNote": None, "secretReminderRepeatDays": None, "skipMultilineEncoding": True,
                "createdAt": record["createdAt"], "updatedAt": record["updatedAt"], "secretPath": folder,
                "tags": [], "secretMetadata": None}

    # -- transports --------------------------------------------------------------------------------
    def transport(self) -> httpx.AsyncBaseTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            try:
                status, headers, body = self.handle(_parse(request.method, request.url.raw_path.decode(),
                                                           dict(request.headers), request.content))
            except ConnectionResetError as exc:
                raise httpx.ConnectError(str(exc), request=request) from None
            return httpx.Response(status, headers=headers, json=body)
        return httpx.MockTransport(handler)

    async def serve(self, listener: trio.SocketListener) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One client connection; a client that resets it or sends garbage ends only this connection."""
        try:
            await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    async def _exchange(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request, body = None, b""
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data and connection.their_state is h11.IDLE:
                            return
                        connection.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                headers = {name.decode(): value.decode() for name, value in request.headers}
                try:
                    status, extra, answer = self.handle(_parse(request.method.decode(), request.target.decode(),
                                                               headers, body))
                except ConnectionResetError:
                    return
                payload = json.dumps(answer).encode()
                await stream.send_all(connection.send(h11.Response(status_code=status, headers=[
                    ("content-type", "application/json; charset=utf-8"), ("content-length", str(len(payload))),
                    *extra.items()])))
                await stream.send_all(connection.send(h11.Data(data=payload)))
                await stream.send_all(connection.send(h11.EndOfMessage()))
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()


def _parse(method: str, target: str, headers: dict, body: bytes) -> Request:
    parts = urlsplit(target)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    authorization = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    token = authorization[7:] if authorization.startswith("Bearer ") else None
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    return Request(method, parts.path, query, data if isinstance(data, dict) else {}, token)


def _folder(path: str) -> str:
    return "/" + path.strip("/") if path.strip("/") else "/"


def _iso(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(max(0.0, seconds), datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(status: int, message: str) -> dict:
    names = {400: "BadRequest", 401: "UnauthorizedError", 404: "NotFound", 429: "TooManyRequests",
             500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable"}
    return {"reqId": f"req-{uuid.uuid4().hex[:12]}", "statusCode": status, "message": message,
            "error": names.get(status, "Error")}


def _missing(name: str) -> tuple[int, dict, dict]:
    return 404, {}, _error(404, f"Secret with name '{name}' not found")


class KmsInThread:
    """A FakeKms served over real sockets (127.0.0.1, an ephemeral port) by a trio loop in a thread of its
    own, for tests whose qkdd runs as a separate process. Use as a context manager; `url` once entered."""

    def __init__(self, kms: FakeKms) -> None:
        import threading
        self.kms = kms
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._token = None
        self._scope = None

    async def _main(self) -> None:
        import functools
        with trio.CancelScope() as scope:
            self._scope, self._token = scope, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(trio.serve_tcp, self.kms._connection, 0,
                                                                  host="127.0.0.1"))
                self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
                self._ready.set()

    def __enter__(self) -> "KmsInThread":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test KMS did not start")
        return self

    def __exit__(self, *exc) -> None:
        try:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        except trio.RunFinishedError:
            pass
        self._thread.join(10)
