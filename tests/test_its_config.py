"""The `auth` keys of a link: defaults, the secret file that its/both need, and bad values named by key."""
import pytest

from qkdd.config import ConfigError, load_config

LINK = '[[links]]\nlink_id = "l1"\nrole = "alice"\ndriver = "sim"\n'


def load(tmp_path, extra):
    path = tmp_path / "qkdd.toml"
    path.write_text(LINK + extra)
    return load_config(str(path), {})


def test_its_defaults_to_pq(tmp_path):
    link = load(tmp_path, "").links[0]
    assert (link.auth, link.auth_secret_file, link.auth_refill_bits, link.auth_pool_max_bits) == ("pq", "", 1024,
                                                                                                 1 << 20)
    link = load(tmp_path, 'auth = "both"\nauth_secret_file = "/etc/qkdd/auth/l1.secret"\n'
                          'auth_refill_bits = 0\n').links[0]
    assert (link.auth, link.auth_refill_bits) == ("both", 0)


@pytest.mark.parametrize("extra, key, problem", [
    ('auth = "its"\n', "links[0].auth_secret_file", 'required for auth "its"'),
    ('auth = "hmac"\n', "links[0].auth", "hmac"),
    ('auth = "its"\nauth_secret_file = "s"\nauth_refill_bits = 100\n', "links[0].auth_refill_bits", "multiple of 128"),
    ('auth = "its"\nauth_secret_file = "s"\nauth_pool_max_bits = 10\n', "links[0].auth_pool_max_bits", "512"),
])
def test_its_config_errors_name_the_key(tmp_path, extra, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert caught.value.key == key and problem in str(caught.value)


def write_config(tmp_path, extra):
    path = tmp_path / "qkdd.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n' + LINK + extra)
    return str(path)


def test_check_config_reads_the_its_secret_and_the_audit_key(tmp_path, capsys):
    from qkdd import cli
    from qkdd.auth import secret as auth_secret
    from qkdd.peer import generate_identity, save_private_key
    missing = write_config(tmp_path, f'auth = "its"\nauth_secret_file = "{tmp_path}/none.secret"\n')
    assert cli.main(["check-config", "--config", missing]) != 0
    assert "links[0].auth_secret_file" in capsys.readouterr().err
    auth_secret.write(auth_secret.generate("other", 1024), str(tmp_path / "other.secret"))
    wrong = write_config(tmp_path, f'auth = "its"\nauth_secret_file = "{tmp_path}/other.secret"\n')
    assert cli.main(["check-config", "--config", wrong]) != 0
    assert "secret of link 'other'" in capsys.readouterr().err
    auth_secret.write(auth_secret.generate("l1", 1024), str(tmp_path / "l1.secret"))
    no_key = write_config(tmp_path, f'auth = "its"\nauth_secret_file = "{tmp_path}/l1.secret"\n'
                          '[audit]\nenabled = true\n')
    assert cli.main(["check-config", "--config", no_key]) != 0
    assert "audit.key_file" in capsys.readouterr().err
    save_private_key(generate_identity(), tmp_path / "node.key")
    good = write_config(tmp_path, f'auth = "its"\nauth_secret_file = "{tmp_path}/l1.secret"\n[audit]\nenabled = true\n'
                        f'key_file = "{tmp_path}/node.key"\n')
    assert cli.main(["check-config", "--config", good]) == 0
    assert not (tmp_path / "state" / "audit.log").exists()
