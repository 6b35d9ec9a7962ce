"""Two real qkdd daemons with auth "its" and the audit trail on (a make-demo-like run): keys requested at one end
match at the other, the pool metrics move, every delivery is in each end's audit log exactly once, and both
logs verify against the nodes' public keys after a clean stop."""
from __future__ import annotations

import json

import pytest

from qkdd import ctl
from qkdd.auth import secret as auth_secret
from qkdd.auth.pool import AuthPool
from qkdd.keystore import kek_for_state_dir
from qkdd.link.pair import LINK_ID, LinkPair
from qkdd.link.service import AUTH_POOL_FILE
from tests.test_link_daemons import FRAME_DETECTIONS, available, fetch, request, wait_until


def test_its_link_with_audit_between_two_daemons(tmp_path, capsys):
    secret_file = tmp_path / "link.secret"
    auth_secret.write(auth_secret.generate(LINK_ID, 128 * 64), str(secret_file))
    pair = LinkPair(tmp_path / "pair", frame_detections=FRAME_DETECTIONS,
                    extra_link={"auth": "its", "auth_secret_file": str(secret_file)})
    pair.write()
    for end in pair.ends.values():
        with open(end.config_path, "a") as f:
            f.write("\n[audit]\nenabled = true\nsign_every_records = 16\n")
    try:
        for role in ("alice", "bob"):
            pair.start(role)
        for role in ("alice", "bob"):
            pair.wait_ready(role)
        wait_until(lambda: available(pair, "alice") >= 12 and available(pair, "bob") >= 12, what="keys at both ends")
        handed = {"alice": [], "bob": []}
        for i in range(10):
            requester, fetcher = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
            key = request(pair, requester).json()
            other = fetch(pair, fetcher, key["key_id"])
            assert other.status_code == 200 and other.json()["key"] == key["key"]
            handed[requester].append(key["key_id"])
            handed[fetcher].append(key["key_id"])
        text = pair.http.get(f"http://{pair.ends['alice'].health}/metrics").text
        assert f'qkd_auth_pool_bits{{link_id="{LINK_ID}"}}' in text
        consumed = [line for line in text.splitlines() if line.startswith("qkd_auth_key_bits_consumed_total{")]
        assert consumed and float(consumed[0].split()[-1]) >= 384
    finally:
        pair.stop()
    for role, end in pair.ends.items():
        log_path = end.state_dir / "audit.log"
        records = [json.loads(line) for line in log_path.read_bytes().splitlines()]
        delivered = [key_id for r in records if r["event"] == "delivered" for key_id, _ in r["keys"]]
        for key_id in handed[role]:
            assert delivered.count(key_id) == 1, (role, key_id)
        assert any(r["event"] == "generated" for r in records)
        assert ctl.main(["audit", "verify", str(log_path), "--public-key", str(pair.workdir / f"{role}.pub")]) == 0
        assert "intact" in capsys.readouterr().out
    pools = {role: AuthPool(str(end.state_dir / AUTH_POOL_FILE), kek_for_state_dir(str(end.state_dir)), LINK_ID)
             for role, end in pair.ends.items()}
    assert set(pools["alice"].positions()) <= set(pools["bob"].positions())
    assert pools["alice"].consumed_bits >= 384
    for pool in pools.values():
        pool.close()


@pytest.fixture(autouse=True)
def _no_kek_source(monkeypatch):
    monkeypatch.delenv("QKD_KEK_SOURCE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
