"""Redial backoff (bounds, growth, reset) and the validation of peer settings."""
from __future__ import annotations

import random

import pytest

from qkdd.peer.backoff import Backoff
from qkdd.peer.settings import PeerSettings


def test_backoff_doubles_with_jitter_up_to_the_ceiling_and_resets():
    backoff = Backoff(0.5, 30.0, random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(12)]
    for n, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays[-4:]) <= 30.0 and min(delays[-4:]) >= 15.0
    assert len({round(d, 6) for d in delays[-4:]}) == 4  # jittered, not lockstep
    backoff.reset()
    assert 0.25 <= backoff.next_delay_s() <= 0.5
    many = Backoff(1.0, 2.0)
    for _ in range(10_000):  # no overflow however long the peer stays away
        many.next_delay_s()
    assert many.next_delay_s() <= 2.0


def test_after_any_outage_the_default_dialler_tries_again_within_a_few_seconds():
    """However long the peer stays away (a partition of an hour: ~260 failed dials), the next attempt
    starts at most 4 s after the last one failed, so a path that comes back is found within seconds."""
    settings = PeerSettings("link", dial=("peer", 7443))
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s, random.Random(3))
    delays = [backoff.next_delay_s() for _ in range(260)]
    assert max(delays) <= 4.0
    assert min(delays[10:]) >= 2.0                   # still backing off: half the ceiling at least


@pytest.mark.parametrize("kwargs, error", [
    (dict(), "exactly one of peer dial and listen"),
    (dict(dial=("a", 1), listen=("b", 2)), "exactly one of peer dial and listen"),
    (dict(dial=("a", 0)), r"port 1\.\.65535"),
    (dict(listen=("a", 70000)), r"port 0\.\.65535"),
    (dict(dial=("a", "7100")), "peer address must be"),
    (dict(dial=("a", 1), handshake_timeout_s=0), "handshake_timeout_s must be positive"),
    (dict(dial=("a", 1), heartbeat_interval_s=5, idle_timeout_s=5), "idle_timeout_s must exceed"),
    (dict(dial=("a", 1), backoff_initial_s=5, backoff_max_s=1), "backoff_max_s must be >="),
    (dict(dial=("a", 1), max_record_bytes=100), "max_record_bytes must be >="),
    (dict(dial=("a", 1), tls_cert_file="c.pem"), "both or neither"),
    (dict(dial=("a", 1), receive_queue_records=0), "must be >= 1"),
    (dict(dial=("a", 1), receive_queue_bytes=0), "must be >= 1"),
])
def test_bad_settings_are_refused_with_the_field_named(kwargs, error):
    with pytest.raises(ValueError, match=error):
        PeerSettings("link-ab", **kwargs)
    with pytest.raises(ValueError, match="link id"):
        PeerSettings("", dial=("a", 1))


def test_settings_address_and_defaults():
    settings = PeerSettings("link-ab", listen=("0.0.0.0", 7100))
    assert settings.address == ("0.0.0.0", 7100)
    assert settings.max_record_bytes == 64 * 1024 * 1024
    assert settings.idle_timeout_s > settings.heartbeat_interval_s
