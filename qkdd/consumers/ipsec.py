"""IKEv2 post-quantum pre-shared keys (RFC 8784) from QKD keys: the sink of an `[[ipsec]]` consumer, which
installs each agreed key into strongSwan's charon over VICI (PyPI `vici`, strongSwan's own binding).

RFC 8784 §3: the initiator names its PPK in the IKE_AUTH exchange (PPK_ID), both ends mix it into
SK_d/SK_pi/SK_pr, so an IKE SA authenticated with it keeps its secrecy against a quantum adversary.
Here the PPK_ID is the QKD key id: both ends load the key with `load-shared` (type PPK, owner = key id);
the responder finds it by the id the initiator sends, so it needs no per-key config. The initiator
reloads its connection (read from swanctl.conf) with `ppk_id` = the new key id and brings up a fresh IKE
SA with it (make-before-break: the older IKE SAs of the connection are closed once the new one is up) -
that is how a rotation reaches the tunnel, as IKE rekeys reuse SK_d and never the new PPK. The newest
two PPKs stay loaded (an initiator a moment behind still finds its key); older ones are unloaded. charon
outlives a daemon killed with -9: the first trim after a (re)start also unloads what an earlier run left
in charon (VICI get-shared, this consumer's ids only), so an expired PPK never stays loaded.

Fallback, the shared policy: "clear" unloads every PPK of the consumer and reloads the connection as
configured (no ppk_id: with `ppk_required = yes` in swanctl.conf new SAs then fail closed, without it
IKE goes on classical/PQ only); "random" installs a random PPK under a fallback id at both ends and
closes the connection's IKE SAs, so nothing comes up until fresh QKD keys do (fail closed).
VICI calls block, so each runs in a worker thread on its own short-lived socket.
"""
from __future__ import annotations

import logging
import os
import re
import socket

import trio

from qkdd.consumers import swanctl_conf
from qkdd.consumers.sink import KeySink, SinkError
from qkdd.consumers.wg_epoch import Epoch
from qkdd.keystore import StoredKey

log = logging.getLogger("qkdd.ipsec")

VICI_TIMEOUT_S = 30.0
INITIATE_TIMEOUT_MS = 10_000
KEEP_PPKS = 2


class ViciError(SinkError):
    """charon refused a VICI command or could not be reached (never carries key material)."""


