"""The chaos scenarios and their verdicts, for the benchmark (bench/chaos.py, long faults) and the test
suite (tests/test_chaos_netns.py, short ones): each applies one fault to a running Lab, ends it, waits
for the service to come back and reports one result.

A scenario passes when, counting from the lab's start, no key was served twice, no key was lost (stored
at one end, absent at the other after the resynchronisation) and no key has expiry times more than
EXPIRY_SKEW_LIMIT_S apart at the two ends; during the scenario no fetch was refused at the other end (but
for one whose earlier attempt lost its answer with a killed daemon: delivered at most once) and no daemon
died; and every consumer flow had a key handed out for a request made after the fault ended within
RESUME_LIMIT_S of its end, not counting the time the host kept the daemons waiting for a CPU meanwhile.

That time is the host's, not the daemon's: both ends, the consumers and whatever else the machine runs
share its CPUs, and on a loaded 2-core host a restarted daemon's start-up alone can wait seconds for a
CPU. CpuWait measures it as the kernel's run_delay (schedstat) of each daemon's event-loop thread, the one
that answers every request and runs the peer session, the larger of the two ends; worker threads crunching
frames beside it are left out (their waits overlap its own, and the sum would excuse anything). Each
verdict reports the wall time (`resume_s`), the wait and their difference (`resume_net_s`, what the limit
applies to); the benchmark's runs on a quiet machine keep the wall time itself within the limit (README).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from tests.chaos_load import mismatched, served_twice

RESUME_LIMIT_S = 5.0            # seconds from the fault's end, less the daemons' wait for a CPU (CpuWait)
EXPIRY_SKEW_LIMIT_S = 60.0      # one key's expiry at the two ends (their clocks agree within this)
BASELINE_TIMEOUT_S = 90.0
LATE_RESUME_S = 60.0            # after the recovery timeout, how much longer to wait before restarting by hand
KILL_LOOP_WAIT_S = 60.0         # each kill loop waits this long at most for the service before the next kill


@dataclass(frozen=True)
class Durations:
    loss_s: float = 60.0
    delay_s: float = 60.0
    reorder_s: float = 60.0
    bandwidth_s: float = 60.0
    partition_s: float = 60.0
    asymmetric_s: float = 60.0
    disk_full_s: float = 30.0
    clock_s: float = 30.0
    kill_loops: int = 100
    recover_timeout_s: float = 90.0     # how long to wait for the service after a fault before giving up
    clock_frame_wait_s: float = 60.0    # a clock step lasts until a frame stored keys at both ends, or this long more


SHORT = Durations(loss_s=3.0, delay_s=3.0, reorder_s=3.0, bandwidth_s=3.0, partition_s=10.0, asymmetric_s=4.0,
                  disk_full_s=5.0, clock_s=3.0, kill_loops=5, recover_timeout_s=30.0, clock_frame_wait_s=0.0)


@dataclass
class Window:
    """One scenario's times (time.monotonic()) and what happened beside the fault."""
    started_s: float
    fault_ended_s: float = 0.0
    started_utc: str = field(default_factory=lambda: _utc_now())
    notes: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)


def _utc_now() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


