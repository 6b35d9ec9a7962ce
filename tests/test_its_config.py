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
    ('auth = "its"\nauth_secret_file = "s"\nauth_pool_max_bits = 10\n', "links[0].auth_pool_max_bits", "384"),
])
def test_its_config_errors_name_the_key(tmp_path, extra, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert caught.value.key == key and problem in str(caught.value)
