"""Checks before the daemon binds anything: state directory, TLS files, open-files limit.

Each problem is one StartupError naming the config key and what is wrong (check-config reports the
TLS ones too, so a config that passes check-config does not fail here on a file it names).
"""
from __future__ import annotations

import logging
import os
import resource
import ssl

from qkdd.config import LISTENERS, Config

log = logging.getLogger("qkdd.daemon")


class StartupError(Exception):
    """The daemon cannot start: `what` names the part (config key or listener), `problem` the reason."""

    def __init__(self, what: str, problem: str):
        super().__init__(f"{what}: {problem}")
        self.what = what
        self.problem = problem


def check_tls_files(config: Config) -> None:
    """Load every listener's certificate, key and client CA once, so a bad file is named up front (and
    SKIP's PSK files)."""
    for name in LISTENERS:
        tls = config.listener(name).tls
        if tls is not None:
            _check_tls(tls, f"{name}.tls")
    if config.etsi004 is not None:
        _check_tls(config.etsi004.tls, "etsi004.tls")
    if config.skip is not None:
        from qkdd.skip.psk_file import PskError, read_psk
        for index, client in enumerate(config.skip.clients):
            try:
                read_psk(client.psk_file)
            except PskError as exc:
                raise StartupError(f"skip.clients[{index}].psk_file", str(exc)) from None


def _check_tls(tls, key: str) -> None:
    for field_name in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, field_name)
        if path is None:
            continue
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise StartupError(f"{key}.{field_name}", f"cannot read {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # The callback keeps OpenSSL from prompting on the terminal for an encrypted key.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_encrypted_key)
    except _EncryptedKey:
        raise StartupError(f"{key}.key_file", "the private key is encrypted; qkdd needs an unencrypted key "
                                              "file (mode 0600)") from None
    except ssl.SSLError as exc:
        raise StartupError(f"{key}.key_file", f"certificate and key do not load ({exc.reason or exc})") from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as exc:
            raise StartupError(f"{key}.client_ca_file", f"not a PEM CA certificate ({exc.reason or exc})") from None


class _EncryptedKey(Exception):
    pass


def _refuse_encrypted_key() -> bytes:
    raise _EncryptedKey()


def prepare_state_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartupError("daemon.state_dir", f"cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError("daemon.state_dir", f"{path} is not writable")


def raise_fd_limit(config: Config) -> None:
    """Lift the soft open-files limit so max_connections on both listeners fit (systemd's soft
    default is 1024)."""
    wanted = config.api.limits.max_connections + config.health.limits.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        if new_soft < wanted:
            log.warning("open-files limit below what max_connections needs",
                        extra={"limit": new_soft, "wanted": wanted})