class CpuWait:
    """How long the daemons have waited for a CPU since this was made (Lab.cpu_wait_s; the larger of the two
    ends, a daemon started since counted from its start), sampled along a wait for the service."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.since_s = time.monotonic()
        self._start = {end: lab.cpu_wait_s(end) for end in ("a", "b")}
        self._samples = [(self.since_s, 0.0)]

    def sample(self) -> None:
        waits = []
        for end, before in self._start.items():
            now = self.lab.cpu_wait_s(end)
            if now is not None:
                waits.append(now[1] - before[1] if before is not None and before[0] == now[0] else now[1])
        self._samples.append((time.monotonic(), max(waits, default=0.0)))

    def net(self, resumed: dict[str, float | None]) -> dict[str, float | None]:
        """Each flow's resumption (seconds after `since_s`) less the wait sampled last before it: never
        more than the daemons had waited by then."""
        def before(at_s: float) -> float:
            return max((wait for sampled_s, wait in self._samples if sampled_s <= at_s), default=0.0)
        return {flow: None if value is None else max(0.0, value - before(self.since_s + value))
                for flow, value in resumed.items()}


def _wait_resumed(lab, since_s: float, timeout_s: float, cpu: CpuWait | None = None) -> dict[str, float | None]:
    deadline = time.monotonic() + timeout_s
    while True:
        if cpu is not None:
            cpu.sample()
        resumed = lab.driver.resumed_s(since_s)
        if all(value is not None for value in resumed.values()) or time.monotonic() > deadline:
            return resumed
        time.sleep(0.2)


def _revive(lab, window: Window) -> None:
    """A daemon that died is noted and started again, so that the next scenario finds both running."""
    for end in ("a", "b"):
        if not lab.alive(end):
            code = lab.daemons[end].process.returncode
            window.crashed.append(f"{end} exited {code}: {_last_error(lab.daemons[end].run_log())}")
            lab.restart(end)


def _restore(lab, window: Window, resumed: dict[str, float | None], *, ends: tuple[str, ...] = ("a", "b"),
             grace_s: float = LATE_RESUME_S) -> None:
    """The service did not come back within the recovery timeout: wait up to `grace_s` more for it (noted
    as a late resumption), else restart `ends` by hand (noted), so that the next scenario starts from a
    working link."""
    if all(value is not None for value in resumed.values()):
        return
    late = _wait_resumed(lab, window.fault_ended_s, grace_s) if grace_s > 0 else resumed
    if all(value is not None for value in late.values()):
        window.notes.append(f"resumed by itself {max(late.values()):.1f} s after the fault ended")
        return
    names = " and ".join("alice" if end == "a" else "bob" for end in ends)
    window.notes.append(f"no service by itself: {names} restarted by hand")
    for end in ends:
        lab.daemons[end].stop()
        lab.restart(end)
    lab.wait_for_session()


def _warnings(lab, limit: int = 12) -> dict[str, list[str]]:
    """The last warning and error lines of each daemon's current run: what a failed verdict shows."""
    found = {}
    for end, daemon in lab.daemons.items():
        lines = [line[:400] for line in daemon.run_log().splitlines()
                 if "level=warning" in line or "level=error" in line]
        found["alice" if end == "a" else "bob"] = lines[-limit:]
    return found


def _last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if "level=error" in line or "Error" in line or "Traceback" in line]
    return (lines[-1] if lines else (log.splitlines() or [""])[-1])[:300]


def baseline(lab, timeout_s: float = BASELINE_TIMEOUT_S) -> None:
    """Until every flow completes an exchange started now (the service is up before the next fault)."""
    since = time.monotonic()
    resumed = _wait_resumed(lab, since, timeout_s)
    missing = [flow for flow, value in resumed.items() if value is None]
    if missing:
        raise RuntimeError(f"no service before the fault for {', '.join(missing)} within {timeout_s:g} s")


def _slowest(values: dict[str, float | None]) -> float | None:
    return None if None in values.values() or not values else max(values.values())


