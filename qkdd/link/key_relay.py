"""The link engine of a link whose devices are vendor KMEs (driver "etsi014" and its presets): keys come
finished from the KMEs and are relayed by ID over the link's classical channel into both key stores, so
/v1, ETSI 014 towards applications and WireGuard take them like any other link's keys.

The master end (role alice) takes batches with enc_keys and offers their IDs; the slave end (bob)
fetches them with dec_keys; the messages and the rules that keep both stores equal are in
qkdd.link.key_relay_messages. The key-store resynchronisation runs first on every session, as for the
frame path. A vendor KME that fails (or a batch the other end's KME cannot deliver) sets the link
"fallback", the state a failing device gives any link, with a /healthz detail naming the KME and
the cause; the engine keeps trying and the link resumes by itself when the KME answers again. Faults are
logged once per episode (qkdd.fault_episodes): the key calls (enc_keys, dec_keys), the Get status polls
and the other end's refusals each have their own, ended by the next success of the same kind of call.
"""
from __future__ import annotations

import logging
import time

import trio

from qkdd.fault_episodes import FaultEpisodes
from qkdd.hal.etsi014.client import Etsi014Error, VendorKey
from qkdd.hal.etsi014.device import Etsi014Device
from qkdd.keystore import KeyStore, KeyStoreError
from qkdd.link import key_relay_messages as relay
from qkdd.link.inventory import resynchronise
from qkdd.link.pipeline import ALICE, FrameOutcome, PipelineSettings
from qkdd.link.status import HEALTH_POLL_S, LinkStatus
from qkdd.link_channel import INVENTORY_CHANNEL, KEY_RELAY_CHANNEL, LinkChannel
from qkdd.peer import MuxStream, PeerError

log = logging.getLogger("qkdd.link")

RETRY_MAX_S = 10.0              # the longest wait between two tries of a failing KME
REPLY_MARGIN_S = 15.0           # the master waits the slave's fetch_retry_s plus this for an answer


