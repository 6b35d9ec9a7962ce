"""`qkdd check-config` accepts every driver (etsi014 and its presets, serial, sdk) with its section, and
the daemon would run each (no "has no link engine" warning)."""
from __future__ import annotations

from tests.daemon_support import run_qkdd

PEER = 'peer_addr = "192.0.2.9:7071"\npeer_key_file = "/k"\npeer_public_key = "/p"\n'


def test_driver_check_config_accepts_every_driver_and_runs_them(tmp_path):
    links = []
    for index, driver in enumerate(("etsi014", "idq", "toshiba", "qlabs")):
        links.append(f'[[links]]\nlink_id = "kme-{index}"\nrole = "alice"\ndriver = "{driver}"\n'
                     f'device_addr = "kme-{index}.example"\n{PEER}[links.etsi014]\nsae_id = "sae-a"\n'
                     'peer_sae_id = "sae-b"\ncert_file = "/etc/qkdd/sae.pem"\nkey_file = "/etc/qkdd/sae.key"\n'
                     'ca_file = "/etc/qkdd/ca.pem"\n')
    links.append(f'[[links]]\nlink_id = "tty-1"\nrole = "bob"\ndriver = "serial"\ndevice_addr = "/dev/ttyUSB0"\n'
                 f'{PEER}[links.serial]\nbaud = 115200\n')
    links.append(f'[[links]]\nlink_id = "sdk-1"\nrole = "alice"\ndriver = "sdk"\n{PEER}'
                 '[links.sdk]\nsdk_library = "/usr/lib/vendor/libqkd.so"\ndevice_config = "port=1"\n')
    path = tmp_path / "qkdd.toml"
    path.write_text("\n".join(links))
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for name in ("kme-3", "tty-1", "sdk-1", 'driver = "qlabs"', "sae_id = \"sae-a\"", "baud = 115200"):
        assert name in result.stdout

    path.write_text(links[-2].replace("baud = 115200", "baud = 12345"))
    result = run_qkdd("check-config", "--config", str(path))
    assert result.returncode == 2 and "links[0].serial.baud: must be one of 9600" in result.stderr
