"""Chaos on a live link: two qkdd daemons in network namespaces, consumers at both ends (/v1 and ETSI 014
in each direction), and one fault after another on the classical channel and the hosts. Needs root.

    python -m bench.chaos [--scenario NAME ...] [--kill-loops 100]
    -> one JSON line per scenario: keys handed out at each end, keys served twice, keys lost, seconds until
       the service resumed after the fault ended (`resume_s`) and the same less the time the host kept the
       daemons waiting for a CPU (`resume_net_s`, what the 5 s limit applies to), the load average, pass/fail

Scenarios (tests/chaos_scenarios.py): loss (5 % each way), delay (200 ms each way), reorder (5 % of TCP
segments overtaken, 10 % of chunks held 50 ms), bandwidth (2 Mbit/s), partition (60 s), asymmetric (60 s,
Alice to Bob cut), disk_full (Bob's key-store filesystem), clock_forward (Alice +1 h), clock_back (Bob
-1 h), kill9 (kill -9 of alternate ends, --kill-loops times). The lab (tests/chaos_lab.py) is set up once;
the scenarios run one after the other on it, and the counts of keys served twice and lost are over the
whole run up to each scenario's end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SCENARIO_NAMES = ("loss", "delay", "reorder", "bandwidth", "partition", "asymmetric", "disk_full",
                  "clock_forward", "clock_back", "kill9")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIO_NAMES,
                        help="run this scenario (repeatable; default: all, in the order listed)")
    parser.add_argument("--kill-loops", type=int, default=100)
    parser.add_argument("--fault-s", type=float, default=60.0, help="how long each network fault lasts")
    parser.add_argument("--clock-hz", type=float, default=2e7,
                        help="the simulated source's clock (frames keep coming; the stores are seeded with keys)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, stores)")
    args = parser.parse_args(argv)
    if args.kill_loops < 1 or args.fault_s <= 0:
        parser.error("--kill-loops must be at least 1 and --fault-s positive")
    sys.path.insert(0, os.getcwd())
    from tests.chaos_lab import Lab
    from tests.chaos_net import missing_requirements
    from tests.chaos_scenarios import SCENARIOS, Durations

    missing = missing_requirements()
    if missing:
        print(json.dumps({"error": missing}), flush=True)
        return 2
    durations = dataclasses.replace(Durations(), loss_s=args.fault_s, delay_s=args.fault_s,
                                    reorder_s=args.fault_s, bandwidth_s=args.fault_s,
                                    partition_s=args.fault_s, asymmetric_s=args.fault_s,
                                    kill_loops=args.kill_loops)
    workdir = Path(tempfile.mkdtemp(prefix="qkdd-chaos-"))
    failed = 0
    try:
        with Lab(workdir, clock_hz=args.clock_hz) as lab:
            lab.wait_for_session()
            lab.driver.start()
            for name in args.scenario or SCENARIO_NAMES:
                started = time.monotonic()
                try:
                    result = SCENARIOS[name](lab, durations)
                except Exception as exc:          # noqa: BLE001 - reported as this scenario's result
                    result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}", "pass": False}
                result["wall_s"] = round(time.monotonic() - started, 1)
                result["load_average"] = [round(load, 2) for load in os.getloadavg()]
                failed += not result["pass"]
                print(json.dumps(result), flush=True)
    finally:
        if args.keep:
            print(json.dumps({"workdir": str(workdir)}), flush=True)
        else:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