def verdict(lab, name: str, window: Window, resumed: dict[str, float | None], net: dict[str, float | None],
            **extra) -> dict:
    handouts = lab.book.snapshot()
    audit = lab.audit()
    twice = served_twice(handouts)
    wrong = mismatched(handouts)
    refused = lab.book.fetch_refusals(window.started_s)
    failed_fetches = {outcome: count for outcome, count in refused.items() if "dropped answer" not in outcome}
    resume_s, resume_net_s = _slowest(resumed), _slowest(net)
    handed = lab.book.handed_out(window.started_s)
    ok = (not twice and not audit.lost and not wrong and not failed_fetches and not window.crashed
          and audit.expiry_skew_s <= EXPIRY_SKEW_LIMIT_S
          and resume_net_s is not None and resume_net_s <= RESUME_LIMIT_S)
    return {
        "scenario": name,
        "handed_out": {"alice": handed["a"], "bob": handed["b"]},
        "served_twice": len(twice),
        "lost": len(audit.lost),
        "mismatched": len(wrong),
        "fetch_refused": refused,
        "resume_s": None if resume_s is None else round(resume_s, 2),
        "resume_net_s": None if resume_net_s is None else round(resume_net_s, 2),
        "resume_by_flow_s": {flow: None if value is None else round(value, 2) for flow, value in resumed.items()},
        "cpu_wait_by_flow_s": {flow: None if value is None else round(value - net[flow], 2)
                               for flow, value in resumed.items()},
        "stores": {"keys_alice": audit.keys_a, "keys_bob": audit.keys_b, "stranded": audit.stranded,
                   "expiry_split": audit.expiry_split, "expiry_skew_s": round(audit.expiry_skew_s, 1)},
        "crashed": window.crashed,
        **extra,
        "started_utc": window.started_utc,
        "notes": window.notes,
        "log_warnings": {} if ok else _warnings(lab),
        "pass": ok,
    }


def _network_fault(lab, name: str, hold_s: float, durations: Durations, apply) -> dict:
    baseline(lab)
    window = Window(time.monotonic())
    apply()
    time.sleep(hold_s)
    lab.net.clear()
    lab.set_path()
    cpu = CpuWait(lab)
    window.fault_ended_s = cpu.since_s
    resumed = _wait_resumed(lab, window.fault_ended_s, durations.recover_timeout_s, cpu)
    _revive(lab, window)
    _restore(lab, window, resumed)
    during = lab.driver.outcomes(window.started_s, window.fault_ended_s)
    return verdict(lab, name, window, resumed, cpu.net(resumed), fault_s=hold_s,
                   **_served(during))


def _served(outcomes) -> dict:
    """Exchanges started during the fault, whenever they ended: how many went through, how many did not."""
    ok = outcomes.get("ok", 0)
    return {"served_during_fault": ok, "failed_during_fault": sum(outcomes.values()) - ok}


def loss(lab, d: Durations) -> dict:
    return _network_fault(lab, "loss_5pct", d.loss_s, d, lambda: lab.net.loss(0.05))


def delay(lab, d: Durations) -> dict:
    return _network_fault(lab, "delay_200ms", d.delay_s, d, lambda: lab.set_path(delay_ms=200))


def reorder(lab, d: Durations) -> dict:
    before = lab.net.reordered_segments()

    def apply() -> None:
        lab.net.reorder(0.05)
        lab.set_path(hold_probability=0.1, hold_ms=50)
    result = _network_fault(lab, "reorder", d.reorder_s, d, apply)
    result["tcp_reorder_events"] = lab.net.reordered_segments() - before
    return result


def bandwidth(lab, d: Durations) -> dict:
    return _network_fault(lab, "bandwidth_2mbit", d.bandwidth_s, d, lambda: lab.net.bandwidth("2mbit"))


def partition(lab, d: Durations) -> dict:
    return _network_fault(lab, f"partition_{d.partition_s:g}s", d.partition_s, d, lab.net.partition)


def asymmetric(lab, d: Durations) -> dict:
    """Alice's packets to Bob are dropped; Bob's still reach her."""
    return _network_fault(lab, f"asymmetric_{d.asymmetric_s:g}s", d.asymmetric_s, d,
                          lambda: lab.net.partition(a_hears_b=True))


