"""Opens the daemon's audit trail from `[audit]`: the log file and the ML-DSA-65 key that signs its heads."""
from __future__ import annotations

import os

from qkdd.audit.trail import AuditTrail
from qkdd.config import Config
from qkdd.peer.identity import IdentityError, load_private_key
from qkdd.preflight import StartupError

AUDIT_FILE = "audit.log"


def open_trail(config: Config) -> AuditTrail | None:
    """The audit trail when `[audit] enabled`, signing with `key_file` or else the first link's peer identity;
    StartupError naming the key when the key or the file cannot be used."""
    audit = config.audit
    if not audit.enabled:
        return None
    key_file = audit.key_file or next((link.peer_key_file for link in config.links if link.peer_key_file), "")
    if not key_file:
        raise StartupError("audit.key_file", "no ML-DSA-65 key to sign the audit log's heads: set key_file (or a "
                                             "link's peer_key_file); qkdctl peer-key generate writes one")
    try:
        key = load_private_key(key_file)
    except (IdentityError, OSError) as exc:
        raise StartupError("audit.key_file", str(exc)) from None
    path = audit.path or os.path.join(config.daemon.state_dir, AUDIT_FILE)
    try:
        return AuditTrail(path, signer=key.sign, sign_every_records=audit.sign_every_records)
    except (OSError, ValueError) as exc:
        raise StartupError("audit.path", f"{path}: {exc}") from None
