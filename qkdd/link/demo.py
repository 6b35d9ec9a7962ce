"""`make demo`: an Alice and a Bob daemon on loopback with a 25 km simulated link. Prints a live status
line (QBER, secure key rate, keys stored) at both ends, then hands out keys the two ways applications
take them, each time showing the same bytes at both ends and that a key is delivered only once:
- `/v1`: a key requested at Alice, fetched by id at Bob;
- ETSI GS QKD 014 over mutual TLS: SAE `sae-a` gets a key from Alice's KME (`enc_keys`), SAE `sae-b` the
  same key by its key_ID from Bob's KME (`dec_keys`).
Exit status 0 when both ends agreed both times."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from qkdd.link.pair import LINK_ID, SAE_OF_ROLE, LinkPair

KEY_WAIT_S = 90.0           # for the first keys, once the status line has run (a loaded machine is slow)


def status_line(pair: LinkPair) -> str:
    parts = []
    for role in ("alice", "bob"):
        m = pair.metrics(role)
        qber = f"{m['qber'] * 100:5.2f} %" if m.get("qber") is not None else "   -   "
        stored = m["keys_stored"].get("available", 0)
        parts.append(f"{role:5s} {m['state']:9s} QBER {qber}  secure {m['key_rate'] / 1e3:8.1f} kbit/s  "
                     f"keys stored {stored:6d}")
    return " | ".join(parts)


def show_status(pair: LinkPair, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            line = status_line(pair)
        except httpx.HTTPError:
            line = "waiting for the daemons ..."
        if sys.stdout.isatty():
            print("\r" + line, end="", flush=True)
            time.sleep(0.5)
        else:
            print(line, flush=True)
            time.sleep(1.0)
    print()


def until_not_503(send) -> httpx.Response:
    """`send()` again while the daemon has no key yet (503), for up to KEY_WAIT_S."""
    deadline = time.monotonic() + KEY_WAIT_S
    waiting = False
    while True:
        response = send()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        if not waiting:
            print("  (no key stored yet: waiting for the first frames to be distilled ...)", flush=True)
            waiting = True
        time.sleep(1.0)


def show(command: str, response: httpx.Response) -> None:
    print(f"\n$ {command}\n{response.status_code} {json.dumps(response.json(), indent=2)}")


def v1_exchange(pair: LinkPair) -> bool:
    """A key requested over /v1 at Alice and fetched by its id at Bob, then once more (refused)."""
    alice, bob = pair.ends["alice"], pair.ends["bob"]
    body = {"bits": 256, "link_id": LINK_ID}
    tls = f"--cacert {pair.pki.ca_cert_file}"
    with pair.mtls_client(None) as client:
        got = until_not_503(lambda: client.post(alice.url("/v1/keys/request"), json=body))
        show(f"curl {tls} -H 'content-type: application/json' -X POST {alice.url('/v1/keys/request')} "
             f"-d '{json.dumps(body)}'", got)
        if got.status_code != 200:
            return False
        key_id = got.json()["key_id"]
        fetched = client.get(bob.url(f"/v1/keys/{key_id}"))
        show(f"curl {tls} {bob.url(f'/v1/keys/{key_id}')}", fetched)
        same = fetched.status_code == 200 and fetched.json()["key"] == got.json()["key"]
        print(f"\nsame key at both ends: {'yes' if same else 'NO'}")
        again = client.get(bob.url(f"/v1/keys/{key_id}"))
        print(f"fetching it a second time: {again.status_code} {again.json()['message']}")
    return same


def etsi014_exchange(pair: LinkPair) -> bool:
    """ETSI 014 Get key at Alice's KME for sae-a, Get key with key IDs at Bob's KME for sae-b, then the
    same key_ID once more (refused)."""
    master, slave = SAE_OF_ROLE["alice"], SAE_OF_ROLE["bob"]
    alice, bob = pair.ends["alice"], pair.ends["bob"]
    with pair.mtls_client(master) as master_client, pair.mtls_client(slave) as slave_client:
        enc_url = alice.url(f"/api/v1/keys/{slave}/enc_keys")
        got = until_not_503(lambda: master_client.get(enc_url))
        show(f"curl {_curl_tls(pair, master)} {enc_url}", got)
        if got.status_code != 200:
            return False
        key = got.json()["keys"][0]
        dec_url = bob.url(f"/api/v1/keys/{master}/dec_keys")
        fetched = slave_client.get(dec_url, params={"key_ID": key["key_ID"]})
        show(f"curl {_curl_tls(pair, slave)} '{dec_url}?key_ID={key['key_ID']}'", fetched)
        same = fetched.status_code == 200 and fetched.json()["keys"] == [key]
        print(f"\nsame key for {master} and {slave}: {'yes' if same else 'NO'}")
        again = slave_client.get(dec_url, params={"key_ID": key["key_ID"]})
        print(f"fetching it a second time: {again.status_code} {again.json()['message']}")
    return same


def _curl_tls(pair: LinkPair, sae: str) -> str:
    issued = pair.pki.saes[sae]
    return f"--cacert {pair.pki.ca_cert_file} --cert {issued.cert_file} --key {issued.key_file}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdd.link.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--distance-km", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to show the status line")
    parser.add_argument("--keep", action="store_true", help="leave both daemons running and their configs, "
                        "identities and PKI in place, so that the printed commands can be repeated")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="qkdd-link-demo-"))
    pair = LinkPair(workdir, distance_km=args.distance_km, etsi014=True)
    print(f"starting Alice and Bob (qkdd run x 2) with a {args.distance_km:g} km simulated link in {workdir}")
    print("  writing ML-DSA-65 peer identities, a development PKI and both configurations ...", flush=True)
    kept = False
    try:
        pair.write()
        for role in ("alice", "bob"):
            pair.start(role)
        print("  waiting for both daemons to listen ...", flush=True)
        for role in ("alice", "bob"):
            pair.wait_ready(role)
        print(f"alice: api {pair.ends['alice'].url('')}   bob: api {pair.ends['bob'].url('')}"
              f"   (TLS; development PKI in {pair.pki.directory})\n")
        print("the link comes up (starting), then generates keys (running) once the first frames are distilled")
        show_status(pair, args.seconds)
        print("\n-- the project's own API: /v1 --")
        v1_same = v1_exchange(pair)
        print("\n-- ETSI GS QKD 014: Get key at Alice's KME, Get key with key IDs at Bob's KME --")
        etsi_same = etsi014_exchange(pair)
        if args.keep:
            kept = True
            print_kept(pair)
        return 0 if v1_same and etsi_same else 1
    finally:
        if not kept:
            pair.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def print_kept(pair: LinkPair) -> None:
    """How to look at the two daemons that --keep leaves running, and how to stop them."""
    alice, bob = pair.ends["alice"], pair.ends["bob"]
    ca = pair.pki.ca_cert_file
    pids = " ".join(str(end.process.pid) for end in (alice, bob) if end.process is not None)
    print(f"""
-- kept (--keep): both daemons run on; configurations, identities and PKI in {pair.workdir} --
  configs:  {alice.config_path}  {bob.config_path}      logs: {alice.log_path}  {bob.log_path}
  the curl commands above work again (a new key each time: each key is handed out once)
  qkdctl status --api {alice.url('')} --health http://{alice.health} --ca {ca}
  qkdctl watch  --api {bob.url('')} --health http://{bob.health} --ca {ca}
  stop them:  kill {pids} && rm -rf {pair.workdir}""")


if __name__ == "__main__":
    sys.exit(main())
