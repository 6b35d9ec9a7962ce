"""The ETSI GS QKD 014 KME of a qkdd: SAE identity and registry (identity.py), request checks
(key_request.py), keys cut from stored keys (container.py), the reservation exchange between KMEs
(reservation.py, sans-IO), the slave's delivery ledger (ledger.py) and the service tying them to the key
store (service.py). Routes: qkdd/api/etsi014.py."""
from __future__ import annotations

import logging
import os

from qkdd.keystore import KeyStore, kek_for_state_dir, load_kek
from qkdd.keystore.capacity import DEFAULT_CACHE_MIB
from qkdd.kme.config import Etsi014Config
from qkdd.kme.ledger import Ledger
from qkdd.kme.service import KmeService
from qkdd.metrics import Metrics

log = logging.getLogger("qkdd.etsi014")


def open_kme(config: Etsi014Config, state_dir: str, keystore: KeyStore | None = None,
             metrics: Metrics | None = None, *, cache_mib: int = DEFAULT_CACHE_MIB) -> KmeService:
    """The KME over the daemon's key store (`keystore`; opened here while no link engine opens it) and
    its ledger, reporting to `metrics`; erases what a crash left undeleted. Raises KeyStoreError /
    LedgerError / OSError. `cache_mib`: the page cache of a store opened here ([keystore] cache_mib)."""
    if keystore is None:
        keystore = _open_key_store(config, state_dir, cache_mib)
    ledger = _open_ledger(config, state_dir, keystore)
    service = KmeService(config, keystore, ledger, metrics=metrics)
    erased = service.erase_spent()
    if erased:
        log.info("erased %d stored keys delivered before a restart", erased)
    return service


def _open_ledger(config: Etsi014Config, state_dir: str, keystore: KeyStore) -> Ledger:
    """The ledger in `ledger_file` if set; else in the key store's file (one transaction and fsync for
    both), unless a ledger file of an earlier version is still at its old default place."""
    if config.ledger_file:
        return Ledger(config.ledger_file)
    earlier = os.path.join(state_dir, "etsi014.db")
    if os.path.exists(earlier):
        log.warning("keeping the ETSI 014 ledger in %s, where an earlier version put it; the current default "
                    "is the key store's file", earlier)
        return Ledger(earlier)
    return Ledger(database=keystore.database)


def _open_key_store(config: Etsi014Config, state_dir: str, cache_mib: int) -> KeyStore:
    kek = load_kek(config.kek_file) if config.kek_file else kek_for_state_dir(state_dir)
    return KeyStore(config.key_store_file or os.path.join(state_dir, "keys.db"), kek, cache_mib=cache_mib)


__all__ = ["Etsi014Config", "KmeService", "open_kme"]
