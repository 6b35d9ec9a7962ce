"""Man pages qkdd(8), qkdctl(1), qkdd.toml(5) and the bash completions: current with the code they describe
(every command, option level, exit status and environment variable), free of groff warnings."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qkdd import cli, ctl
from qkdd.operator.client import ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "packaging/man"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def plain(page: Path) -> str:
    """The page's text with groff escapes for hyphens removed (what a reader searches for)."""
    return page.read_text().replace("\\-", "-")


def test_qkdd_toml_5_is_generated_from_the_current_example_config():
    generator = load(MAN / "qkdd-toml-5.py")
    assert (MAN / "qkdd.toml.5").read_text() == generator.render((ROOT / "etc/qkdd/qkdd.toml").read_text()), \
        "packaging/man/qkdd.toml.5 is stale: run `make man`"
    text = plain(MAN / "qkdd.toml.5")
    for table in ("[daemon]", "[api]", "[api.limits]", "[health]", "[keystore]", "[[links]]", "[links.sim]",
                  "[etsi014]", "[[wireguard]]"):
        assert f".SS {table}" in text, table
    assert ".B qber_threshold\n" in text and ".B peer_key_file\n" in text


def test_bash_completions_are_current_and_complete():
    generator = load(ROOT / "packaging/completion/make-completion.py")
    for program, text in generator.scripts().items():
        assert (ROOT / "packaging/completion" / program).read_text() == text, \
            f"packaging/completion/{program} is stale: run `make man`"
    if shutil.which("bash") is None:
        pytest.fail("bash missing")
    probe = ("source packaging/completion/qkdctl; COMP_WORDS=(qkdctl sim ru); COMP_CWORD=2; _qkdctl; "
             "echo \"${COMPREPLY[@]}\"; COMP_WORDS=(qkdctl watch --cou); COMP_CWORD=2; _qkdctl; "
             "echo \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.stdout.splitlines() == ["run", "--count"], result.stdout + result.stderr


def test_every_command_exit_status_and_variable_is_in_the_pages():
    qkdctl, qkdd = plain(MAN / "qkdctl.1"), plain(MAN / "qkdd.8")
    for command in commands(ctl.build_parser()):
        assert re.search(rf"\.B(R)? .*\b{re.escape(command)}\b", qkdctl), command
    for command in commands(cli.build_parser()):
        assert f".B {command}" in qkdd, command
    for variable in ENVIRONMENT.values():
        assert variable in qkdctl, variable
    for status in ("0", "1", "2", "3"):
        assert f".B {status}\n" in qkdctl
    for status in ("0", "1", "2"):
        assert f".B {status}\n" in qkdd
    # every variable qkdd itself reads (config overrides, the KEK source, systemd's) is in qkdd(8)
    code = "".join(path.read_text() for path in (ROOT / "qkdd").rglob("*.py") if "operator" not in path.parts)
    read = set(re.findall(r'"((?:QKD|KMS)_[A-Z_]+[A-Z])"', code)) | {"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET"}
    assert read and {name for name in read if name not in qkdd} == set()
    # what the daemon does not do is not claimed
    assert "E91 and CV-QKD links in the daemon\nare not implemented" in qkdd


@pytest.mark.parametrize("page", ["qkdd.8", "qkdctl.1", "qkdd.toml.5"])
def test_pages_render_without_groff_warnings(page):
    if shutil.which("man") is None:
        pytest.fail("man missing (man-db comes with lintian, scripts/system-packages.txt)")
    result = subprocess.run(["man", "--warnings", "-l", "-Tutf8", "-Z", str(MAN / page)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