class KeyRelayEngine:
    def __init__(self, link_id: str, role: str, device: Etsi014Device, store: KeyStore, channel: LinkChannel, *,
                 settings: PipelineSettings = PipelineSettings(), metrics=None, health=None):
        self.link_id = link_id
        self.role = role
        self.device = device
        self.store = store
        self.channel = channel
        self.settings = settings
        self.config = device.config
        self.status = LinkStatus(link_id, key_bits=settings.key_bits, metrics=metrics, health=health)
        self.device_error: str | None = None          # the vendor KME's last failure, None once it answers
        self._kme_detail = "vendor KME answering"       # its last Get status, for /healthz
        self._batch_counter = 0
        self.key_fault_log = FaultEpisodes(log, f"link {link_id}: vendor KME")             # enc_keys, dec_keys
        self.status_fault_log = FaultEpisodes(log, f"link {link_id}: vendor KME status")   # Get status polls
        self.refusal_log = FaultEpisodes(log, f"link {link_id}: key relay")                 # the slave's REFUSEs
        self._closing = False           # the device is being closed: calls still in flight fail, not the KME
        channel.prepare_with(INVENTORY_CHANNEL, lambda stream: resynchronise(link_id, store, stream))
        channel.register(KEY_RELAY_CHANNEL, self._serve)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The device and its health watch until cancelled; a device that cannot start (its certificate
        files unreadable) leaves the link "fallback", retried, and the daemon up."""
        self._closing = False
        task_status.started()
        try:
            while True:
                try:
                    await self.device.init()
                    break
                except Etsi014Error as exc:
                    self._device_failed(exc)
                    await trio.sleep(RETRY_MAX_S)
                    self._flush_fault_logs()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.device.run)
                nursery.start_soon(self._watch_kme)
        finally:
            self._closing = True
            with trio.CancelScope(shield=True):
                await self.device.close()

    @property
    def routed_bytes(self) -> int:
        return self.channel.queued_bytes

    # -- state ----------------------------------------------------------------------------------
    def _device_failed(self, exc: Etsi014Error, faults: FaultEpisodes | None = None) -> None:
        if self._closing:               # a call the shutdown overtook ("device not initialised"): no fault to report
            return
        detail = f"vendor KME: {exc}"
        (faults or self.key_fault_log).fault(exc.kind, str(exc))
        self.device_error = detail
        self.status.set_state("fallback", detail[:300])

    def _device_ok(self, detail: str = "", faults: FaultEpisodes | None = None) -> None:
        """A call of one kind succeeded. The link is running again only once no kind of call is failing
        (key calls, Get status, the other end's fetches): a success of one kind while another still fails
        leaves it in fallback with that failure's cause, so its state does not flap (and log "state
        changed") at every retry."""
        (faults or self.key_fault_log).recovered("answers again")
        self._kme_detail = detail or self._kme_detail
        if any(faults_of.failing for faults_of in (self.key_fault_log, self.status_fault_log, self.refusal_log)):
            return
        self.device_error = None
        if self.status.connected:
            self.status.set_state("running", f"relaying keys; {self._kme_detail}"[:300])

    async def _watch_kme(self) -> None:
        """Poll the KME's Get status: reachability and stored key count for /healthz."""
        while True:
            try:
                health = await self.device.health()
            except (Etsi014Error, trio.TooSlowError) as exc:
                self._device_failed(exc if isinstance(exc, Etsi014Error) else
                                    Etsi014Error("timeout", f"KME {self.device.base_url}: Get status timed out"),
                                    self.status_fault_log)
            else:
                self._device_ok(health.detail, self.status_fault_log)
            self._flush_fault_logs()
            await trio.sleep(HEALTH_POLL_S)

    def _flush_fault_logs(self) -> None:
        for faults in (self.key_fault_log, self.status_fault_log, self.refusal_log):
            faults.flush()

    # -- one session ----------------------------------------------------------------------------
    async def _serve(self, stream: MuxStream) -> None:
        self.status.session_up()
        if self.device_error is not None:
            self.status.set_state("fallback", self.device_error[:300])
        log.info("link %s: session %s ready (vendor KME key relay, %s end)", self.link_id,
                 stream.session.session_id, "master" if self.role == ALICE else "slave")
        try:
            if self.role == ALICE:
                await self._master(stream)
            else:
                await self._slave(stream)
        finally:
            self.status.session_down()

    async def _master(self, stream: MuxStream) -> None:
        table = relay.MasterRelay()
        backoff_s = self.config.request_interval_s
        while True:
            if await trio.to_thread.run_sync(lambda: self.store.fill(self.link_id).full):
                await trio.sleep(self.config.request_interval_s)       # take no key the store cannot hold
                continue
            try:
                keys = await self.device.enc_keys(self.device.keys_per_request())
            except Etsi014Error as exc:
                self._device_failed(exc)
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_MAX_S)
                continue
            backoff_s = self.config.request_interval_s
            self._device_ok()
            await self._relay_batch(stream, table, keys)
            await trio.sleep(self.config.request_interval_s)

    def _next_batch_id(self) -> int:
        self._batch_counter = (self._batch_counter + 1) % 1024
        return int(time.time() * 1000) * 1024 + self._batch_counter

    def _rows(self, keys: list[VendorKey]) -> list[tuple[str, bytes]]:
        return [(relay.key_id_for(self.link_id, key.key_id), key.material) for key in keys]

    async def _relay_batch(self, stream: MuxStream, table: relay.MasterRelay, keys: list[VendorKey]) -> None:
        batch_id = self._next_batch_id()
        rows = self._rows(keys)
        flags = [index % 2 == 0 for index in range(len(rows))]        # the master allocates even positions
        expires_at = time.time() + self.settings.key_expiry_s
        try:
            await trio.to_thread.run_sync(lambda: self.store.put_pending(self.link_id, batch_id, rows,
                                                                         expires_at=expires_at, allocatable=flags))
        except KeyStoreError as exc:
            log.warning("link %s: vendor key batch not stored: %s", self.link_id, exc)
            return
        await stream.send(table.offer(batch_id, [key.key_id for key in keys]))
        with trio.move_on_after(self.config.fetch_retry_s + self.config.timeout_s + REPLY_MARGIN_S) as scope:
            data = await stream.receive()
        if scope.cancelled_caught:   # the batch stays pending: the next session's resync settles it
            raise PeerError(f"no answer to key batch {batch_id} from the other end")
        try:
            answer = table.answer(data)
        except relay.RelayProtocolError as exc:
            raise PeerError(f"key relay: {exc}") from None
        if answer.kind is relay.Kind.ACCEPT:
            await trio.to_thread.run_sync(self.store.commit_frame, self.link_id, batch_id)
            self._record(batch_id, len(rows))
            self.refusal_log.recovered("the other end accepts key batches again")
            self._device_ok(faults=self.refusal_log)
        else:
            await trio.to_thread.run_sync(self.store.discard_frame, self.link_id, batch_id)
            detail = f"the other end could not fetch key batch {batch_id}: {answer.reason}"
            self.refusal_log.fault("refused", detail)
            self.device_error = detail
            self.status.set_state("fallback", detail[:300])

    def _record(self, batch_id: int, count: int) -> None:
        bits = count * self.settings.key_bits
        self.status.record(FrameOutcome(batch_id, self.role, secret_bits=bits, keys=count))
        self.device.update_estimates(key_rate_bps=self.status.rates()[0])

    async def _slave(self, stream: MuxStream) -> None:
        while True:
            data = await stream.receive()
            try:
                offer = relay.decode(data)
            except relay.RelayProtocolError as exc:
                raise PeerError(f"key relay: {exc}") from None
            if offer.kind is not relay.Kind.OFFER:
                raise PeerError(f"key relay: {offer.kind.name} sent to the slave end")
            reason = await self._take_offer(offer)
            answer = relay.Message(relay.Kind.ACCEPT if reason is None else relay.Kind.REFUSE, offer.batch_id,
                                   reason=reason or "")
            await stream.send(relay.encode(answer))

    async def _take_offer(self, offer: relay.Message) -> str | None:
        """Fetch and store one offered batch; None when stored, else the reason it was not."""
        try:
            keys = await self._fetch(list(offer.vendor_key_ids))
        except Etsi014Error as exc:
            self._device_failed(exc)
            return str(exc)
        self._device_ok()
        rows = self._rows(keys)
        flags = [index % 2 == 0 for index in range(len(rows))]        # the same partition as the master's
        expires_at = time.time() + self.settings.key_expiry_s
        try:
            await trio.to_thread.run_sync(lambda: self.store.put_pending(self.link_id, offer.batch_id, rows,
                                                                         expires_at=expires_at, allocatable=flags))
            await trio.to_thread.run_sync(self.store.commit_frame, self.link_id, offer.batch_id)
        except KeyStoreError as exc:
            log.warning("link %s: vendor key batch %d not stored: %s", self.link_id, offer.batch_id, exc)
            return f"the slave's key store: {exc}"
        self._record(offer.batch_id, len(rows))
        return None

    async def _fetch(self, vendor_key_ids: list[str]) -> list[VendorKey]:
        """dec_keys, retried for fetch_retry_s while the failure is a passing one."""
        deadline = trio.current_time() + self.config.fetch_retry_s
        wait_s = 0.2
        while True:
            try:
                return await self.device.dec_keys(vendor_key_ids)
            except Etsi014Error as exc:
                if not exc.transient or trio.current_time() + wait_s > deadline:
                    raise
                self._device_failed(exc)
            await trio.sleep(wait_s)
            wait_s = min(wait_s * 2, RETRY_MAX_S)
