"""check-config's look at the files authentication and audit need: each its/both link's secret file (readable,
private, for that link) and the key that signs the audit log. Problems are StartupErrors naming the key."""
from __future__ import annotations

import dataclasses
import tempfile

from qkdd.audit.service import open_trail
from qkdd.auth import secret as auth_secret
from qkdd.config import Config
from qkdd.preflight import StartupError


def check_auth_files(config: Config) -> None:
    for index, link in enumerate(config.links):
        if link.auth == "pq":
            continue
        try:
            secret = auth_secret.load(link.auth_secret_file)
        except auth_secret.AuthSecretError as exc:
            raise StartupError(f"links[{index}].auth_secret_file", str(exc)) from None
        if secret.link_id != link.link_id:
            raise StartupError(f"links[{index}].auth_secret_file", f"{link.auth_secret_file} is the secret of link "
                                                                   f"{secret.link_id!r}, not {link.link_id!r}")
    if config.audit.enabled:
        with tempfile.TemporaryDirectory() as scratch:      # the key is loaded; the real log is not touched
            probe = dataclasses.replace(config.audit, path=f"{scratch}/audit.log")
            open_trail(dataclasses.replace(config, audit=probe)).close()
