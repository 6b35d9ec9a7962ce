"""The slave KME's store work per ETSI 014 reservation: the key store's reservation of the stored key and
the ledger's record, in group commits as KmeService does them (real SQLite file, WAL, synchronous=FULL).

    python -m bench.kme_store [--keys 60000] [--group 6 --group 20] [--ledger shared|file]

Seeds `--keys` stored keys of the other end's share, then records one 256-bit, one-key reservation per
stored key through KmeService._store_reservations, `--group` reservations per transaction. Prints one
JSON object per group size: {"group","keys","ledger","cpu_ms_per_reservation","sys_ms_per_reservation",
"wall_ms_per_reservation"}. CPU is this process's (user + system, the fsync included), the figure to
compare on a shared machine; run the configurations to compare in one invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid

from qkdd.keystore import KeyStore
from qkdd.kme.config import Etsi014Config, PeerKmeConfig, SaeConfig
from qkdd.kme.container import plan_keys
from qkdd.kme.ledger import Ledger
from qkdd.reservation.protocol import Etsi014Reservation
from qkdd.kme.service import KmeService

LINK = "a-b"
CONFIG = Etsi014Config(kme_id="kme-b", saes=(SaeConfig("sae-a", "kme-a"), SaeConfig("sae-b", "kme-b")),
                       peers=(PeerKmeConfig("kme-a", LINK),))


def measure(directory: str, keys: int, group: int, ledger_kind: str) -> dict:
    store = KeyStore(os.path.join(directory, "keys.db"), os.urandom(32))
    stored = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(keys)]
    store.put_pending(LINK, 0, stored, expires_at=4e9, allocatable=[False] * keys)
    store.commit_frame(LINK, 0)
    ledger = (Ledger(database=store.database) if ledger_kind == "shared"
              else Ledger(os.path.join(directory, "etsi014.db")))
    service = KmeService(CONFIG, store, ledger)
    reservations = [Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, plan_keys([(key_id, 256)], 1, 256))
                    for key_id, _ in stored]
    before, started = os.times(), time.perf_counter()
    for first in range(0, keys, group):
        with service._open_batch():
            errors = service._store_reservations(LINK, reservations[first:first + group])
        if any(error is not None for error in errors):
            raise RuntimeError(f"a reservation was refused: {errors}")
    after, wall_s = os.times(), time.perf_counter() - started
    ledger.close()
    store.close()
    cpu_s = (after.user - before.user) + (after.system - before.system)
    return {"group": group, "keys": keys, "ledger": ledger_kind,
            "cpu_ms_per_reservation": round(1000 * cpu_s / keys, 4),
            "sys_ms_per_reservation": round(1000 * (after.system - before.system) / keys, 4),
            "wall_ms_per_reservation": round(1000 * wall_s / keys, 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=60000)
    parser.add_argument("--group", type=int, action="append", help="reservations per transaction (repeatable)")
    parser.add_argument("--ledger", choices=["shared", "file"], action="append",
                        help="ledger in the key store's file (the default) or a file of its own (repeatable)")
    args = parser.parse_args(argv)
    if args.keys <= 0 or any(group <= 0 for group in args.group or []):
        parser.error("--keys and --group must be positive")
    for ledger_kind in args.ledger or ["shared"]:
        for group in args.group or [6, 20]:
            with tempfile.TemporaryDirectory() as directory:
                print(json.dumps(measure(directory, args.keys, group, ledger_kind)), flush=True)


if __name__ == "__main__":
    main()