def disk_full(lab, d: Durations) -> dict:
    """Bob's key-store filesystem (a tmpfs) is filled, then emptied again."""
    baseline(lab)
    window = Window(time.monotonic())
    filled_bytes = lab.tmpfs["b"].fill()
    deadline = time.monotonic() + d.disk_full_s
    died_s = None
    while time.monotonic() < deadline:
        if died_s is None and not lab.alive("b"):
            died_s = time.monotonic() - window.started_s
        time.sleep(0.1)
    health = lab.healthz("b")
    lab.tmpfs["b"].free()
    cpu = CpuWait(lab)
    window.fault_ended_s = cpu.since_s
    if died_s is not None or not lab.alive("b"):
        window.notes.append(f"bob's daemon ended {died_s:.1f} s after the filesystem filled; restarted by hand"
                            if died_s is not None else "bob's daemon ended; restarted by hand")
    _revive(lab, window)
    resumed = _wait_resumed(lab, window.fault_ended_s, d.recover_timeout_s, cpu)
    _restore(lab, window, resumed, ends=("b",), grace_s=0.0)
    if window.crashed:
        resumed = {flow: None for flow in resumed}        # it did not resume by itself
    return verdict(lab, "disk_full", window, resumed, cpu.net(resumed),
                   fault_s=d.disk_full_s, filler_bytes=filled_bytes, bob_healthz_while_full=health)


def clock_step(lab, d: Durations, end: str, offset: str) -> dict:
    baseline(lab)
    window = Window(time.monotonic())
    generated = {e: lab.link_metrics(e)["keys_generated"] for e in ("a", "b")}
    lab.step_clock(end, offset)
    time.sleep(d.clock_s)
    # keys of a frame stored while the clock was stepped are the ones whose expiry the two ends may see apart
    deadline = time.monotonic() + d.clock_frame_wait_s
    while time.monotonic() < deadline and not all(
            lab.link_metrics(e)["keys_generated"] > generated[e] for e in ("a", "b")):
        time.sleep(0.5)
    keys_stored_during_step = min(lab.link_metrics(e)["keys_generated"] - generated[e] for e in ("a", "b"))
    during = lab.driver.outcomes(window.started_s)
    lab.step_clock(end, "+0")
    cpu = CpuWait(lab)
    window.fault_ended_s = cpu.since_s
    resumed = _wait_resumed(lab, window.fault_ended_s, d.recover_timeout_s, cpu)
    _revive(lab, window)
    _restore(lab, window, resumed)
    who = "alice" if end == "a" else "bob"
    return verdict(lab, f"clock_{who}_{offset}", window, resumed, cpu.net(resumed),
                   fault_s=round(window.fault_ended_s - window.started_s, 1),
                   keys_stored_during_step=keys_stored_during_step, **_served(during))


def kill_loops(lab, d: Durations) -> dict:
    """kill -9 of alternate ends (Alice first), each started again at once; the service must be back within
    the limit after every restart."""
    baseline(lab)
    window = Window(time.monotonic())
    resumes: list[float | None] = []
    nets: list[float | None] = []
    for loop in range(d.kill_loops):
        end = "a" if loop % 2 == 0 else "b"
        lab.kill(end)
        cpu = CpuWait(lab)
        lab.restart(end)
        resumed = _wait_resumed(lab, cpu.since_s, max(d.recover_timeout_s, KILL_LOOP_WAIT_S), cpu)
        resumes.append(_slowest(resumed))
        nets.append(_slowest(cpu.net(resumed)))
    window.fault_ended_s = time.monotonic()
    _revive(lab, window)
    measured = [value for value in resumes if value is not None]
    slowest = "all flows, slowest loop"
    result = verdict(lab, f"kill9_x{d.kill_loops}", window, {slowest: None if None in resumes else max(resumes)},
                     {slowest: None if None in nets else max(nets)},
                     loops=d.kill_loops, resume_median_s=round(statistics.median(measured), 2) if measured else None,
                     resume_by_loop_s=[None if value is None else round(value, 1) for value in resumes],
                     resume_net_by_loop_s=[None if value is None else round(value, 1) for value in nets],
                     loops_over_limit=sum(1 for value in nets if value is None or value > RESUME_LIMIT_S))
    return result


SCENARIOS = {
    "loss": loss,
    "delay": delay,
    "reorder": reorder,
    "bandwidth": bandwidth,
    "partition": partition,
    "asymmetric": asymmetric,
    "disk_full": disk_full,
    "clock_forward": lambda lab, d: clock_step(lab, d, "a", "+1h"),
    "clock_back": lambda lab, d: clock_step(lab, d, "b", "-1h"),
    "kill9": kill_loops,
}
