"""`make demo`: an Alice and a Bob daemon on loopback with a 25 km simulated link. Prints a live status
line (QBER, secure key rate, keys stored) at both ends, then requests a key on Alice over /v1 and fetches
it by id on Bob, showing the same bytes, and stops both daemons."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from qkdd.link.pair import LINK_ID, LinkPair


def status_line(pair: LinkPair) -> str:
    parts = []
    for role in ("alice", "bob"):
        m = pair.metrics(role)
        qber = f"{m['qber'] * 100:5.2f} %" if m.get("qber") is not None else "   -   "
        stored = m["keys_stored"].get("available", 0)
        parts.append(f"{role:5s} {m['state']:9s} QBER {qber}  secure {m['key_rate'] / 1e3:8.1f} kbit/s  "
                     f"keys stored {stored:6d}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdd.link.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--distance-km", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to show the status line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qkdd-link-demo-") as workdir:
        pair = LinkPair(Path(workdir), distance_km=args.distance_km)
        print(f"starting Alice and Bob (qkdd run x 2) with a {args.distance_km:g} km simulated link in {workdir}")
        try:
            pair.start_both()
            print(f"alice: api http://{pair.ends['alice'].api}   bob: api http://{pair.ends['bob'].api}\n")
            end = time.monotonic() + args.seconds
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
            alice, bob = pair.ends["alice"], pair.ends["bob"]
            body = {"bits": 256, "link_id": LINK_ID}
            print(f"\n$ curl -X POST http://{alice.api}/v1/keys/request -d '{json.dumps(body)}'")
            for _ in range(30):
                got = httpx.post(alice.url("/v1/keys/request"), json=body, timeout=10)
                if got.status_code != 503:
                    break
                time.sleep(1)
            print(f"{got.status_code} {json.dumps(got.json(), indent=2)}")
            if got.status_code != 200:
                return 1
            key_id = got.json()["key_id"]
            print(f"\n$ curl http://{bob.api}/v1/keys/{key_id}")
            fetched = httpx.get(bob.url(f"/v1/keys/{key_id}"), timeout=10)
            print(f"{fetched.status_code} {json.dumps(fetched.json(), indent=2)}")
            same = fetched.status_code == 200 and fetched.json()["key"] == got.json()["key"]
            print(f"\nsame key at both ends: {'yes' if same else 'NO'}")
            again = httpx.get(bob.url(f"/v1/keys/{key_id}"), timeout=10)
            print(f"fetching it a second time: {again.status_code} {again.json()['message']}")
            return 0 if same else 1
        finally:
            pair.stop()


if __name__ == "__main__":
    sys.exit(main())
