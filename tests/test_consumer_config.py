"""Configuration of the key consumers beyond WireGuard (`[[kms_push]]`, `[[ipsec]]`, `hybrid`): defaults, the
errors `qkdd check-config` reports, and the rule every consumer shares (expiry_s at least the rotation
interval)."""
from __future__ import annotations

import pytest

from qkdd.config import ConfigError, load_config
from tests.daemon_support import clean_env, run_qkdd

LINK = ('[[links]]\nlink_id = "l1"\nrole = "alice"\ndriver = "sim"\nkey_rotation_interval_s = 600\n'
        'peer_listen = "0.0.0.0:7071"\npeer_key_file = "/x/id.pem"\npeer_public_key = "/x/peer.pub"\n')
KMS = '[kms]\nenabled = true\nurl = "https://kms.example"\nclient_id = "qkd-agent"\nclient_secret = "s"\n'
WG_PUBLIC_KEY = "HTJCFVji7BIGv9iSV/M7VuLj7iiBuVTXa/LbKmfCKFA="


def write(tmp_path, text: str):
    path = tmp_path / "qkdd.toml"
    path.write_text(text)
    return path


def test_defaults_of_kms_push_and_ipsec(tmp_path):
    path = write(tmp_path, KMS + LINK + '[[kms_push]]\nname = "hanzo-lux"\nlink_id = "l1"\n'
                 '[[ipsec]]\nname = "ike"\nlink_id = "l1"\nconnection = "site-a-b"\nhybrid = "mlkem768"\n')
    config = load_config(str(path), environ={})
    push, ipsec = config.kms_push[0], config.ipsec[0]
    assert (push.folder, push.push, push.expiry_s, push.on_exhausted) == ("/", True, 86400.0, "clear")
    assert (ipsec.initiator, ipsec.vici_socket, ipsec.hybrid) == (False, "/var/run/charon.vici", "mlkem768")
    assert config.rotation_interval_s(push) == 600.0


@pytest.mark.parametrize("text, problem", [
    (LINK + '[[kms_push]]\nname = "x"\nlink_id = "l1"\n', "kms_push[0].push: needs [kms] enabled = true"),
    (KMS + LINK + '[[kms_push]]\nname = "x"\nlink_id = "l1"\nexpiry_s = 300\n',
     "kms_push[0].expiry_s: 300 s is shorter than the rotation interval of 600 s"),
    (KMS + LINK + '[[kms_push]]\nname = "x"\nlink_id = "l1"\nfolder = "inter-cluster"\n',
     "kms_push[0].folder: must be a folder path"),
    (KMS + LINK + '[[kms_push]]\nname = "x"\nlink_id = "l9"\n', "kms_push[0].link_id: no link 'l9'"),
    (KMS + LINK + '[[kms_push]]\nname = "x"\nlink_id = "l1"\n[[kms_push]]\nname = "x"\nlink_id = "l1"\n',
     "kms_push[1].name: duplicate kms_push name 'x'"),
    (LINK + '[[ipsec]]\nname = "x"\nlink_id = "l1"\nconnection = "a b"\n', "ipsec[0].connection: must be"),
    (LINK + '[[ipsec]]\nname = "x"\nlink_id = "l1"\nconnection = "c"\nhybrid = "kyber"\n',
     "ipsec[0].hybrid: must be one of none, mlkem768"),
    (LINK + '[[ipsec]]\nname = "x"\nlink_id = "l1"\nconnection = "c"\nrotation_interval_s = 3600\nexpiry_s = 60\n',
     "ipsec[0].expiry_s: 60 s is shorter than the rotation interval of 3600 s"),
    (LINK + f'[[wireguard]]\nname = "t"\nlink_id = "l1"\ninterface = "wg0"\npeer_public_key = "{WG_PUBLIC_KEY}"\n'
            'expiry_s = 100\n', "wireguard[0].expiry_s: 100 s is shorter than the rotation interval of 600 s"),
    (LINK.replace('peer_listen = "0.0.0.0:7071"\n', "") + '[[ipsec]]\nname = "x"\nlink_id = "l1"\nconnection = "c"\n',
     "ipsec[0].link_id: link 'l1' has no classical channel"),
], ids=["push without kms", "kms expiry below interval", "relative folder", "unknown link", "duplicate name",
        "bad connection", "unknown hybrid", "ipsec expiry below interval", "wireguard expiry below interval",
        "ipsec link without channel"])
def test_consumer_errors(tmp_path, text, problem):
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, text)), environ={})
    assert problem in str(info.value)


def test_check_config_names_the_key_and_keeps_the_secret_out(tmp_path):
    path = write(tmp_path, KMS.replace('client_secret = "s"', 'client_secret = "hunter2-secret"') + LINK
                 + '[[kms_push]]\nname = "x"\nlink_id = "l1"\nexpiry_s = 10\n')
    result = run_qkdd("check-config", "--config", str(path), env=clean_env())
    assert result.returncode != 0
    assert "kms_push[0].expiry_s" in result.stderr + result.stdout
    assert "hunter2-secret" not in result.stderr + result.stdout
