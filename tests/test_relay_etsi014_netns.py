"""ETSI GS QKD 014 between SAEs on non-adjacent nodes: three real daemons in network namespaces on a
chain P-Q-R of simulated links, KMEs on P and R only (mTLS API). SAE sae-P's Get key at P for slave
sae-R relays the key through Q; sae-R gets the same keys with Get key with key IDs at R, once."""
from __future__ import annotations

import base64

import pytest

from tests.chaos_net import missing_requirements
from tests.relay_lab import RelayLab
from tests.wireguard_support import key_forms

pytestmark = [pytest.mark.skipif(missing_requirements() is not None, reason=missing_requirements() or "")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with RelayLab(tmp_path_factory.mktemp("relay-etsi"), ["P", "Q", "R"], [("P", "Q"), ("Q", "R")],
                  etsi014=["P", "R"]) as running:
        running.wait_route("P", "R", timeout_s=90)
        yield running


def test_relay_etsi014_keys_between_saes_on_non_adjacent_nodes(lab):
    status = lab.etsi("P", "/api/v1/keys/sae-R/status")
    assert status.status_code == 200, status.text
    assert status.json()["target_KME_ID"] == "kme-R" and status.json()["stored_key_count"] > 0
    got = lab.etsi("P", "/api/v1/keys/sae-R/enc_keys", {"number": 3, "size": 256})
    assert got.status_code == 200, got.text
    keys = {k["key_ID"]: base64.b64decode(k["key"]) for k in got.json()["keys"]}
    assert len(keys) == 3 and all(len(material) == 32 for material in keys.values())
    assert len(set(keys.values())) == 3
    for key_id, material in keys.items():
        fetched = lab.etsi("R", "/api/v1/keys/sae-P/dec_keys", {"key_ID": key_id})
        assert fetched.status_code == 200, fetched.text
        assert base64.b64decode(fetched.json()["keys"][0]["key"]) == material
        again = lab.etsi("R", "/api/v1/keys/sae-P/dec_keys", {"key_ID": key_id})
        assert again.status_code == 400, again.text          # delivered once
    # the slave SAE cannot act as master for a SAE it does not know, and Q (no KME) serves no SAE
    assert lab.etsi("R", "/api/v1/keys/sae-Z/enc_keys").status_code in (400, 401, 404)
    for text in lab.logs().values():
        assert not any(form in text.encode() for material in keys.values() for form in key_forms(material))
