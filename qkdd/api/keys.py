"""`/v1` key and link routes on port 8071 (HIP-0071 "API Endpoints"):

    POST /v1/keys/request {"bits", "link_id"}  -> {"key_id","bits","qber","key","link_id","created_at"}
    GET  /v1/keys/{key_id}[?link_id=]           -> the same key at the other end's daemon, once
    GET  /v1/links/{id}/metrics                 -> the seed's ChannelMetrics fields and counters
    GET  /v1/links/{id}/qber?since=&step=       -> QBER time series (Unix seconds; step buckets, mean)
    POST /v1/links/{id}/calibrate               -> calibration report of the device

The simulator's attacks and drifts are switched through the admin routes of qkdd/api/sim_control.py.

Who may call them (qkdd.api.callers, checked on the request head before the body is read): the two key
routes, the certificates `api.key_clients` lists, or with that list empty, clients on this host; the
link reads, whoever may take keys or administer; calibrate, which acts on the device, `api.admin_clients`
or with that list empty, clients on this host. Refused: 401 without a certificate, 403 otherwise.
Errors are JSON {"message","details"}: unknown link or key 404, bad input 400, key already delivered
410, no key available or a key store that cannot write (a full disk) 503 with Retry-After. Key material
appears only in the 200 body. A key's `qber` is that of the frame it came from (the X-basis error rate
both ends found after Cascade, kept with the key in the store), so both ends report the same value; null
for keys stored by a version that did not keep it.
"""
from __future__ import annotations

import base64
import math
import time

from qkdd.api.callers import admin_access, key_access, reader_access
from qkdd.app import App
from qkdd.hal.base import DeviceError
from qkdd.http.messages import HTTPError, Request, Response
from qkdd.http.router import Router
from qkdd.keystore import KeyAlreadyDelivered, KeyNotFound, KeyStoreError, KeyUnavailable
from qkdd.keystore.model import StoreWriteError, canonical_key_id

RETRY_AFTER_S = 2


