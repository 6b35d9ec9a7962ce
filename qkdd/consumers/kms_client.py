"""An Infisical-compatible KMS client (HIP-0027) over httpx: Universal Auth login, token renewal before
expiry, and the raw-secret calls the KMS push needs (read, create or update, delete one secret).

Routes (Infisical API; the official SDK `infisicalsdk` calls the same ones, see tests/kms_server.py):
    POST   /api/v1/auth/universal-auth/login   {clientId, clientSecret} -> {accessToken, expiresIn,
                                                accessTokenMaxTTL, tokenType}
    POST   /api/v1/auth/token/renew            {accessToken} -> the same shape, the TTL restarted
    GET    /api/v3/secrets/raw/{name}          ?workspaceSlug&environment&secretPath -> {secret: {...}}
    POST   /api/v3/secrets/raw/{name}          {projectSlug, environment, secretPath, secretValue, type}
    PATCH  /api/v3/secrets/raw/{name}          the same body: update
    DELETE /api/v3/secrets/raw/{name}          {projectSlug, environment, secretPath, type}

A token is renewed once less than RENEW_MARGIN of its life is left, and replaced by a fresh login when
renewal fails or its maximum TTL is reached; a 401 on a call logs in again once. Every failure is a
KmsError (a SinkError: the rotation retries it with backoff): unreachable, 401, 429 (with Retry-After),
5xx. Secret values and the client secret appear in no log, error message or repr.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from qkdd.config_schema import Secret
from qkdd.consumers.sink import SinkError

log = logging.getLogger("qkdd.kms")

LOGIN_PATH = "/api/v1/auth/universal-auth/login"
RENEW_PATH = "/api/v1/auth/token/renew"
SECRET_PATH = "/api/v3/secrets/raw/"
REQUEST_TIMEOUT_S = 10.0
RENEW_MARGIN = 0.2              # renew when less than a fifth of the token's life is left
MIN_RENEW_MARGIN_S = 5.0
MAX_RETRY_AFTER_S = 600.0


class KmsError(SinkError):
    """A KMS call failed; `status` is the HTTP status (None: the KMS was unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


@dataclass
class _Token:
    value: Secret
    expires_at: float               # this token's end
    renew_until: float              # its maximum TTL's end: no renewal past this (0: unknown)
    lifetime_s: float


class KmsClient:
    """One KMS, one machine identity. `transport` (httpx) is for tests; `clock` gives Unix seconds."""

    def __init__(self, url: str, client_id: str, client_secret: Secret, *, project: str, environment: str,
                 transport: httpx.AsyncBaseTransport | None = None, verify: bool | str = True,
                 clock=time.time) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.project = project
        self.environment = environment
        self._clock = clock
        self._token: _Token | None = None
        self._http = httpx.AsyncClient(base_url=self.url, transport=transport, verify=verify,
                                       timeout=REQUEST_TIMEOUT_S, follow_redirects=False)
        self.logins = 0                 # counts, for /healthz and tests
        self.renewals = 0

    def __repr__(self) -> str:
        return f"KmsClient({self.url!r}, client_id={self.client_id!r}, project={self.project!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- secrets -----------------------------------------------------------------------------------
    async def get_secret(self, name: str, folder: str) -> str | None:
        """The value of secret `name` in `folder`, or None when there is none."""
        params = {"workspaceSlug": self.project, "environment": self.environment, "secretPath": folder,
                  "viewSecretValue": "true", "expandSecretReferences": "false", "include_imports": "false"}
        response = await self._call("GET", SECRET_PATH + quote(name, safe=""), params=params, missing_ok=True)
        if response is None:
            return None
        try:
            value = response.json()["secret"]["secretValue"]
        except (ValueError, KeyError, TypeError):
            raise KmsError(f"GET secret {name}: the KMS answered without secret.secretValue") from None
        if not isinstance(value, str):
            raise KmsError(f"GET secret {name}: secretValue is no string")
        return value

    async def put_secret(self, name: str, value: str, folder: str) -> None:
        """Create or update secret `name` in `folder` (update first; create on 404)."""
        body = self._body(folder) | {"secretValue": value, "skipMultilineEncoding": True}
        path = SECRET_PATH + quote(name, safe="")
        if await self._call("PATCH", path, json=body, missing_ok=True) is None:
            await self._call("POST", path, json=body)

    async def delete_secret(self, name: str, folder: str) -> None:
        """Delete secret `name` in `folder`; one that is not there is fine."""
        await self._call("DELETE", SECRET_PATH + quote(name, safe=""), json=self._body(folder), missing_ok=True)

    def _body(self, folder: str) -> dict:
        return {"projectSlug": self.project, "environment": self.environment, "secretPath": folder, "type": "shared"}

    # -- auth --------------------------------------------------------------------------------------
    async def _access_token(self) -> Secret:
        now = self._clock()
        token = self._token
        if token is not None:
            margin_s = max(MIN_RENEW_MARGIN_S, RENEW_MARGIN * token.lifetime_s)
            if now < token.expires_at - margin_s:
                return token.value
            if now < token.expires_at - 1.0 and (not token.renew_until or now + token.lifetime_s <= token.renew_until):
                try:
                    self._token = await self._authenticate(RENEW_PATH, {"accessToken": token.value.reveal()})
                    self.renewals += 1
                    return self._token.value
                except KmsError as exc:
                    log.info("kms: renewing the access token failed (%s); logging in again", exc)
        self._token = await self._authenticate(LOGIN_PATH, {"clientId": self.client_id,
                                                            "clientSecret": self._client_secret.reveal()})
        self.logins += 1
        return self._token.value

    async def _authenticate(self, path: str, body: dict) -> _Token:
        started = self._clock()
        response = await self._send("POST", path, json=body)
        what = "login" if path == LOGIN_PATH else "token renewal"
        if response.status_code != 200:
            raise _status_error(what, response)
        try:
            data = response.json()
            access_token, expires_in = data["accessToken"], float(data["expiresIn"])
            max_ttl = float(data.get("accessTokenMaxTTL") or 0)
        except (ValueError, KeyError, TypeError):
            raise KmsError(f"{what}: the KMS answered without accessToken and expiresIn") from None
        if not isinstance(access_token, str) or not access_token or expires_in <= 0:
            raise KmsError(f"{what}: the KMS answered an empty token or no lifetime")
        renew_until = (self._token.renew_until if path == RENEW_PATH and self._token else
                       (started + max_ttl if max_ttl > 0 else 0.0))
        return _Token(Secret(access_token), started + expires_in, renew_until, expires_in)

    # -- transport ---------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, *, params: dict | None = None, json: dict | None = None,
                    missing_ok: bool = False) -> httpx.Response | None:
        """One authenticated call; a 401 logs in again once. None: 404 and `missing_ok`."""
        for attempt in (1, 2):
            token = await self._access_token()
            response = await self._send(method, path, params=params, json=json,
                                        headers={"Authorization": f"Bearer {token.reveal()}"})
            if response.status_code == 401 and attempt == 1:
                self._token = None                     # revoked or expired early: a fresh login, once
                continue
            break
        if 200 <= response.status_code < 300:
            return response
        if response.status_code == 404 and missing_ok:
            return None
        raise _status_error(f"{method} {path.rsplit('/', 1)[-1] or path}", response)

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise KmsError(f"{method} {self.url}: no answer within {REQUEST_TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:
            raise KmsError(f"{method} {self.url}: unreachable ({type(exc).__name__})") from None


def _status_error(what: str, response: httpx.Response) -> KmsError:
    """A KmsError for a non-2xx answer: its status, the server's error name, Retry-After; never a body
    (which might echo a request)."""
    status = response.status_code
    retry_after_s = None
    header = response.headers.get("retry-after", "")
    if header.strip().isdigit():
        retry_after_s = min(float(header.strip()), MAX_RETRY_AFTER_S)
    error = ""
    try:
        data = response.json()
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            error = f" ({data['error'][:60]})"
    except ValueError:
        pass
    return KmsError(f"{what}: HTTP {status}{error}", status=status, retry_after_s=retry_after_s)
