"""Configuration: `qkdd check-config` as a real subprocess (exit status, one-line errors, redaction),
and load_config precedence (file < credential < environment) in process."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon_support import clean_env, run_qkdd
from qkdd.config import ConfigError, Secret, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "qkdd" / "qkdd.toml"

LINK = '[[links]]\nlink_id = "sim-1"\nrole = "alice"\ndriver = "sim"\n'

# (name, config text, environment, the exact stderr line)
BAD_CONFIGS = [
    ("typo", '[api]\nlisen = "127.0.0.1:8071"\n', {},
     'config error: api.lisen: unknown key (did you mean "listen"?)'),
    ("top-level typo", '[helth]\nlisten = "127.0.0.1:8072"\n', {},
     'config error: helth: unknown key (did you mean "health"?)'),
    ("wrong type", '[api.limits]\nmax_connections = "many"\n', {},
     "config error: api.limits.max_connections: must be an integer, got a string ('many')"),
    ("threshold zero", LINK + "qber_threshold = 0\n", {},
     "config error: links[0].qber_threshold: must be in (0, 0.11], got 0.0"),
    ("threshold above 11 %", LINK + "qber_threshold = 0.12\n", {},
     "config error: links[0].qber_threshold: must be in (0, 0.11], got 0.12"),
    ("a body limit the body budget cannot hold", '[health.limits]\nmax_body_bytes = 2048\n'
     'max_buffered_body_bytes = 1024\n', {},
     "config error: health.limits: max_body_bytes (2048) must not exceed max_buffered_body_bytes (1024): a body "
     "that large could never be read"),
    ("no connections per source", '[api.limits]\nmax_connections_per_source = 0\n', {},
     "config error: api.limits.max_connections_per_source: must be in [1, 1048576], got 0"),
    ("listen without port", '[api]\nlisten = "localhost"\n', {},
     "config error: api.listen: expected host:port (IPv6 as [addr]:port), got 'localhost'"),
    ("port out of range", '[health]\nlisten = "127.0.0.1:65536"\n', {},
     "config error: health.listen: port must be in [0, 65535], got 65536"),
    ("negative limit", "[api.limits]\nheader_timeout_s = -1.5\n", {},
     "config error: api.limits.header_timeout_s: must be in (0, inf], got -1.5"),
    ("unknown driver", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "cerberis"\n', {},
     "config error: links[0].driver: must be one of sim, etsi014, serial, sdk, idq, toshiba, qlabs; got "
     "'cerberis'; IDQ devices are driven through their ETSI 014 KME: driver = \"idq\""),
    ("sdk driver without its library", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "sdk"\n', {},
     'config error: links[0].sdk: required for driver "sdk": sdk_library (the vendor library implementing '
     'qkd_device.h)'),
    ("sdk library by a relative path", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "sdk"\n'
     '[links.sdk]\nsdk_library = "libvendor.so"\n', {},
     "config error: links[0].sdk.sdk_library: must be an absolute path to a shared library, got 'libvendor.so'"),
    ("serial device that is no path", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "serial"\n'
     'device_addr = "COM3"\n', {},
     "config error: links[0].device_addr: driver \"serial\": the device path (/dev/ttyUSB0, /dev/serial/by-id/...), "
     "got 'COM3'"),
    ("vendor preset without its section", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "qlabs"\n'
     'device_addr = "kme.example"\n', {},
     'config error: links[0].etsi014: required for driver "qlabs": sae_id, peer_sae_id, cert_file, key_file, ca_file'),
    ("vendor KME over plain http", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "etsi014"\n'
     'device_addr = "http://kme.example"\n[links.etsi014]\nsae_id = "a"\npeer_sae_id = "b"\ncert_file = "c"\n'
     'key_file = "k"\nca_file = "ca"\n', {},
     "config error: links[0].device_addr: the KME must be reached over https (ETSI GS QKD 014 clause 4: mutual TLS)"),
    ("vendor KME section without its certificate", '[[links]]\nlink_id = "l1"\nrole = "bob"\ndriver = "idq"\n'
     'device_addr = "kme.example"\n[links.etsi014]\nsae_id = "a"\npeer_sae_id = "b"\nkey_file = "k"\n'
     'ca_file = "ca"\n', {}, "config error: links[0].etsi014.cert_file: required key is missing"),
    ("unknown protocol", LINK + 'protocol = "bb48"\n', {},
     "config error: links[0].protocol: must be one of bb84, e91, cvqkd; got 'bb48' (did you mean \"bb84\"?)"),
    ("duplicate link id", LINK + LINK.replace("alice", "bob"), {},
     "config error: links[1].link_id: duplicate link_id 'sim-1' (also links[0])"),
    ("garbage threshold from environment", LINK, {"QKD_QBER_THRESHOLD": "eight percent"},
     "config error: QKD_QBER_THRESHOLD (links[0].qber_threshold): must be a number, got 'eight percent'"),
    ("garbage listen from environment", "", {"QKD_HEALTH_LISTEN": "0.0.0.0:http"},
     "config error: QKD_HEALTH_LISTEN (health.listen): expected host:port (IPv6 as [addr]:port), got '0.0.0.0:http'"),
    ("TOML syntax", "[api\nlisten = 1\n", {},
     "config error: {path}: invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 5)"),
    ("TOML nested past the parser's recursion limit (found by fuzzing)", "x = " + "[" * 2000, {},
     "config error: {path}: invalid TOML: arrays or inline tables nested too deeply"),
    ("client certificates without a CA",
     '[api.tls]\ncert_file = "/x.pem"\nkey_file = "/x.key"\nclient_cert = "required"\n', {},
     'config error: api.tls.client_ca_file: required when client_cert = "required" '
     "(the CA that signs client certificates)"),
    ("missing role", '[[links]]\nlink_id = "l1"\ndriver = "sim"\n', {},
     "config error: links[0].role: required key is missing"),
    ("bad link id", '[[links]]\nlink_id = "../etc"\nrole = "alice"\ndriver = "sim"\n', {},
     "config error: links[0].link_id: must be 1-64 characters of A-Z a-z 0-9 . _ - (starting with a letter "
     "or digit), got '../etc'"),
    ("device address missing for a hardware driver", '[[links]]\nlink_id = "l1"\nrole = "alice"\n'
     'driver = "etsi014"\n', {}, 'config error: links[0].device_addr: required for driver "etsi014"'),
    ("kms enabled without secret", '[kms]\nenabled = true\nurl = "https://kms.example"\nclient_id = "c"\n', {},
     "config error: kms.client_secret: required when kms is enabled (or set KMS_CLIENT_SECRET or the "
     "credential kms-client-secret)"),
    ("same port twice", '[api]\nlisten = "0.0.0.0:9000"\n[health]\nlisten = "127.0.0.1:9000"\n', {},
     "config error: health.listen: 127.0.0.1:9000 overlaps api.listen 0.0.0.0:9000"),
    ("simulator seed without the testing opt-in", LINK + "[links.sim]\nseed = 7\n", {},
     "config error: links[0].sim.seed: makes the simulated source reproducible, so anyone who knows the seed "
     "knows the keys; only for tests: set allow_insecure_seed = true in the same table"),
    ("ETSI 014 peer that nothing reaches", '[etsi014]\nkme_id = "kme-a"\n[[etsi014.peers]]\nkme_id = "kme-b"\n'
     'link_id = "sim-9"\n', {},
     "config error: etsi014.peers[0].link_id: no link 'sim-9' with a classical channel in [[links]] (peer_addr or "
     "peer_listen, peer_key_file and peer_public_key), and no [etsi014.peers.channel]"),
    ("ETSI 014 without client certificates", '[etsi014]\nkme_id = "kme-a"\n', {},
     'config error: etsi014: needs [api.tls] with client_cert = "optional" or "required": the KME knows each SAE '
     "by its client certificate"),
    ("ETSI 014 requests of more than 1 MiB of key", '[etsi014]\nkme_id = "kme-a"\nmax_key_size_bits = 1048576\n'
     'max_key_per_request = 9\n', {},
     "config error: etsi014.max_key_per_request: times max_key_size_bits is 9437184 bits; one request may take "
     "at most 8388608 (1 MiB of key)"),
    ("key store capacity below one key", "[keystore]\nmax_key_bits = 4096\n", {},
     "config error: keystore.max_key_bits: must be 0 (no bound) or in [8192, 2^62], got 4096"),
    ("key store byte bound below 1 MiB", "[keystore]\nmax_bytes = 65536\n", {},
     "config error: keystore.max_bytes: must be 0 (no bound) or in [1048576, 2^62], got 65536"),
    ("negative key store bound", "[keystore]\nmax_bytes = -1\n", {},
     "config error: keystore.max_bytes: must be 0 (no bound) or in [1048576, 2^62], got -1"),
    ("key store bound as text", '[keystore]\nmax_key_bits = "1G"\n', {},
     "config error: keystore.max_key_bits: must be an integer, got a string ('1G')"),
    ("negative key rate floor", LINK + "min_key_rate_bps = -5\n", {},
     "config error: links[0].min_key_rate_bps: must be in [0, inf], got -5.0"),
    ("stall time shorter than the rate window", LINK + "stall_after_s = 2\n", {},
     "config error: links[0].stall_after_s: must be in [10.0, 86400], got 2.0"),
    ("unreadable TLS file", '[api.tls]\ncert_file = "/nonexistent/kme.pem"\nkey_file = "/nonexistent/kme.key"\n',
     {}, "config error: api.tls.cert_file: cannot read /nonexistent/kme.pem: No such file or directory"),
]


@pytest.mark.parametrize("name,text,env,expected", BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_one_precise_line_and_exit_2(tmp_path, name, text, env, expected):
    path = tmp_path / "qkdd.toml"
    path.write_text(text)
    result = run_qkdd("check-config", "--config", str(path), env=clean_env(**env))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr == expected.format(path=path) + "\n"


def test_missing_config_file(tmp_path):
    missing = tmp_path / "absent.toml"
    result = run_qkdd("check-config", "--config", str(missing))
    assert (result.returncode, result.stderr) == (2, f"config error: {missing}: no such file\n")


def test_run_with_bad_config_exits_2_before_binding(tmp_path):
    path = tmp_path / "qkdd.toml"
    path.write_text(LINK + "qber_threshold = 0.2\n")
    result = run_qkdd("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == "config error: links[0].qber_threshold: must be in (0, 0.11], got 0.2\n"


def test_run_refuses_a_simulator_seed_and_check_config_takes_it_with_the_opt_in(tmp_path):
    path = tmp_path / "qkdd.toml"
    path.write_text(LINK + "[links.sim]\nseed = 7\n")
    result = run_qkdd("run", "--config", str(path))
    assert result.returncode == 2 and result.stderr.startswith("config error: links[0].sim.seed: "), result
    path.write_text(LINK + "[links.sim]\nseed = 7\nallow_insecure_seed = true\n")
    result = run_qkdd("check-config", "--config", str(path), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "allow_insecure_seed = true" in result.stdout


def test_example_config_checks_and_secrets_are_redacted(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "kms-client-secret").write_text("credential-secret-4711\n")
    env = clean_env(KMS_CLIENT_ID="qkd-agent", CREDENTIALS_DIRECTORY=str(credentials))
    result = run_qkdd("check-config", "--config", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr
    assert 'client_secret = "***"' in result.stdout
    assert "credential-secret-4711" not in result.stdout + result.stderr
    assert '[[links]]\nlink_id = "sim-1"' in result.stdout

    env["KMS_CLIENT_SECRET"] = "environment-secret-0815"
    result = run_qkdd("check-config", "--config", str(EXAMPLE), "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["kms"]["client_secret"] == "***"
    assert effective["kms"]["client_id"] == "qkd-agent"
    assert "environment-secret-0815" not in result.stdout + result.stderr


def test_environment_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "qkdd.toml"
    path.write_text('[daemon]\nstate_dir = "/srv/file"\n[api]\nlisten = "127.0.0.1:8071"\n'
                    '[[links]]\nlink_id = "from-file"\nrole = "alice"\ndriver = "sim"\nqber_threshold = 0.05\n'
                    'key_rotation_interval_s = 60\n')
    env = clean_env(QKD_STATE_DIR="/srv/env", QKD_API_LISTEN="[::1]:9071", QKD_LINK_ID="from-env",
                    QKD_QBER_THRESHOLD="0.07", QKD_KEY_ROTATION_INTERVAL="900", QKD_PROTOCOL="e91",
                    QKD_DRIVER="serial", QKD_DEVICE_ADDR="/dev/ttyUSB0", QKD_LOG_LEVEL="")
    result = run_qkdd("check-config", "--config", str(path), "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["daemon"] == {"state_dir": "/srv/env", "log_level": "info"}   # empty = unset
    assert effective["api"]["listen"] == "[::1]:9071"
    assert effective["links"] == [{
        "link_id": "from-env", "role": "alice", "driver": "serial", "protocol": "e91",
        "device_addr": "/dev/ttyUSB0", "peer_addr": "", "qber_threshold": 0.07,
        "key_rotation_interval_s": 900.0, "peer_listen": "", "peer_key_file": "", "peer_public_key": "",
        "frames_in_flight": 4, "key_bits": 256, "key_expiry_s": 86400.0, "min_key_rate_bps": 0.0,
        "stall_after_s": 60.0, "sim": None, "reconciliation": "cascade", "etsi014": None, "serial": None, "relay": True,
        "sdk": None, "ldpc_decoder": "auto",
        "auth": "pq", "auth_secret_file": "", "auth_refill_bits": 1024, "auth_pool_max_bits": 1 << 20,
        "chsh_eps": 1e-10}]


# ---- in process: precedence details --------------------------------------------------------------

def test_secret_precedence_file_then_credential_then_environment(tmp_path):
    path = tmp_path / "qkdd.toml"
    path.write_text('[kms]\nclient_secret = "from-file"\n')
    assert load_config(str(path), {}).kms.client_secret == Secret("from-file")
    credentials = tmp_path / "cred"
    credentials.mkdir()
    (credentials / "kms-client-secret").write_text("from-credential\n")
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert load_config(str(path), environ).kms.client_secret == Secret("from-credential")
    (credentials / "kms-client-secret").unlink()
    # The packaged unit loads a directory of credentials, which systemd prefixes with "qkdd_".
    (credentials / "qkdd_kms-client-secret").write_text("from-directory-credential")
    assert load_config(str(path), environ).kms.client_secret == Secret("from-directory-credential")
    environ["KMS_CLIENT_SECRET"] = "from-env"
    config = load_config(str(path), environ)
    assert config.kms.client_secret.reveal() == "from-env"
    assert "from-env" not in repr(config) and "from-env" not in str(config.to_dict())


def test_environment_alone_creates_the_link(tmp_path):
    environ = {"QKD_LINK_ID": "hanzo-lux-1", "QKD_LINK_ROLE": "bob", "QKD_DRIVER": "sim"}
    path = tmp_path / "empty.toml"
    path.write_text("")
    config = load_config(str(path), environ)
    assert [(link.link_id, link.role, link.driver, link.protocol) for link in config.links] == [
        ("hanzo-lux-1", "bob", "sim", "bb84")]
    with pytest.raises(ConfigError) as error:
        load_config(str(path), {"QKD_LINK_ID": "x", "QKD_DRIVER": "sim"})
    assert (error.value.key, error.value.problem) == ("links[0].role", "required key is missing")


def test_environment_overrides_only_the_first_of_several_links(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text(LINK + LINK.replace("sim-1", "sim-2").replace("alice", "bob"))
    config = load_config(str(path), {"QKD_PROTOCOL": "cvqkd"})
    assert [(link.link_id, link.protocol) for link in config.links] == [("sim-1", "cvqkd"), ("sim-2", "bb84")]


def test_boundaries_accepted(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(LINK + 'qber_threshold = 0.11\n[api]\nlisten = "[::]:0"\n[health.limits]\n'
                    'shutdown_grace_s = 0\nmax_body_bytes = 0\n')
    config = load_config(str(path), {})
    assert config.links[0].qber_threshold == 0.11
    assert (config.api.listen.host, config.api.listen.port) == ("::", 0)
    assert config.health.limits.shutdown_grace_s == 0.0


# ---- [[wireguard]] tunnels ---------------------------------------------------------------------

WG_PUBLIC_KEY = "HTJCFVji7BIGv9iSV/M7VuLj7iiBuVTXa/LbKmfCKFA="


def _wireguard_config(tmp_path, tunnel: str, link_extra: str = 'peer_listen = "0.0.0.0:7071"\n'
                      'peer_key_file = "/x/id.pem"\npeer_public_key = "/x/peer.pub"\n'):
    path = tmp_path / "qkdd.toml"
    path.write_text('[[links]]\nlink_id = "l1"\nrole = "alice"\ndriver = "sim"\nkey_rotation_interval_s = 600\n'
                    + link_extra + "\n[[wireguard]]\n" + tunnel)
    return path


def test_wireguard_tunnel_defaults_and_interval_from_the_link(tmp_path):
    path = _wireguard_config(tmp_path, f'name = "t1"\nlink_id = "l1"\ninterface = "wg0"\n'
                                       f'peer_public_key = "{WG_PUBLIC_KEY}"\n')
    config = load_config(str(path), environ={})
    tunnel = config.wireguard[0]
    assert (tunnel.expiry_s, tunnel.on_exhausted, tunnel.rotation_interval_s) == (86400.0, "clear", None)
    assert config.rotation_interval_s(tunnel) == 600.0
    config = load_config(str(path), environ={"QKD_KEY_ROTATION_INTERVAL": "45"})
    assert config.rotation_interval_s(config.wireguard[0]) == 45.0


@pytest.mark.parametrize("tunnel, link_extra, problem", [
    ('rotation_interval_s = 29', None, "wireguard[0].rotation_interval_s: must be in [30.0"),
    ('on_exhausted = "drop"', None, "wireguard[0].on_exhausted: must be one of clear, random"),
    ('', 'peer_addr = "10.0.0.2:7071"\n', "has no classical channel"),
], ids=["interval below 30 s", "unknown policy", "link without channel"])
def test_wireguard_tunnel_errors(tmp_path, tunnel, link_extra, problem):
    text = f'name = "t1"\nlink_id = "l1"\ninterface = "wg0"\npeer_public_key = "{WG_PUBLIC_KEY}"\n{tunnel}\n'
    path = _wireguard_config(tmp_path, text) if link_extra is None else _wireguard_config(tmp_path, text, link_extra)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={})
    assert problem in str(info.value)


def test_wireguard_peer_key_and_link_are_checked(tmp_path):
    path = _wireguard_config(tmp_path, 'name = "t1"\nlink_id = "l2"\ninterface = "wg0"\npeer_public_key = "abc"\n')
    with pytest.raises(ConfigError, match="wireguard\\[0\\].peer_public_key: must be a WireGuard public key"):
        load_config(str(path), environ={})
    path = _wireguard_config(tmp_path, f'name = "t1"\nlink_id = "l2"\ninterface = "wg0"\n'
                                       f'peer_public_key = "{WG_PUBLIC_KEY}"\n')
    with pytest.raises(ConfigError, match="no link 'l2'"):
        load_config(str(path), environ={})


def test_the_example_config_names_every_key_the_daemon_accepts():
    """etc/qkdd/qkdd.toml is "the commented example with every key" (README): each field of every config
    section appears in it as `name =`, set or commented out."""
    import dataclasses
    import re
    import typing

    from qkdd.config import Config, ListenAddress

    text = EXAMPLE.read_text()
    written = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", text, re.M))

    def fields_of(section: type, path: str):
        hints = typing.get_type_hints(section)
        for item in dataclasses.fields(section):
            inner = [arg for arg in typing.get_args(hints[item.name]) if dataclasses.is_dataclass(arg)]
            target = hints[item.name] if dataclasses.is_dataclass(hints[item.name]) else (inner[0] if inner else None)
            if target is not None and target is not ListenAddress:        # (a "host:port" string)
                yield from fields_of(target, f"{path}{item.name}.")
            else:
                yield f"{path}{item.name}", item.name

    missing = sorted(path for path, name in fields_of(Config, "") if name not in written)
    assert missing == []


def test_check_config_warns_of_links_the_daemon_will_not_run(tmp_path):
    """Valid but not run: a driver without a link engine, and a link without peer identities. check-config
    still exits 0 and prints the configuration, and says so on stderr, one line per link."""
    path = tmp_path / "qkdd.toml"
    path.write_text('[[links]]\nlink_id = "dev-1"\nrole = "alice"\ndriver = "serial"\ndevice_addr = "/dev/ttyUSB0"\n'
                    'protocol = "e91"\npeer_addr = "192.0.2.9:7071"\n'
                    '[[links]]\nlink_id = "sim-2"\nrole = "bob"\ndriver = "sim"\npeer_addr = "192.0.2.9:7072"\n')
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode == 0 and 'link_id = "dev-1"' in result.stdout
    assert result.stderr.splitlines() == [
        'warning: links[0] (dev-1): driver serial / protocol e91 has no link engine yet (the daemon runs protocol '
        '"bb84" with drivers sim, serial, sdk; protocol "e91" with drivers sim; protocol "cvqkd" with drivers sim; '
        'and drivers etsi014, idq, toshiba, qlabs)',
        "warning: links[1] (sim-2): not started: set peer_key_file and peer_public_key (qkdctl peer-key generate)",
    ]


def test_the_kme_config_loads_without_the_daemon_config_and_both_parse_addresses_alike():
    """No import cycle: qkdd.kme.config (which qkdd.config imports) takes address parsing from
    qkdd.config_schema, in a fresh interpreter that never loads qkdd.config."""
    import subprocess
    import sys

    from qkdd import config, config_schema

    code = ("import sys; from qkdd.kme.config import ChannelConfig; "
            "from qkdd.config_schema import parse_host_port; "
            "ChannelConfig('id.key', 'peer.pub', dial='kme-b.example:9000').validate('etsi014.peers[0].channel'); "
            "assert 'qkdd.config' not in sys.modules, 'qkdd.config was imported'; "
            "print(parse_host_port('[::1]:8071'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('::1', 8071)"
    assert config.parse_host_port is config_schema.parse_host_port            # old callers keep working
    assert config_schema.parse_host_port("kme-b.example:0", allow_port_zero=True) == ("kme-b.example", 0)
    for bad, problem in [("kme-b.example:0", "port must be in [1, 65535]"),
                         ("kme_b:8071", "not an IP address or host name"), ("no-port", "expected host:port")]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            config_schema.parse_host_port(bad)


def test_relay_node_config_errors_name_the_key(tmp_path):
    """[node] with [[links]] of two identities, a bad node id, and announcements that would age out
    between refreshes: each is one error naming its key."""
    link = ('[[links]]\nlink_id = "{id}"\nrole = "alice"\ndriver = "sim"\npeer_listen = "127.0.0.1:{port}"\n'
            'peer_key_file = "{key}"\npeer_public_key = "/etc/qkdd/peer/b.pub"\n')
    two = link.format(id="l1", port=1, key="/k1") + link.format(id="l2", port=2, key="/k2")
    cases = [
        ('[node]\nid = "A"\n' + two, "links[1].peer_key_file"),
        ('[node]\nid = "not a node"\n' + link.format(id="l1", port=1, key="/k1"), "node.id"),
        ('[node]\nid = "A"\n', "node"),
        ('[node]\nid = "A"\n[relay]\nannounce_interval_s = 40\nmax_age_s = 60\n' + link.format(id="l1", port=1,
                                                                                                 key="/k1"),
         "relay.max_age_s"),
        ('[node]\nid = "A"\ntrust_level = 300\n' + link.format(id="l1", port=1, key="/k1"), "node.trust_level"),
        ('[node]\nid = "A"\n[relay]\nmax_announcements_per_s = 0.1\n' + link.format(id="l1", port=1, key="/k1"),
         "relay.max_announcements_per_s"),
    ]
    for text, key in cases:
        path = tmp_path / "qkdd.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(str(path), {})
        assert info.value.key == key, (text, info.value)
    path.write_text('[node]\nid = "A"\n' + link.format(id="l1", port=1, key="/k1")
                    + link.format(id="l2", port=2, key="/k2") + "relay = false\n")
    config = load_config(str(path), {})
    assert [link.link_id for link in config.relay_links()] == ["l1"] and config.node.trust_level == 100


def test_etsi014_peer_on_a_relay_node_config(tmp_path):
    """[[etsi014.peers]] names a link or a relay node, exactly one; a node needs this daemon's [node]."""
    base = ('[api.tls]\ncert_file = "/x.pem"\nkey_file = "/x.key"\nclient_ca_file = "/ca.pem"\n'
            'client_cert = "optional"\n[etsi014]\nkme_id = "kme-a"\n')
    link = ('[[links]]\nlink_id = "l1"\nrole = "alice"\ndriver = "sim"\npeer_listen = "127.0.0.1:1"\n'
            'peer_key_file = "/k1"\npeer_public_key = "/p"\n')
    cases = [
        (base + '[[etsi014.peers]]\nkme_id = "kme-e"\n', "etsi014.peers[0].link_id"),
        (base + '[[etsi014.peers]]\nkme_id = "kme-e"\nlink_id = "l1"\nnode = "E"\n', "etsi014.peers[0].link_id"),
        (base + '[[etsi014.peers]]\nkme_id = "kme-e"\nnode = "E"\n' + link, "etsi014.peers[0].node"),
    ]
    for text, key in cases:
        path = tmp_path / "qkdd.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(str(path), {})
        assert info.value.key == key, (text, info.value)
    path.write_text('[node]\nid = "A"\n' + base + '[[etsi014.peers]]\nkme_id = "kme-e"\nnode = "E"\n' + link)
    assert load_config(str(path), {}).etsi014.peers[0].node == "E"
