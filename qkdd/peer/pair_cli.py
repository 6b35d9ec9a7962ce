"""`qkdctl pair`: both ends of a link in one step: an ML-DSA-65 identity per end (each end pins the other's
public key) and a qkdd.toml per end that `qkdd check-config` accepts and the daemon runs (driver sim,
protocol bb84). Alice listens for the classical channel and the simulated quantum channel; Bob dials both.

Layout written under OUT: alice/ and bob/, each with qkdd.toml, peer/identity.key (0600), peer/identity.pub and
peer/other-end.pub. The configurations name the files where they will be on each host: INSTALL_DIR (default
/etc/qkdd; "{role}" in it becomes alice or bob, so that OUT itself can serve when both ends run here)."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from qkdd.config import ConfigError, load_config
from qkdd.peer.identity import IdentityError
from qkdd.peer.keycli import generate_key_files

ROLES = ("alice", "bob")


def register(subparsers: argparse._SubParsersAction) -> None:
    pair = subparsers.add_parser(
        "pair", help="write both ends' peer identities and configurations for one link",
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1])
    pair.add_argument("--out", required=True, type=Path, help="directory to write alice/ and bob/ into")
    pair.add_argument("--link-id", default="sim-1", help="the link's id at both ends (default sim-1)")
    pair.add_argument("--alice-host", required=True, help="the address Bob's host reaches Alice's host at")
    pair.add_argument("--peer-port", type=int, default=7071, help="classical channel port on Alice (default 7071)")
    pair.add_argument("--device-port", type=int, default=7081, help="simulated quantum channel port on Alice "
                      "(default 7081; it carries Bob's raw detections: loopback or a lab network only)")
    pair.add_argument("--distance-km", type=float, default=25.0, help="simulated fibre length (default 25)")
    pair.add_argument("--install-dir", default="/etc/qkdd", help="where each host keeps these files; {role} "
                      "becomes alice or bob (default /etc/qkdd)")
    pair.add_argument("--state-dir", default="/var/lib/qkdd", help="each daemon's state directory; {role} "
                      "becomes alice or bob (default /var/lib/qkdd)")
    pair.add_argument("--force", action="store_true", help="replace files in OUT that exist already")
    pair.set_defaults(func=_pair)


def config_text(role: str, args: argparse.Namespace) -> str:
    install = Path(args.install_dir.replace("{role}", role))
    state = args.state_dir.replace("{role}", role)
    if role == "alice":
        channel = f'peer_listen = "0.0.0.0:{args.peer_port}"'
        device = f'device_addr = "0.0.0.0:{args.device_port}"        # Alice\'s simulated source listens here'
    else:
        channel = f'peer_addr = "{args.alice_host}:{args.peer_port}"'
        device = f'device_addr = "{args.alice_host}:{args.device_port}"   # Bob\'s detector connects to Alice'
    return f"""# qkdd.toml for the {role} end of link {args.link_id}, written by `qkdctl pair` (see qkdd.toml(5)).
[daemon]
state_dir = "{state}"

[api]
listen = "127.0.0.1:8071"

[health]
listen = "127.0.0.1:8072"

[[links]]
link_id = "{args.link_id}"
role = "{role}"
driver = "sim"
protocol = "bb84"
{channel}
{device}
peer_key_file = "{install / 'peer' / 'identity.key'}"
peer_public_key = "{install / 'peer' / 'other-end.pub'}"

[links.sim]
distance_km = {args.distance_km}
"""


def _pair(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        for role in ROLES:
            if (out / role).exists() and not args.force:
                raise IdentityError(f"{out / role} exists; use --force to replace it")
        for role in ROLES:
            shutil.rmtree(out / role, ignore_errors=True)
            generate_key_files(out / role / "peer", "identity", overwrite=True)
        for role, other in (("alice", "bob"), ("bob", "alice")):
            shutil.copyfile(out / other / "peer" / "identity.pub", out / role / "peer" / "other-end.pub")
            (out / role / "qkdd.toml").write_text(config_text(role, args))
    except (IdentityError, OSError) as exc:
        print(f"qkdctl pair: {exc}", file=sys.stderr)
        return 1
    problems = _check(out, args)
    for problem in problems:
        print(f"qkdctl pair: {problem}", file=sys.stderr)
    if problems:
        return 2
    for role in ROLES:
        install = args.install_dir.replace("{role}", role)
        print(f"{role}: {out / role}/  ->  copy to {install}/ on {role}'s host (peer/identity.key stays 0600)")
    print(f"then on each host: qkdd check-config --config {args.install_dir.replace('{role}', 'ROLE')}/qkdd.toml"
          " && systemctl restart qkdd")
    return 0


def _check(out: Path, args: argparse.Namespace) -> list[str]:
    """Each written configuration loads, and the daemon would run its link (when the files are in place)."""
    from qkdd.link.service import not_started_because
    problems = []
    for role in ROLES:
        try:
            config = load_config(str(out / role / "qkdd.toml"), environ={})
        except ConfigError as exc:
            problems.append(f"{role}: config error: {exc.key}: {exc.problem}")
            continue
        reason = not_started_because(config.links[0])
        if reason is not None:
            problems.append(f"{role}: {reason}")
    return problems
