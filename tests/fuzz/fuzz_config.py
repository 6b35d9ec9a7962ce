"""Fuzz target: arbitrary bytes as the daemon's config file. load_config gives a Config or a ConfigError,
never another exception, and a ConfigError never quotes the KMS client secret."""
from __future__ import annotations

import os
import tomllib

from tests.fuzz._common import Finding, check_silent, fuzz, instrumented

with instrumented("tomllib"):
    from qkdd.config import Config, ConfigError, load_config

# The config file lives in memory (a memfd), rewritten for each input; nothing is left behind on disk.
_FILE = os.memfd_create("qkdd-fuzz-config")
_PATH = f"/proc/self/fd/{_FILE}"


def _client_secret(data: bytes) -> str | None:
    try:
        kms = tomllib.loads(data.decode("utf-8")).get("kms")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
    secret = kms.get("client_secret") if isinstance(kms, dict) else None
    return secret if isinstance(secret, str) else None


def TestOneInput(data: bytes) -> None:
    os.ftruncate(_FILE, 0)
    os.pwrite(_FILE, data, 0)
    try:
        config = load_config(_PATH, environ={})
    except ConfigError as error:
        secret = _client_secret(data)
        check_silent(str(error), [secret] if secret else [], "ConfigError")
        return
    if not isinstance(config, Config):
        raise Finding(f"load_config returned {type(config).__name__}")


def seeds() -> list[bytes]:
    from qkdd.config import to_toml
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "etc", "qkdd", "qkdd.toml"), "rb") as handle:
        found = [handle.read()]
    found.append(to_toml(load_config(os.devnull, environ={})).encode())
    found.append(b'[api]\nlisten = "127.0.0.1:8071"\n[kms]\nenabled = true\nurl = "https://kms"\n'
                 b'client_id = "qkdd"\nclient_secret = "s3cr3t-value-123"\n')
    found.append(b'[[links]]\nlink_id = "link-ab"\nrole = "alice"\ndriver = "sim"\npeer_listen = "0.0.0.0:7000"\n')
    return found


if __name__ == "__main__":
    fuzz(TestOneInput)
