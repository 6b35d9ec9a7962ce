"""ETSI GS QKD 014 key delivery on port 8071 under /api/v1/keys/ (§5, Table 2): Get status, Get key
(`enc_keys`, POST or GET) and Get key with key IDs (`dec_keys`, POST or GET). The caller is the SAE its
verified client certificate names, checked on the request head (a caller that is not an SAE of this KME
gets 401 before its body is read); the KME logic lives in qkdd/kme/, and this module alone turns its
refusals (qkdd/kme/errors.py) into HTTP answers."""
from __future__ import annotations

from functools import wraps

from qkdd.http.messages import Caller, Handler, HTTPError, Request, Response
from qkdd.http.router import Router
from qkdd.kme.container import key_container
from qkdd.kme.errors import BadRequest, KeysUnavailable, KmeError, Unauthorized
from qkdd.kme.identity import check_path_sae_id
from qkdd.kme.key_request import bad, parse_key_ids, parse_key_request
from qkdd.kme.service import KmeService

PREFIX = "/api/v1/keys"

# The HTTP status of each kind of refusal (§5.1, Table 2). A KmeError of no kind here is a bug: the
# listener answers it 500 and logs it.
_STATUS_OF: dict[type[KmeError], int] = {BadRequest: 400, Unauthorized: 401, KeysUnavailable: 503}


def http_error(error: KmeError) -> HTTPError | None:
    """The answer to a refusal: its status, the Error data format (§6.5) and, when it passes, Retry-After;
    None for an error of no known kind."""
    status = next((_STATUS_OF[kind] for kind in type(error).__mro__ if kind in _STATUS_OF), None)
    if status is None:
        return None
    headers = [("Retry-After", str(error.retry_after_s))] if isinstance(error, KeysUnavailable) else []
    return HTTPError(status, error.message, error.details, headers=headers)


def _answering_refusals(handler: Handler) -> Handler:
    @wraps(handler)
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except KmeError as error:
            refusal = http_error(error)
            if refusal is None:
                raise
            raise refusal from None
    return answer


def register(router: Router, kme: KmeService) -> None:
    registry = kme.registry

    def served_sae(caller: Caller) -> None:
        """The routes' access check: the certificate names an SAE this KME serves."""
        try:
            registry.caller(caller.peer_cert)
        except Unauthorized as error:
            raise http_error(error) from None

    def slave_route(caller: str, slave_sae_id: str):
        check_path_sae_id(slave_sae_id, "slave_SAE_ID")
        if slave_sae_id == caller:
            raise bad("slave_SAE_ID", "names the calling SAE itself")
        if registry.kme_of(slave_sae_id) is None:
            raise bad("slave_SAE_ID", "is not an SAE of this QKD network")
        route = registry.route_to(slave_sae_id)
        if route is None:
            raise bad("slave_SAE_ID", "is served by this KME; keys are shared with SAEs behind a peer KME")
        return route

    async def status(request: Request) -> Response:
        caller = registry.caller(request.peer_cert)
        slave = request.path_params["slave_SAE_ID"]
        slave_route(caller, slave)
        if request.query:
            raise bad("query", "Get status takes no parameters")
        if request.body.strip():        # as for a GET of enc_keys or dec_keys (key_request.py)
            raise bad("body", "Get status carries no body")
        return Response.json(await kme.status(caller, slave))

    async def enc_keys(request: Request) -> Response:
        caller = registry.caller(request.peer_cert)
        slave = request.path_params["slave_SAE_ID"]
        route = slave_route(caller, slave)
        key_request, _ignored_optional = parse_key_request(request, kme.config)
        for sae_id in key_request.additional_slave_sae_ids:
            if sae_id in (caller, slave):
                raise bad("additional_slave_SAE_IDs", "names the master or the slave SAE")
            other = registry.route_to(sae_id)
            if other is None or other.peer_kme_id != route.peer_kme_id:
                raise bad("additional_slave_SAE_IDs", f"{sae_id} is not an SAE behind the slave SAE's KME")
        keys = await kme.get_keys(caller, slave, key_request)
        return Response.json(key_container(keys), headers=[("Cache-Control", "no-store")])

    async def dec_keys(request: Request) -> Response:
        caller = registry.caller(request.peer_cert)
        master = check_path_sae_id(request.path_params["master_SAE_ID"], "master_SAE_ID")
        if master == caller:
            raise bad("master_SAE_ID", "names the calling SAE itself")
        if registry.kme_of(master) is None:
            raise bad("master_SAE_ID", "is not an SAE of this QKD network")
        key_ids = parse_key_ids(request, kme.config)
        keys = await kme.keys_by_id(caller, master, key_ids)
        return Response.json(key_container(keys), headers=[("Cache-Control", "no-store")])

    status, enc_keys, dec_keys = map(_answering_refusals, (status, enc_keys, dec_keys))
    router.route("GET", PREFIX + "/{slave_SAE_ID}/status", status, empty_params=True, access=served_sae)
    # head=False: HEAD would run the GET handler and drop the body, keys handed out to nobody.
    for method in ("GET", "POST"):
        router.route(method, PREFIX + "/{slave_SAE_ID}/enc_keys", enc_keys, empty_params=True, head=False,
                     access=served_sae)
        router.route(method, PREFIX + "/{master_SAE_ID}/dec_keys", dec_keys, empty_params=True, head=False,
                     access=served_sae)