def register(router: Router, app: App) -> None:
    def engine_of(link_id: object):
        if not isinstance(link_id, str) or link_id not in app.links:
            if isinstance(link_id, str) and app.config.link(link_id) is not None:
                raise HTTPError(503, "link has no running engine", [{"link_id": f"{link_id!r} is not generating keys"}],
                                headers=[("Retry-After", str(RETRY_AFTER_S))])
            raise HTTPError(404, "unknown link", [{"link_id": f"no link {str(link_id)[:64]!r} on this daemon"}])
        return app.links[link_id]

    def key_json(key, qber: float | None) -> dict:
        return {"key_id": key.key_id, "bits": key.bits, "qber": qber, "key": base64.b64encode(key.material).decode(),
                "link_id": key.link_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at))}

    def store_cannot_write(exc: StoreWriteError) -> HTTPError:
        # a key is handed out only once its erasure is durable: while the store cannot write, none is
        return HTTPError(503, "key store cannot write", [{"reason": "disk full" if exc.disk_full else exc.reason}],
                         headers=[("Retry-After", str(RETRY_AFTER_S))])

    async def request_key(request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object")
        missing = [name for name in ("bits", "link_id") if name not in body]
        if missing:
            raise HTTPError(400, "missing fields", [{name: "is required"} for name in missing])
        bits, link_id = body["bits"], body["link_id"]
        if not isinstance(link_id, str):
            raise HTTPError(400, "link_id must be a string")
        engine = engine_of(link_id)
        limit = engine.settings.key_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8 or bits > limit:
            raise HTTPError(400, "invalid bits", [{"bits": f"must be a positive multiple of 8, at most {limit}"}])
        try:
            key = await app.key_requests[link_id].request_key(bits)
        except KeyUnavailable as exc:
            raise HTTPError(503, "no key available", [{"reason": str(exc)}],
                            headers=[("Retry-After", str(RETRY_AFTER_S))]) from None
        except StoreWriteError as exc:
            raise store_cannot_write(exc) from None
        return Response.json(key_json(key, engine.status.qber_of(key)))

    async def get_key(request: Request) -> Response:
        raw_id = request.path_params["key_id"]
        try:
            key_id = canonical_key_id(raw_id)
        except KeyStoreError:
            raise HTTPError(400, "key id is not a UUID", [{"key_id": f"{raw_id[:64]!r}"}]) from None
        wanted = request.query.get("link_id", [None])[0]
        engines = [engine_of(wanted)] if wanted is not None else list(app.links.values())
        for engine in engines:
            try:
                key = await app.key_requests[engine.link_id].fetch_key(key_id)
            except KeyNotFound:
                continue
            except KeyAlreadyDelivered:
                raise HTTPError(410, "key already delivered", [{"key_id": f"{key_id} was handed out before"}]) from None
            except KeyUnavailable as exc:
                raise HTTPError(409, "key not handed out at the other end", [{"reason": str(exc)}]) from None
            except StoreWriteError as exc:
                raise store_cannot_write(exc) from None
            return Response.json(key_json(key, engine.status.qber_of(key)))
        if app.relay is not None and wanted is None:      # a key relayed to this node (qkdd.relay)
            try:
                key = await app.relay.fetch_key(key_id)
            except KeyAlreadyDelivered:
                raise HTTPError(410, "key already delivered", [{"key_id": f"{key_id} was handed out before"}]) from None
            except KeyNotFound:
                pass
            except StoreWriteError as exc:
                raise store_cannot_write(exc) from None
            else:
                return Response.json(key_json(key, None))
        raise HTTPError(404, "unknown key",
                        [{"key_id": f"no key {key_id}" + (f" on link {wanted!r}" if wanted else "")}])

    async def link_metrics(request: Request) -> Response:
        engine = engine_of(request.path_params["link_id"])
        status = engine.status
        secret_bps, sifted_bps = status.rates()
        try:
            channel = await engine.device.channel_status()
            device = channel.as_json()
        except DeviceError as exc:
            raise HTTPError(503, "device not answering", [{"device": str(exc)}]) from None
        qber = status.last_qber
        # QBER and visibility are what the last frames measured (None before the first frame)
        device.update(qber=qber, key_rate=secret_bps, visibility=max(0.0, 1 - 2 * qber) if qber is not None else None)
        counts = await _counts(engine)
        return Response.json({"link_id": engine.link_id, "state": status.state, **device,
                              "raw_key_rate": sifted_bps, "frames": status.frames_done,
                              "frames_aborted": status.frames_aborted, "frames_unpaired": status.frames_unpaired,
                              "keys_generated": status.totals["keys"],
                              "key_bits_generated": status.totals["secret_bits"],
                              "sifted_bits_total": status.totals["sifted_bits"], "keys_stored": counts,
                              "cpu_s": _cpu_by_stage(status.cpu_s, engine.device.cpu_s)})

    async def link_qber(request: Request) -> Response:
        engine = engine_of(request.path_params["link_id"])
        since = _number(request, "since", 0.0)
        step = _number(request, "step", 0.0)
        if step < 0:
            raise HTTPError(400, "step must be >= 0")
        samples = [s for s in engine.status.qber_history if s.time_s >= since]
        if step > 0:
            buckets: dict[int, list] = {}
            for s in samples:
                buckets.setdefault(int(s.time_s // step), []).append(s.qber)
            points = [{"time": k * step, "qber": sum(v) / len(v), "frames": len(v)} for k, v in sorted(buckets.items())]
        else:
            points = [{"time": s.time_s, "qber": s.qber, "qber_estimate": s.qber_estimate, "frame_id": s.frame_id,
                       "secret_bits": s.secret_bits} for s in samples]
        return Response.json({"link_id": engine.link_id, "since": since, "step": step, "points": points})

    async def calibrate(request: Request) -> Response:
        engine = engine_of(request.path_params["link_id"])
        try:
            report = await engine.device.calibrate()
        except DeviceError as exc:
            raise HTTPError(409, "calibration not possible", [{"device": str(exc)}]) from None
        return Response.json({"link_id": engine.link_id, "calibration": report})

    api = app.config.api
    router.route("POST", "/v1/keys/request", request_key, access=key_access(api))
    router.route("GET", "/v1/keys/{key_id}", get_key, access=key_access(api))
    router.route("GET", "/v1/links/{link_id}/metrics", link_metrics, access=reader_access(api))
    router.route("GET", "/v1/links/{link_id}/qber", link_qber, access=reader_access(api))
    router.route("POST", "/v1/links/{link_id}/calibrate", calibrate, access=admin_access(api))


def _cpu_by_stage(stages: dict[str, float], device_s: float) -> dict[str, float]:
    """The link's thread CPU seconds by frame stage, and its device driver's own ("device") where it has any, to
    the microsecond (a small frame's stage or device check takes well under a millisecond)."""
    cpu = {stage: round(seconds, 6) for stage, seconds in stages.items()}
    if device_s > 0:
        cpu["device"] = round(device_s, 6)
    return cpu


async def _counts(engine) -> dict[str, int]:
    import trio
    counts = await trio.to_thread.run_sync(engine.store.counts, engine.link_id)
    return {state.value: n for state, n in counts.items()}


def _number(request: Request, name: str, default: float) -> float:
    values = request.query.get(name)
    if not values:
        return default
    try:
        value = float(values[0])
    except ValueError:
        raise HTTPError(400, f"{name} must be a number", [{name: "is not a number"}]) from None
    if not math.isfinite(value):
        raise HTTPError(400, f"{name} must be finite")
    return value

