"""Runs the fuzz targets of tests/fuzz/ under atheris (libFuzzer), one at a time, each in its own process,
and prints one JSON line of figures per target: target, executions, crashes, hangs, seconds.

    python -m tests.fuzz.run --runs 1000000            # the long run (README, "Fuzzing")
    python -m tests.fuzz.run --runs 2000 config http   # some targets, briefly
    python -m tests.fuzz.run --make-corpus             # rewrite the seed corpus from the real encoders

Each target starts from its seed corpus (tests/fuzz/corpus/<target>/, read only) and a scratch corpus in a
temporary directory, where libFuzzer keeps the inputs that found new coverage. A crash, a hang (one input
running past --timeout seconds) or running out of memory stops that target; the input is kept in
--artifacts (crash-*, timeout-*, oom-*) and reproduces with `python -m tests.fuzz.fuzz_<target> FILE`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO_ROOT = FUZZ_DIR.parent.parent
CORPUS_DIR = FUZZ_DIR / "corpus"
TARGETS = tuple(sorted(path.stem.removeprefix("fuzz_") for path in FUZZ_DIR.glob("fuzz_*.py")))
DEFAULT_TIMEOUT_S = 10          # one input running longer is a hang
DEFAULT_RSS_LIMIT_MB = 2048
_DONE_RE = re.compile(r"Done (\d+) runs in (\d+) second")
_EXECUTED_RE = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_WRITTEN_RE = re.compile(r"Test unit written to \S*/([^/\s]+)")
_PROGRESS_RE = re.compile(r"^#(\d+)\s", re.MULTILINE)


@dataclass
class Figures:
    target: str
    executions: int
    crashes: int
    hangs: int
    ooms: int
    seconds: float
    corpus_inputs: int           # inputs in the scratch corpus at the end (seeds plus what found coverage)
    returncode: int
    artifacts: list[str]

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not (self.crashes or self.hangs or self.ooms)


def run_target(target: str, runs: int, *, artifacts: Path, timeout_s: int = DEFAULT_TIMEOUT_S,
               rss_limit_mb: int = DEFAULT_RSS_LIMIT_MB, nice: int = 19, log: Path | None = None) -> Figures:
    """Fuzz one target for `runs` executions in a child process under `nice`; its figures."""
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS_DIR / target
    with tempfile.TemporaryDirectory(prefix=f"qkdd-fuzz-{target}-") as scratch:
        command = ["nice", "-n", str(nice), sys.executable, "-m", f"tests.fuzz.fuzz_{target}", scratch, str(seeds),
                   f"-runs={runs}", f"-timeout={timeout_s}", f"-rss_limit_mb={rss_limit_mb}",
                   f"-artifact_prefix={artifacts}/{target}-", "-print_final_stats=1"]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        before = set(artifacts.iterdir())
        started = time.monotonic()
        with tempfile.TemporaryFile("w+", errors="replace") if log is None else open(log, "w+") as output_file:
            # libFuzzer's output goes to a file as it comes (a long run can be watched with tail -f).
            completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
                                       stdout=output_file, stderr=subprocess.STDOUT)
            seconds = time.monotonic() - started
            output_file.seek(0)
            output = output_file.read()
        corpus_inputs = len(os.listdir(scratch))
    new = sorted(set(_WRITTEN_RE.findall(output)) | {path.name for path in set(artifacts.iterdir()) - before})
    executed = _EXECUTED_RE.findall(output) or _DONE_RE.findall(output) or _PROGRESS_RE.findall(output)
    executions = int(executed[-1][0] if isinstance(executed[-1], tuple) else executed[-1]) if executed else 0
    return Figures(target, executions,
                   crashes=sum(name.startswith(f"{target}-crash-") for name in new),
                   hangs=sum(name.startswith(f"{target}-timeout-") for name in new),
                   ooms=sum(name.startswith(f"{target}-oom-") for name in new),
                   seconds=round(seconds, 1), corpus_inputs=corpus_inputs, returncode=completed.returncode,
                   artifacts=new)


def make_corpus(targets: tuple[str, ...]) -> None:
    """Write each target's seeds() to tests/fuzz/corpus/<target>/, named by content hash."""
    for target in targets:
        module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
        directory = CORPUS_DIR / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            old.unlink()
        for seed in module.seeds():
            (directory / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
        print(f"{target}: {len(list(directory.iterdir()))} seeds", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="TARGET",
                        help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds one input may take")
    parser.add_argument("--artifacts", type=Path, default=Path(tempfile.gettempdir()) / "qkdd-fuzz-artifacts",
                        help="where crashing and hanging inputs are kept")
    parser.add_argument("--logs", type=Path, help="keep each target's libFuzzer output in this directory")
    parser.add_argument("--make-corpus", action="store_true", help="rewrite the seed corpus and exit")
    args = parser.parse_args(argv)
    targets = tuple(args.targets) or TARGETS
    if args.make_corpus:
        make_corpus(targets)
        return 0
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    clean = True
    for target in targets:
        figures = run_target(target, args.runs, artifacts=args.artifacts, timeout_s=args.timeout,
                             log=args.logs / f"{target}.log" if args.logs else None)
        print(json.dumps(asdict(figures)), flush=True)
        clean = clean and figures.clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
