"""`[etsi004]` and `[skip]` in the configuration: what load_config refuses, and what check-config reports
about the files they name (TLS files, PSK files), each naming the key."""
from __future__ import annotations

import pytest

from qkdd.config import ConfigError, load_config
from tests.daemon_support import run_qkdd

LINK = ('[[links]]\nlink_id = "l1"\nrole = "alice"\ndriver = "sim"\npeer_addr = "127.0.0.1:7071"\n'
        'peer_key_file = "/k"\npeer_public_key = "/p"\n')
TLS = '[etsi004.tls]\ncert_file = "{d}/c.pem"\nkey_file = "{d}/k.pem"\nclient_ca_file = "{d}/ca.pem"\n'


def skip_section(psk_file: str = "/etc/qkdd/r.psk", **lines: str) -> str:
    values = {"local_system_id": '"KP_A"', **lines}
    head = "".join(f"{key} = {value}\n" for key, value in values.items())
    return (f"[skip]\n{head}[[skip.remotes]]\nsystem_id = \"KP_B\"\nlink_id = \"l1\"\n"
            f"[[skip.clients]]\nidentity = \"router-a\"\npsk_file = \"{psk_file}\"\n")


@pytest.mark.parametrize("text, key, problem", [
    (LINK + '[etsi004]\nlink_id = "l1"\n' + TLS + 'client_cert = "optional"\n', "etsi004.tls.client_cert",
     "must be \"required\""),
    (LINK + '[etsi004]\nlink_id = "l9"\n' + TLS + 'client_cert = "required"\n', "etsi004.link_id", "no link 'l9'"),
    (LINK + '[etsi004]\nlink_id = "l1"\nlisten = "127.0.0.1:8071"\n' + TLS + 'client_cert = "required"\n',
     "etsi004.listen", "also api.listen's"),
    (LINK + '[etsi004]\nlink_id = "l1"\ncapacity_bps = -1.0\n' + TLS + 'client_cert = "required"\n',
     "etsi004.capacity_bps", "must be in"),
    (LINK + skip_section(listen='"127.0.0.1:8072"'), "skip.listen", "also health.listen's"),
    (LINK + skip_section(local_system_id='"KP_B"'), "skip.local_system_id", "also a remote"),
    (LINK + skip_section(local_system_id='"K P"'), "skip.local_system_id", "must be 1-64 characters"),
    (LINK + '[skip]\nlocal_system_id = "KP_A"\n[[skip.clients]]\nidentity = "r"\npsk_file = "/f"\n',
     "skip.remotes", "at least one remote"),
    (LINK + skip_section() + '[[skip.clients]]\nidentity = "router-a"\npsk_file = "/g"\n',
     "skip.clients[1].identity", "duplicate identity"),
    (LINK + skip_section() + '[[skip.remotes]]\nsystem_id = "KP_C"\nlink_id = "l2"\n',
     "skip.remotes[1].link_id", "no link 'l2'"),
    (LINK + skip_section().replace('identity = "router-a"', 'identity = "router a"'),
     "skip.clients[0].identity", "printable ASCII"),
])
def test_etsi004_and_skip_sections_refuse_what_cannot_work(tmp_path, text, key, problem):
    path = tmp_path / "qkdd.toml"
    path.write_text(text.replace("{d}", str(tmp_path)))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.key == key and problem in caught.value.problem


def test_check_config_names_a_skip_psk_file_that_is_missing_short_or_not_hex(tmp_path):
    path = tmp_path / "qkdd.toml"
    psk = tmp_path / "router.psk"
    for content, problem in ((None, "cannot read"), ("00ff", "a PSK of 2 bytes"), ("zz" * 32, "not hex digits")):
        if content is not None:
            psk.write_text(content)
        path.write_text(LINK + skip_section(str(psk)))
        result = run_qkdd("check-config", "--config", str(path))
        assert result.returncode != 0
        assert f"skip.clients[0].psk_file: {psk}: {problem}" in result.stderr
        assert content is None or content not in result.stderr          # never the file's content
    psk.write_text("ab" * 32 + "\n")
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert 'local_system_id = "KP_A"' in result.stdout and "ab" * 32 not in result.stdout


def test_check_config_names_an_unreadable_etsi004_tls_file(tmp_path):
    path = tmp_path / "qkdd.toml"
    path.write_text((LINK + '[etsi004]\nlink_id = "l1"\n' + TLS + 'client_cert = "required"\n')
                    .replace("{d}", str(tmp_path)))
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode != 0
    assert f"etsi004.tls.cert_file: cannot read {tmp_path}/c.pem" in result.stderr
