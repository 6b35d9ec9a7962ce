"""SKIP (draft-cisco-skip-02) between two ends of a link (tests/etsi004_support.py): real key stores, the real
reservation exchange, the real h11 listener over real TLS-PSK (sslpsk3), reached by a TLS-PSK client of the
same library and by `openssl s_client -psk`."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import trio

from qkdd.keystore import KeyState
from tests.etsi004_support import ROUTERS, skip_get, start_skip, two_ends


def run(test):
    trio.run(test)


def test_skip_a_key_at_one_end_is_the_same_key_by_id_at_the_other_once(tmp_path):
    async def main():
        async with two_ends(tmp_path, etsi004=False, extra=start_skip) as ends:
            a, b = ends["a"].skip_address, ends["b"].skip_address
            status, caps = await skip_get(a, *ROUTERS["a"], "/capabilities")
            assert status == 200
            assert caps == {"entropy": True, "key": True, "algorithm": "QKD", "localSystemID": "KP_Alice",
                            "remoteSystemID": ["KP_Bob"]}
            seen = set()
            for size, cipher in ((256, "PSK-AES256-GCM-SHA384"), (128, "DHE-PSK-AES256-GCM-SHA384")):
                status, key = await skip_get(a, *ROUTERS["a"], f"/key?remoteSystemID=KP_Bob&size={size}", cipher)
                assert status == 200, key
                assert len(key["keyId"]) == 32 and len(key["key"]) == size // 4
                status, same = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID=KP_Alice")
                assert status == 200 and same == key
                # exactly once: the other end erased its copy when it handed it over
                status, again = await skip_get(b, *ROUTERS["b"], f"/key/{key['keyId']}?remoteSystemID=KP_Alice")
                assert status == 404
                seen.add(key["key"])
            # end B's router asks for keys too (B allocates its own share); both ends never hand out one twice
            status, from_b = await skip_get(b, *ROUTERS["b"], "/key?remoteSystemID=KP_Alice")
            assert status == 200 and from_b["key"] not in seen
            status, at_a = await skip_get(a, *ROUTERS["a"], f"/key/{from_b['keyId']}?remoteSystemID=KP_Bob")
            assert at_a == from_b
            status, entropy = await skip_get(a, *ROUTERS["a"], "/entropy?minentropy=512")
            assert status == 200 and entropy["minentropy"] == 512 and len(entropy["randomStr"]) == 128
    run(main)


@pytest.mark.parametrize("target, status", [
    ("/key?remoteSystemID=KP_Carol", 404),
    ("/key", 400),
    ("/key?remoteSystemID=KP_Bob&size=100", 400),
    ("/key?remoteSystemID=KP_Bob&size=512", 400),             # above the link's stored key size
    ("/key?remoteSystemID=KP_Bob&size=abc", 400),
    ("/key?remoteSystemID=KP_Bob&colour=red", 400),
    ("/key/zz?remoteSystemID=KP_Bob", 400),
    ("/key/0123456789abcdef0123456789abcdef?remoteSystemID=KP_Bob", 404),
    ("/entropy?minentropy=12", 400),
])
def test_skip_bad_requests_get_the_drafts_status(tmp_path, target, status):
    async def main():
        async with two_ends(tmp_path, keys=20, etsi004=False, extra=start_skip) as ends:
            got, body = await skip_get(ends["a"].skip_address, *ROUTERS["a"], target)
            assert got == status and body["message"]
    run(main)


def test_skip_exhausted_keys_are_503_and_a_key_of_one_end_is_never_its_own_by_id(tmp_path):
    async def main():
        async with two_ends(tmp_path, keys=2, etsi004=False, extra=start_skip) as ends:
            a = ends["a"].skip_address
            status, key = await skip_get(a, *ROUTERS["a"], "/key?remoteSystemID=KP_Bob")
            assert status == 200
            # the router at A cannot fetch its own outgoing key by id again at A (it is handed over)
            status, _ = await skip_get(a, *ROUTERS["a"], f"/key/{key['keyId']}?remoteSystemID=KP_Bob")
            assert status == 404
            status, body = await skip_get(a, *ROUTERS["a"], "/key?remoteSystemID=KP_Bob")
            assert status == 503, body
    run(main)


def test_skip_wrong_psk_or_identity_is_refused_at_the_handshake(tmp_path):
    async def main():
        async with two_ends(tmp_path, keys=4, etsi004=False, extra=start_skip) as ends:
            a = ends["a"].skip_address
            identity, psk = ROUTERS["a"]
            for who, secret in ((identity, bytes(32)), ("router-x", psk), (ROUTERS["b"][0], ROUTERS["b"][1])):
                with pytest.raises(trio.BrokenResourceError):
                    await skip_get(a, who, secret, "/key?remoteSystemID=KP_Bob")
            counts = ends["a"].store.counts("a-b")          # no key was reserved or handed out
            assert counts[KeyState.AVAILABLE] == 4 and not counts.get(KeyState.DELIVERED)
            status, _ = await skip_get(a, identity, psk, "/key?remoteSystemID=KP_Bob")
            assert status == 200
    run(main)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command (Debian package openssl)")
def test_skip_serves_openssl_s_client_with_a_psk_as_a_router_would(tmp_path):
    """TLS 1.2 with both suites, and TLS 1.3 (an external PSK on a SHA-256 suite); a wrong PSK is refused
    in both. (The TLS 1.3 client is OpenSSL's own: sslpsk3's client side on Python 3.11 fails TLS 1.3.)"""
    async def main():
        async with two_ends(tmp_path, keys=8, etsi004=False, extra=start_skip) as ends:
            host, port = ends["a"].skip_address
            identity, psk = ROUTERS["a"]

            def s_client(cipher: str, key: bytes) -> str:
                request = b"GET /key?remoteSystemID=KP_Bob HTTP/1.1\r\nHost: kp\r\nConnection: close\r\n\r\n"
                version = ["-tls1_3"] if cipher == "TLSv1.3" else ["-tls1_2", "-cipher", cipher]
                done = subprocess.run(
                    ["openssl", "s_client", "-connect", f"{host}:{port}", *version,
                     "-psk_identity", identity, "-psk", key.hex(), "-quiet", "-ign_eof"],
                    input=request, capture_output=True, timeout=30)
                return done.stdout.decode(errors="replace")
            for cipher in ("PSK-AES256-GCM-SHA384", "DHE-PSK-AES256-GCM-SHA384", "TLSv1.3"):
                answer = await trio.to_thread.run_sync(s_client, cipher, psk)
                assert answer.startswith("HTTP/1.1 200"), (cipher, answer[:200])
                assert '"keyId":"' in answer
            for cipher in ("PSK-AES256-GCM-SHA384", "TLSv1.3"):
                refused = await trio.to_thread.run_sync(s_client, cipher, bytes(32))
                assert "HTTP/1.1" not in refused
    run(main)
