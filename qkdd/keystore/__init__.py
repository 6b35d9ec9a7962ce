"""The key store: both ends of a link hold the same keys under the same UUIDs, encrypted at rest.

Public names: KeyStore (store.py), KeyState, StoredKey, the errors (model.py), StoreCapacity and Fill
(capacity.py), load_kek / create_kek / kek_for_state_dir (kek.py) and the resynchronisation plan (resync.py).
"""
from qkdd.keystore.capacity import Fill, StoreCapacity
from qkdd.keystore.kek import create_kek, kek_for_state_dir, kek_from_credentials, load_kek
from qkdd.keystore.model import (
    KeyAlreadyDelivered,
    KeyNotFound,
    KeyState,
    KeyStoreError,
    KeyUnavailable,
    StoredKey,
    StoreFull,
    StoreWriteError,
)
from qkdd.keystore.store import KeyStore

__all__ = [
    "Fill",
    "KeyAlreadyDelivered",
    "KeyNotFound",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "KeyUnavailable",
    "StoreCapacity",
    "StoredKey",
    "StoreFull",
    "StoreWriteError",
    "create_kek",
    "kek_for_state_dir",
    "kek_from_credentials",
    "load_kek",
]