def _vici_call(path: str, command: str, message: dict | None = None) -> list:
    """Blocking: one VICI command on a fresh connection; streamed answers collected into a list."""
    import vici
    from vici.exception import CommandException, SessionException
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(VICI_TIMEOUT_S)
    try:
        sock.connect(path)
        session = vici.Session(sock)
        result = getattr(session, command)(message) if message is not None else getattr(session, command)()
        return list(result) if command in ("initiate", "terminate", "list_sas") else [result]
    except (CommandException, SessionException) as exc:
        raise ViciError(f"charon refused {command.replace('_', '-')}: {_text(exc)}") from None
    except OSError as exc:
        raise ViciError(f"cannot reach charon at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _text(exc: Exception) -> str:
    text = str(exc.args[0] if exc.args else exc)
    return text[:200]


class PpkSink(KeySink):
    """The PPKs of one IKEv2 connection in one charon."""

    def __init__(self, *, name: str, connection: str, initiator: bool, vici_socket: str,
                 swanctl_conf_path: str | None = None) -> None:
        self.name = name
        self.connection = connection
        self.initiator = initiator
        self.vici_socket = vici_socket
        self.swanctl_conf_path = swanctl_conf_path
        self.label = f"charon {vici_socket} ({connection}, {'initiator' if initiator else 'responder'})"
        self.loaded: list[str] = []          # PPK key ids loaded, oldest first
        self.active_ike_id: str | None = None
        self._adopted = False                # what an earlier run left in charon was added to `loaded`
        # this consumer's shared-key ids: the prefix, then a key id (a UUID) or the fallback id
        self._own_id = re.compile(rf"qkdd-{re.escape(name)}-(?P<ppk>[0-9a-f]{{8}}(?:-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}}"
                                  rf"|{re.escape(self._fallback_id())})")

    @classmethod
    def from_config(cls, config) -> "PpkSink":
        return cls(name=config.name, connection=config.connection, initiator=config.initiator,
                   vici_socket=config.vici_socket, swanctl_conf_path=config.swanctl_conf)

    def _shared_id(self, ppk_id: str) -> str:
        return f"qkdd-{self.name}-{ppk_id}"

    def _fallback_id(self) -> str:
        return f"qkdd-fallback-{self.name}"

    async def _call(self, command: str, message: dict | None = None) -> list:
        return await trio.to_thread.run_sync(_vici_call, self.vici_socket, command, message)

    # -- install -----------------------------------------------------------------------------------
    async def install(self, key: StoredKey, epoch: Epoch) -> None:
        await self._load_ppk(epoch.key_id, key.material)
        if self.initiator:
            await self._load_connection(epoch.key_id)
            await self._reconnect()
        await self._unload_older(keep=KEEP_PPKS)

    async def _load_ppk(self, ppk_id: str, material: bytes) -> None:
        await self._call("load_shared", {"id": self._shared_id(ppk_id), "type": "PPK", "data": material,
                                         "owners": [ppk_id]})
        if ppk_id in self.loaded:
            self.loaded.remove(ppk_id)
        self.loaded.append(ppk_id)

    async def _adopt_leftovers(self) -> None:
        """Once per run: the PPKs of this consumer that charon holds from an earlier run (a daemon killed
        before it could unload them) join `loaded` as the oldest, so the trim below unloads them."""
        if self._adopted:
            return
        try:
            [answer] = await self._call("get_shared")
        except ViciError as exc:
            log.warning("ipsec %s: cannot list charon's shared keys (%s): PPKs from before a restart may stay "
                        "loaded", self.name, exc)
            return
        self._adopted = True
        found = []
        for shared_id in answer.get("keys", []):
            text = shared_id.decode(errors="replace") if isinstance(shared_id, bytes) else str(shared_id)
            match = self._own_id.fullmatch(text)
            if match and match["ppk"] not in self.loaded:
                found.append(match["ppk"])
        self.loaded = found + self.loaded

    async def _unload_older(self, *, keep: int) -> None:
        await self._adopt_leftovers()
        while len(self.loaded) > keep:
            ppk_id = self.loaded[0]
            try:
                await self._call("unload_shared", {"id": self._shared_id(ppk_id)})
            except ViciError as exc:
                log.debug("ipsec %s: unloading PPK %s: %s", self.name, ppk_id, exc)   # gone after a restart
            self.loaded.pop(0)

    async def _load_connection(self, ppk_id: str | None) -> None:
        """Load the connection as swanctl.conf has it, with `ppk_id` (None: the file's own)."""
        conn = await trio.to_thread.run_sync(self._read_connection)
        if ppk_id is not None:
            conn["ppk_id"] = ppk_id
        await self._call("load_conn", {self.connection: conn})

    def _read_connection(self) -> dict:
        if not self.swanctl_conf_path:
            raise ViciError(f"ipsec {self.name}: an initiator needs swanctl_conf to reload {self.connection}")
        try:
            with open(self.swanctl_conf_path, encoding="utf-8") as handle:
                text = handle.read()
            return swanctl_conf.connection(text, self.connection, self.swanctl_conf_path)
        except (OSError, swanctl_conf.SwanctlConfError) as exc:
            raise ViciError(f"ipsec {self.name}: {exc}") from None

    async def _ike_ids(self) -> list[str]:
        ids = []
        for entry in await self._call("list_sas", {"ike": self.connection}):
            for _, sa in entry.items():
                uid = sa.get("uniqueid")
                ids.append(uid.decode() if isinstance(uid, bytes) else str(uid))
        return ids

    async def _reconnect(self) -> None:
        """A fresh IKE SA with the loaded connection (its PPK), then the older ones closed."""
        before = set(await self._ike_ids())
        conn = await trio.to_thread.run_sync(self._read_connection)
        children = list(conn.get("children", {}))
        request = {"ike": self.connection, "timeout": INITIATE_TIMEOUT_MS, "init-limits": "no"}
        if children:
            request["child"] = children[0]
        await self._call("initiate", request)
        after = [uid for uid in await self._ike_ids() if uid not in before]
        self.active_ike_id = after[-1] if after else None
        for uid in before:
            try:
                await self._call("terminate", {"ike-id": uid, "timeout": INITIATE_TIMEOUT_MS})
            except ViciError as exc:
                log.debug("ipsec %s: closing IKE SA %s: %s", self.name, uid, exc)

    # -- fallback ----------------------------------------------------------------------------------
    async def fall_back(self, policy: str) -> None:
        if policy == "clear":
            await self._unload_older(keep=0)
            if self.initiator:
                await self._load_connection(None)
            return
        fallback_id = self._fallback_id()
        await self._load_ppk(fallback_id, os.urandom(32))
        if self.initiator:
            await self._load_connection(fallback_id)
            for uid in await self._ike_ids():
                try:
                    await self._call("terminate", {"ike-id": uid, "timeout": INITIATE_TIMEOUT_MS})
                except ViciError as exc:
                    log.debug("ipsec %s: closing IKE SA %s: %s", self.name, uid, exc)
        await self._unload_older(keep=1)

    def fallback_meaning(self, policy: str) -> str:
        return ("PPKs unloaded: IKE without a PPK unless ppk_required (then it fails closed)" if policy == "clear"
                else "a random PPK at each end: no IKE SA comes up (fails closed)")
