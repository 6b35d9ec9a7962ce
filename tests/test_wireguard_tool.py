"""The `wg` runner against the real wg tool: failures are WgErrors that name the problem, never the key."""
from __future__ import annotations

import base64
import os
import shutil

import pytest
import trio

from qkdd.consumers.wg_tool import WgError, WgTool, check_interface, check_public_key

PEER = "HTJCFVji7BIGv9iSV/M7VuLj7iiBuVTXa/LbKmfCKFA="


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools, scripts/system-packages.txt)")
def test_a_failed_wg_set_names_the_interface_and_never_the_key():
    psk = os.urandom(32)
    tool = WgTool("qkdnosuchif0", PEER)
    with pytest.raises(WgError) as info:
        trio.run(tool.set_psk, psk)
    text = str(info.value)
    assert "wg set qkdnosuchif0 exited with" in text
    assert base64.b64encode(psk).decode() not in text and psk.hex() not in text
    with pytest.raises(WgError, match="wg show qkdnosuchif0"):
        trio.run(tool.latest_handshake_s)


def test_a_missing_wg_and_a_wrong_key_length_are_clear_errors():
    with pytest.raises(WgError, match="cannot run /nonexistent/wg"):
        trio.run(WgTool("wg0", PEER, wg_command="/nonexistent/wg").clear_psk)
    with pytest.raises(ValueError, match="32 bytes"):
        trio.run(WgTool("wg0", PEER).set_psk, b"short")


@pytest.mark.parametrize("text, ok", [(PEER, True), (PEER[:-2] + "B=", False), ("abc", False), (PEER + "=", False)])
def test_public_key_check(text, ok):
    assert (check_public_key(text) is None) is ok


@pytest.mark.parametrize("text, ok", [("wg0", True), ("qkw12345a", True), ("-wg0", False), ("a" * 16, False),
                                      ("wg 0", False), ("", False), ("wg/0", False)])
def test_interface_check(text, ok):
    assert (check_interface(text) is None) is ok
