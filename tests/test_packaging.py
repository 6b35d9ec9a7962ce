"""Packaging: the .deb installs, runs and purges cleanly in a fresh Debian 12 root, the .rpm has the
same layout and scriptlets, and the systemd unit is valid and hardened. Packaged defaults: listeners on
the local host, the key store's KEK sealed into the systemd credential store (moved there from beside
the store on upgrade), third-party files exactly those of the hash-pinned lock, no bundled test suites,
documentation where the README says.

Everything here is real: `make deb` / `make rpm` with Debian's and RPM's own tools, debootstrap from
the mirror apt uses on this machine, apt resolving the package's dependencies, `qkdd run` as the qkdd
user with the unit's single capability, `/healthz` over a real socket, `systemd-analyze` on the unit.
These tests need root (chroot, mounts) and the tools in scripts/system-packages.txt; CI has both.
The Debian root is cached in /var/cache/qkdd-test/ (see `bookworm_root`).
"""
from __future__ import annotations

import glob
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "qkdd.service"
LOCKS = [REPO / "packaging" / "requirements.lock", REPO / "packaging" / "build-requirements.lock"]
SDIST_BUILD_LOCK = REPO / "packaging" / "sdist-build-requirements.lock"
# Directories holding a distribution's own test suite; none may be shipped.
TEST_SUITE_DIR = re.compile(r"/site-packages/.*/(tests|test|_tests)(/|$)")
SEALED_KEK = "etc/systemd/system/qkdd.service.d/50-kek.conf"   # written by /usr/lib/qkdd/kek-setup
SUITE = "bookworm"
CACHE_DIR = Path("/var/cache/qkdd-test")
CACHE_MAX_AGE_S = 7 * 24 * 3600  # the cached root's apt lists and debs follow the mirror weekly
# Installed into the cached root beyond minbase: every Debian 12 host that runs qkdd has systemd,
# and `systemd-analyze verify --root` needs its units (sysinit.target, ...).
ROOT_EXTRA_PACKAGES = ["systemd"]
EXPOSURE_MAX = 2.0
# The kernel's W^X lock (prctl PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1; Linux >= 6.3), kept
# across execve: the rule the unit's MemoryDenyWriteExecute= enforces (systemd 252 does it with
# seccomp). Running the packaged code under it shows cffi, numpy and cryptography need no W+X memory.
MDWE_EXEC = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True);"
             "assert libc.prctl(65, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno());"
             "os.execv(sys.argv[1], sys.argv[1:])")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="package builds and the Debian root need root (chroot, mounts)")


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools {missing}: install scripts/system-packages.txt (scripts/bootstrap-system.sh)")


def _run(cmd: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"--- stdout (tail)\n{result.stdout[-4000:]}\n--- stderr (tail)\n{result.stderr[-4000:]}"
        )
    return result


def _in_root(root: Path, *cmd: str, timeout_s: float = 300, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` chrooted into `root` with /proc mounted in a private mount namespace: the mount
    disappears with the process, so nothing is left mounted whatever happens to the test."""
    argv = _chroot_argv(root, *cmd)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                            env={**APT_ENV, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(
            f"in root: {' '.join(cmd)} exited {result.returncode}\n"
            f"--- stdout (tail)\n{result.stdout[-4000:]}\n--- stderr (tail)\n{result.stderr[-4000:]}"
        )
    return result


def _chroot_argv(root: Path, *cmd: str) -> list[str]:
    script = 'mount -t proc proc "$1/proc" && exec chroot "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(root), *cmd]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins(lock: Path) -> set[tuple[str, str]]:
    """(name, version) of every pin in a lock file, after checking that each pin carries its hashes."""
    pins = set()
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if pin:
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{lock.name}: {pin.group(0)} has no hash"
            pins.add((_canonical(pin.group(1)), pin.group(2)))
    return pins


def _bundled_distributions(paths) -> set[tuple[str, str]]:
    """(name, version) of every distribution installed in the package's venv, but qkdd itself."""
    found = set()
    for path in paths:
        info = re.search(r"/site-packages/([^/]+?)-([^/-]+)\.dist-info(/|$)", path)
        if info and _canonical(info.group(1)) != "qkdd":
            found.add((_canonical(info.group(1)), info.group(2)))
    return found


def _readme_doc_paths() -> set[str]:
    """Every /usr/share/doc/qkdd/... file that the README's "Install as a service" section names."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"/usr/share/doc/qkdd/[\w./-]*\w", section))


def _assert_listeners_local(config_text: str) -> None:
    config = tomllib.loads(config_text)
    for name in ("api", "health"):
        host = config[name]["listen"].rpartition(":")[0].strip("[]")
        assert ipaddress.ip_address(host).is_loopback, (name, config[name]["listen"])


def _sealed_kek(root: Path) -> str:
    """The KEK sealed in the drop-in, decrypted in the root with its systemd host key (as PID 1 does)."""
    dropin = (root / SEALED_KEK).read_text()
    blob = re.sub(r"[\s\\]", "", dropin.split("SetCredentialEncrypted=kek:", 1)[1])
    (root / "tmp" / "kek.sealed").write_text(blob)
    try:
        return _in_root(root, "systemd-creds", "decrypt", "--name=kek", "/tmp/kek.sealed", "-").stdout
    finally:
        (root / "tmp" / "kek.sealed").unlink()


# --------------------------------------------------------------------------------------------------
# Building the packages (once per module)


@pytest.fixture(scope="module")
def deb_path() -> Path:
    _require("dpkg-buildpackage", "dh", "lintian", "make")
    result = _run(["make", "-C", str(REPO), "deb"], timeout_s=900)
    # `make deb` fails on any lintian error or warning; check that lintian really ran and said nothing.
    assert "lintian --fail-on error,warning" in result.stdout
    lintian_tags = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: qkdd", line)]
    assert lintian_tags == []
    (deb,) = glob.glob(str(REPO / "build" / "deb" / "qkdd_*.deb"))
    return Path(deb)


@pytest.fixture(scope="module")
def rpm_path() -> Path:
    _require("rpmbuild", "rpm", "make")
    _run(["make", "-C", str(REPO), "rpm"], timeout_s=900)
    (rpm,) = glob.glob(str(REPO / "build" / "rpm" / "RPMS" / "*" / "qkdd-*.rpm"))
    return Path(rpm)


# --------------------------------------------------------------------------------------------------
# A clean Debian 12 root, cached


def _apt_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 .sources or one-line .list entries)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(.+)$", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and SUITE in suites.group(1).split():
                    return uris.group(1).split()[0]
        else:
            for line in text.splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[0] == "deb" and not fields[1].startswith("["):
                    if fields[2] == SUITE:
                        return fields[1]
    return "http://deb.debian.org/debian"


def _deb_depends(deb: Path) -> list[str]:
    """Package names in the .deb's Depends (first of each alternative), for pre-fetching."""
    field = _run(["dpkg-deb", "--field", str(deb), "Depends"], timeout_s=30).stdout
    return sorted({re.split(r"[\s(:]", alternative.split("|")[0].strip())[0] for alternative in field.split(",")})


def _build_root_tarball(tarball: Path, mirror: str, prefetch: list[str]) -> None:
    staging = Path(str(tarball) + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    _run(["debootstrap", "--variant=minbase", SUITE, str(staging), mirror], timeout_s=900)
    shutil.copy("/etc/resolv.conf", staging / "etc" / "resolv.conf")
    _in_root(staging, "apt-get", "install", "-y", "-q", "--no-install-recommends", *ROOT_EXTRA_PACKAGES)
    _in_root(staging, "apt-get", "clean")
    # The package's dependencies are downloaded, not installed: apt still has to resolve them when it
    # installs the .deb, but need not fetch them again on every run.
    _in_root(staging, "apt-get", "install", "-y", "-q", "--no-install-recommends", "--download-only", *prefetch)
    partial = tarball.with_suffix(".partial")
    _run(["tar", "-C", str(staging), "-cf", str(partial), "."], timeout_s=300)
    partial.rename(tarball)
    shutil.rmtree(staging)


@pytest.fixture(scope="module")
def bookworm_root(tmp_path_factory, deb_path) -> Path:
    """A fresh Debian 12 minbase root (+ systemd), extracted from a cached tarball made with debootstrap
    from apt's mirror. The cache is keyed by mirror, suite, debootstrap version and package lists."""
    _require("debootstrap", "unshare", "chroot", "tar")
    mirror = _apt_mirror()
    prefetch = _deb_depends(deb_path)
    debootstrap_version = _run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], timeout_s=30).stdout
    key_source = json.dumps([SUITE, "minbase", mirror, debootstrap_version, ROOT_EXTRA_PACKAGES, prefetch])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"{SUITE}-minbase-{key}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime > CACHE_MAX_AGE_S:
        tarball.unlink()
    if not tarball.exists():
        for stale in CACHE_DIR.glob(f"{SUITE}-minbase-*.tar"):
            stale.unlink()
        _build_root_tarball(tarball, mirror, prefetch)
    root = tmp_path_factory.mktemp("bookworm") / "root"
    root.mkdir()
    _run(["tar", "-C", str(root), "-xf", str(tarball)], timeout_s=300)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, timeout_s: float) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 while a link is not up is still an answer
        return error.code, json.loads(error.read())


def _wait_for_json(url: str, process: subprocess.Popen, deadline_s: float) -> tuple[int, dict]:
    end = time.monotonic() + deadline_s
    while True:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"qkdd exited {process.returncode} before answering {url}:\n{output[-3000:]}")
        try:
            return _get_json(url, timeout_s=2)
        except (ConnectionError, urllib.error.URLError, TimeoutError):
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _notifications(sock: socket.socket, want: set[str], deadline_s: float) -> list[str]:
    """Datagrams on the NOTIFY_SOCKET until every variable in `want` (e.g. "READY=1") was seen."""
    seen: list[str] = []
    end = time.monotonic() + deadline_s
    while not want.issubset(seen):
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            seen.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
    return seen


# --------------------------------------------------------------------------------------------------
# The unit


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for qkdd\.service: (\d+(?:\.\d+)?)", output)
    assert match, output[-2000:]
    return float(match.group(1))


def test_unit_exposure_within_bound():
    _require("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    assert _exposure(result.stdout) <= EXPOSURE_MAX, result.stdout


def test_unit_keeps_only_cap_net_admin_and_notify_contract():
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            name, value = line.split("=", 1)
            settings.setdefault(name.strip(), []).append(value.strip())
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert settings["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["User"] == ["qkdd"] and settings["StateDirectory"] == ["qkdd"]
    assert settings["StateDirectoryMode"] == ["0700"] and "WatchdogSec" in settings


def test_wireguard_go_units_verify_and_open_the_socket_to_the_unit_s_group(tmp_path):
    """qkdd-wireguard-go@.socket/.service (tests/test_wireguard_unit.py runs them under systemd): every line
    understood, and the socket's group is the group qkdd.service runs as (its only access to the socket)."""
    _require("systemd-analyze")
    for unit in ("qkdd-wireguard-go@.socket", "qkdd-wireguard-go@.service"):
        shutil.copy(REPO / "systemd" / unit, tmp_path / unit)
    instances = [str(tmp_path / f"qkdd-wireguard-go@wg0.{kind}") for kind in ("socket", "service")]
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *instances], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert verify.returncode == 0 and "qkdd-wireguard-go" not in verify.stdout + verify.stderr, verify.stderr
    socket_unit = (REPO / "systemd" / "qkdd-wireguard-go@.socket").read_text()
    assert re.search(r"^SocketGroup=qkdd$", socket_unit, re.M) and re.search(r"^SocketMode=0660$", socket_unit, re.M)
    assert re.search(r"^Group=qkdd$", UNIT.read_text(), re.M)


# --------------------------------------------------------------------------------------------------
# The Debian package in a clean Debian 12 root


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_deb_layout(deb_path):
    listing = _run(["dpkg-deb", "--contents", str(deb_path)], timeout_s=60).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in ("/usr/lib/qkdd/bin/python3", "/usr/lib/qkdd/pyvenv.cfg", "/lib/systemd/system/qkdd.service",
                     "/usr/bin/qkdd", "/usr/bin/qkdctl", "/etc/qkdd/credentials/",
                     "/usr/share/doc/qkdd/examples/serial-device.conf",
                     "/lib/systemd/system/qkdd-wireguard-go@.socket", "/lib/systemd/system/qkdd-wireguard-go@.service"):
        assert expected in paths, expected
    assert any(re.search(r"/site-packages/qkdd/_native\..*so$", path) for path in paths)
    assert not any("__pycache__" in path for path in paths), "bytecode is compiled in postinst, not shipped"
    control = _run(["dpkg-deb", "--field", str(deb_path), "Depends"], timeout_s=30).stdout
    assert re.search(r"\bpython3\.\d+\b", control) and "adduser" in control
    conffiles = _run(["dpkg-deb", "--info", str(deb_path), "conffiles"], timeout_s=30).stdout
    assert "/etc/qkdd/qkdd.toml" in conffiles.split()
    _check_packaged_defaults(paths, _deb_file(deb_path, "etc/qkdd/qkdd.toml"))
    assert "/usr/share/doc/qkdd/requirements.lock" in paths


def _deb_file(deb: Path, member: str) -> str:
    fsys = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, timeout=120, check=True)
    with tarfile.open(fileobj=io.BytesIO(fsys.stdout)) as archive:
        return archive.extractfile(f"./{member}").read().decode()


def _check_packaged_defaults(paths: set[str], config_text: str) -> None:
    """What both packages must hold: exactly the locked distributions, no test suites, the KEK setup,
    the documentation where the README names it, and a configuration that listens on this host only."""
    assert _bundled_distributions(paths) == _lock_pins(LOCKS[0])
    test_files = sorted(path for path in paths if TEST_SUITE_DIR.search(path))
    assert test_files == [], test_files[:10]
    assert "/usr/lib/qkdd/kek-setup" in paths
    documented = _readme_doc_paths()
    assert {"/usr/share/doc/qkdd/examples/serial-device.conf"} <= documented
    assert documented <= paths, documented - paths
    assert "/usr/share/doc/qkdd/README.md" in paths
    for page in ("/usr/share/man/man8/qkdd.8", "/usr/share/man/man1/qkdctl.1", "/usr/share/man/man5/qkdd.toml.5"):
        assert any(path.startswith(page) for path in paths), page             # (gzipped or not)
    assert {"/usr/share/bash-completion/completions/qkdctl", "/usr/share/bash-completion/completions/qkdd",
            "/usr/share/doc/qkdd/examples/qkdd-rules.yml", "/usr/share/doc/qkdd/examples/qkdd.json"} <= paths
    _assert_listeners_local(config_text)


def test_locks_pin_every_distribution_with_hashes():
    """Both locks pin every distribution to one version with its files' sha256 (checked in _lock_pins),
    and the runtime lock covers pyproject's dependencies."""
    runtime, build = (_lock_pins(lock) for lock in LOCKS)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())
    for requirement in declared["project"]["dependencies"]:
        name = _canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        assert name in {pin[0] for pin in runtime}, requirement
    for requirement in declared["build-system"]["requires"]:
        name = _canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        assert name in {pin[0] for pin in build}, requirement
    # The packages serve SKIP: its extra is in the runtime lock, and sslpsk3 (an sdist only, built with
    # poetry-core) has its build back-end in the sdist build lock, which the build venv installs beside the
    # build lock (so no name may be pinned in both).
    for requirement in declared["project"]["optional-dependencies"]["skip"]:
        name = _canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        assert name in {pin[0] for pin in runtime}, requirement
    sdist_build = _lock_pins(SDIST_BUILD_LOCK)
    assert "poetry-core" in {pin[0] for pin in sdist_build}
    assert not {pin[0] for pin in sdist_build} & {pin[0] for pin in build}


def _tree_digest(top: Path) -> dict[str, str]:
    return {str(path.relative_to(top)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
            else f"-> {os.readlink(path)}" if path.is_symlink() else "dir"
            for path in sorted(top.rglob("*"))}


@pytest.mark.slow
def test_venv_build_is_reproducible_from_the_lock(tmp_path):
    """Two builds of the private environment from the same source and locks, in different staging trees,
    give byte-identical trees: every third-party file comes from the lock, and nothing depends on where
    or when it was built. (Needs the package index, or pip's cache.)"""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 (the distribution's interpreter the packages are built on)")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.so", "__pycache__",
                                                             "*.egg-info", ".pytest_cache", ".hypothesis"))
    trees = []
    for staging in (tmp_path / "one", tmp_path / "a" / "longer" / "staging" / "root"):
        shutil.rmtree(src / "build", ignore_errors=True)
        result = subprocess.run(["bash", str(src / "packaging" / "build-venv.sh"), str(src), str(staging),
                                 "/usr/lib/qkdd"], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(r"removed bundled test suites: (\d+) -> (\d+) files", result.stderr)
        trees.append(_tree_digest(staging / "usr/lib/qkdd"))
    assert trees[0] == trees[1], sorted(set(trees[0].items()) ^ set(trees[1].items()))[:10]
    assert _bundled_distributions("/" + name for name in trees[0]) == _lock_pins(LOCKS[0])
    assert not [name for name in trees[0] if TEST_SUITE_DIR.search("/" + name)]


@pytest.mark.slow
def test_build_refuses_a_dependency_whose_hash_is_not_in_the_lock(tmp_path):
    """build-venv.sh installs with pip --require-hashes: one distribution whose files all have other
    hashes than the lock says stops the build before any venv exists. (Needs the package index.)"""
    _require("bash")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 (the distribution's interpreter the packages are built on)")
    src = tmp_path / "src"
    shutil.copytree(REPO / "packaging", src / "packaging")
    lock = src / "packaging" / "requirements.lock"
    text = lock.read_text()
    hashes = re.search(r"^sniffio==\S+ \\\n((?:    --hash=sha256:[0-9a-f]{64}.*\n)+)", text, re.M).group(1)
    lock.write_text(text.replace(hashes, re.sub(r"[0-9a-f]{64}", "0" * 64, hashes)))
    stage = tmp_path / "stage"
    result = subprocess.run(["bash", str(src / "packaging" / "build-venv.sh"), str(src), str(stage), "/usr/lib/qkdd"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stderr and "sniffio" in result.stderr, result.stderr[-3000:]
    assert "0" * 64 in result.stderr   # the forged hash was what pip compared against
    assert not stage.exists()


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_deb_installs_runs_and_purges_in_clean_bookworm(deb_path, bookworm_root):
    root = bookworm_root
    shutil.copy(deb_path, root / "tmp" / "package.deb")
    _in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "/tmp/package.deb")

    # Layout and scriptlet effects.
    assert (root / "usr/bin/qkdd").resolve() == (root / "usr/lib/qkdd/bin/qkdd")
    shebang = (root / "usr/lib/qkdd/bin/qkdd").read_text().splitlines()[0]
    assert shebang == "#!/usr/lib/qkdd/bin/python", shebang
    passwd = _in_root(root, "getent", "passwd", "qkdd").stdout.split(":")
    assert passwd[5] == "/var/lib/qkdd" and passwd[6].strip() == "/usr/sbin/nologin"
    uid, gid = int(passwd[2]), int(passwd[3])
    state = (root / "var/lib/qkdd").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o700)
    assert ((root / "etc/qkdd/credentials").stat().st_mode & 0o777) == 0o700
    # Packaged defaults: listeners on this host only, as the daemon itself reads the installed file.
    _assert_listeners_local((root / "etc/qkdd/qkdd.toml").read_text())
    # The KEK: generated by postinst, sealed with systemd-creds into the credential drop-in; no plain copy
    # in /etc/qkdd/credentials and none beside the store.
    sealed = (root / SEALED_KEK).stat()
    assert (sealed.st_uid, sealed.st_mode & 0o777) == (0, 0o644)   # encrypted: only this host's key opens it
    kek_hex = _sealed_kek(root)
    assert re.fullmatch(r"[0-9a-f]{64}\n", kek_hex)
    assert not (root / "etc/qkdd/credentials/kek").exists() and not (root / "var/lib/qkdd/kek").exists()
    # dh_installsystemd enabled the unit (systemd is not running in the root, so nothing started).
    wants = root / "etc/systemd/system/multi-user.target.wants/qkdd.service"
    assert os.readlink(wants) == "/lib/systemd/system/qkdd.service"
    # The unit against the installed tree: ExecStart exists, every directive is understood.
    _require("systemd-analyze")
    # --man=no: verify would run the host's man(1) for Documentation=man:qkdd(8), and the page is
    # installed in the root, not on the host.
    verify = _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "qkdd.service"], timeout_s=120)
    assert "qkdd" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr  # no warning either
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager",
                               "qkdd.service"], capture_output=True, text=True, timeout=60)
    assert _exposure(security.stdout) <= EXPOSURE_MAX
    # The private environment: the compiled native library and every dependency load as the qkdd user,
    # with only CAP_NET_ADMIN, no new privileges, and (where the kernel has it) no W+X memory.
    as_qkdd = ["setpriv", "--reuid=qkdd", "--regid=qkdd", "--init-groups", "--no-new-privs",
               "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin"]
    if _kernel_has_mdwe():
        as_qkdd += ["/usr/lib/qkdd/bin/python", "-c", MDWE_EXEC]
        refused = _in_root(root, *as_qkdd, "/usr/lib/qkdd/bin/python", "-c",
                           "import mmap; mmap.mmap(-1, 4096, prot=7)", check=False)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr
    imports = _in_root(root, *as_qkdd, "/usr/lib/qkdd/bin/python", "-c",
                       "import numpy, cryptography, trio, h11, httpx, serial, prometheus_client, sdnotify;"
                       "from qkdd import _native; print(_native.lib.qkd_cpu_features() >= 0)")
    assert imports.stdout.strip() == "True"

    _check_config_and_run(root, as_qkdd, kek_hex)
    _boot_with_systemd_and_check_service(root, uid, kek_hex)
    assert (root / "var/lib/qkdd/keys.sqlite3").exists() and not (root / "var/lib/qkdd/kek").exists()
    _check_kek_setup_guards(root, kek_hex)

    # Upgrade path (prerm upgrade, postinst configure <old version>): user, state and config survive, and
    # a KEK that an earlier version left beside the store moves into the credential store, unchanged.
    (root / "var/lib/qkdd/marker").write_text("kept")
    (root / SEALED_KEK).unlink()
    legacy = root / "var/lib/qkdd/kek"
    legacy.write_text(kek_hex)
    os.chown(legacy, uid, gid)
    legacy.chmod(0o600)
    upgrade = _in_root(root, "dpkg", "-i", "/tmp/package.deb")
    assert "moved the KEK from /var/lib/qkdd/kek" in upgrade.stderr, upgrade.stderr
    assert not legacy.exists() and _sealed_kek(root) == kek_hex
    _open_store_in_root(root, kek_hex)   # the store made before the move opens under the moved KEK
    assert (root / "var/lib/qkdd/marker").read_text() == "kept"
    assert int(_in_root(root, "id", "-u", "qkdd").stdout) == uid

    # Plain removal keeps state; purge removes every trace: files, unit links, user, group, state.
    _in_root(root, "apt-get", "remove", "-y", "-q", "qkdd")
    assert (root / "var/lib/qkdd/marker").exists() and not (root / "usr/lib/qkdd").exists()
    _in_root(root, "apt-get", "purge", "-y", "-q", "qkdd")
    assert _in_root(root, "getent", "passwd", "qkdd", check=False).returncode == 2
    assert _in_root(root, "getent", "group", "qkdd", check=False).returncode == 2
    leftovers = _in_root(root, "find", "/", "-xdev", "(", "-name", "*qkdd*", "-o", "-uid", str(uid),
                         "-o", "-gid", str(gid), ")", "-not", "-path", "/tmp/*", "-not", "-path", "/proc/*").stdout
    assert leftovers.split() == []


def _open_store_in_root(root: Path, kek_hex: str) -> None:
    _in_root(root, "/usr/lib/qkdd/bin/python", "-c",
             "import sys; from qkdd.keystore import KeyStore;"
             "KeyStore('/var/lib/qkdd/keys.sqlite3', bytes.fromhex(sys.argv[1])).close()", kek_hex.strip())


def _check_kek_setup_guards(root: Path, kek_hex: str) -> None:
    """kek-setup (postinst) never makes a KEK that cannot open an existing store, and without sealing
    (QKDD_KEK_SEAL=no, or no working systemd-creds) stores it as a root-only 0600 credential file."""
    aside = root / "root" / "kek-test"
    aside.mkdir()
    try:
        (root / SEALED_KEK).rename(aside / "50-kek.conf")
        guarded = _in_root(root, "/usr/lib/qkdd/kek-setup")
        assert "a key store exists in /var/lib/qkdd but no KEK was found" in guarded.stderr, guarded.stderr
        assert not (root / SEALED_KEK).exists() and not (root / "etc/qkdd/credentials/kek").exists()

        stores = [path for path in (root / "var/lib/qkdd").iterdir() if path.name.startswith("keys.")]
        for path in stores:
            path.rename(aside / path.name)
        _in_root(root, "/usr/lib/qkdd/kek-setup", env={"QKDD_KEK_SEAL": "no"})
        plain = root / "etc/qkdd/credentials/kek"
        assert (plain.stat().st_uid, plain.stat().st_mode & 0o777) == (0, 0o600)
        assert re.fullmatch(r"[0-9a-f]{64}\n", plain.read_text()) and plain.read_text() != kek_hex
        assert not (root / SEALED_KEK).exists() and not (root / "var/lib/qkdd/kek").exists()
        plain.unlink()
        for path in stores:
            (aside / path.name).rename(path)
    finally:
        (aside / "50-kek.conf").rename(root / SEALED_KEK)
        shutil.rmtree(aside)


def _kernel_has_mdwe() -> bool:
    probe = subprocess.run(["python3", "-c", MDWE_EXEC, "/bin/true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _check_config_and_run(root: Path, as_qkdd: list[str], kek_hex: str) -> None:
    """`qkdd check-config`, then `qkdd run` as the qkdd user with the unit's capability, state directory
    and KEK rule: without the credential it refuses to start and writes nothing; with it, READY=1 and
    WATCHDOG=1 on NOTIFY_SOCKET, /healthz answers, SIGTERM exits 0."""
    check = _in_root(root, *as_qkdd, "/usr/bin/qkdd", "check-config", "--format", "json", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    effective = json.loads(check.stdout)
    for name in ("api", "health"):
        host = effective[name]["listen"].rpartition(":")[0].strip("[]")
        assert ipaddress.ip_address(host).is_loopback, effective[name]

    api_port, health_port = _free_port(), _free_port()
    notify_path = root / "run" / "qkdd-test-notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chmod(notify_path, 0o666)  # the daemon writes to it as the qkdd user
    env = {**APT_ENV, "QKD_API_LISTEN": f"127.0.0.1:{api_port}", "QKD_HEALTH_LISTEN": f"127.0.0.1:{health_port}",
           "QKD_STATE_DIR": "/var/lib/qkdd", "NOTIFY_SOCKET": "/run/qkdd-test-notify.sock",
           "WATCHDOG_USEC": "2000000", "QKD_KEK_SOURCE": "credential"}

    def command(env: dict[str, str]) -> list[str]:
        # `env -i` inside the root, so nothing from this process's environment leaks into the daemon.
        return _chroot_argv(root, *as_qkdd, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
                            "/usr/bin/qkdd", "run", "--config", "/etc/qkdd/qkdd.toml")

    state_before = sorted(path.name for path in (root / "var/lib/qkdd").iterdir())
    refused = subprocess.run(command(env), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and 'no systemd credential \\"kek\\"' in refused.stderr, refused.stderr[-2000:]
    assert sorted(path.name for path in (root / "var/lib/qkdd").iterdir()) == state_before
    # The credential as systemd hands it to the service: a file of the qkdd user, 0400, in its own directory.
    credentials = root / "run" / "qkdd-test-credentials"
    credentials.mkdir(mode=0o500)
    (credentials / "kek").write_text(kek_hex)
    qkdd_ids = (root / "var/lib/qkdd").stat()
    for path in (credentials / "kek", credentials):
        os.chown(path, qkdd_ids.st_uid, qkdd_ids.st_gid)
    (credentials / "kek").chmod(0o400)
    env["CREDENTIALS_DIRECTORY"] = "/run/qkdd-test-credentials"
    daemon = subprocess.Popen(command(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, body = _wait_for_json(f"http://127.0.0.1:{health_port}/healthz", daemon, deadline_s=60)
        # Configured links that no engine runs yet count as healthy (README, "Configure"); with none working
        # the body says "degraded".
        assert status == 200 and body["status"] == "degraded", (status, body)
        seen = _notifications(notify, {"READY=1", "WATCHDOG=1"}, deadline_s=5)
        assert "READY=1" in seen and "WATCHDOG=1" in seen, seen
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        notify.close()
        notify_path.unlink(missing_ok=True)
        shutil.rmtree(credentials)


CAP_NET_ADMIN_MASK = f"{1 << 12:016x}"  # capability number 12, as /proc/PID/status prints sets


def _boot_with_systemd_and_check_service(root: Path, uid: int, kek_hex: str) -> None:
    """Boot the root with systemd as PID 1 (systemd-nspawn) and check the packaged unit as systemd runs
    it: enabled by the package, READY=1 reached, watchdog pinged, only CAP_NET_ADMIN, seccomp on, the
    file system read-only but for the state, credentials loaded (the sealed KEK decrypted by systemd, a
    missing one not fatal), listening on the local host only, clean stop."""
    _require("systemd-nspawn", "nsenter")
    api_port, health_port = _free_port(), _free_port()
    # Test ports in the installed configuration, its listen hosts untouched (the container shares this
    # host's network, so the packaged ports may be taken).
    config = root / "etc/qkdd/qkdd.toml"
    packaged_config = config.read_text()
    ports = {"api": api_port, "health": health_port}
    config.write_text(re.sub(r'^(\[(api|health)\][^\[]*?^listen = "[^"]*:)\d+"',
                             lambda match: f'{match.group(1)}{ports[match.group(2)]}"', packaged_config,
                             flags=re.M | re.S))
    assert config.read_text().count(f":{api_port}\"") == 1 and config.read_text().count(f":{health_port}\"") == 1
    dropin = root / "etc/systemd/system/qkdd.service.d/test-watchdog.conf"
    # A short watchdog so that pings are seen within seconds (and missing ones kill it).
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=4s\n")
    secret = root / "etc/qkdd/credentials/kms-client-secret"
    secret.write_text("test-kms-secret\n")
    secret.chmod(0o600)
    log = open(root.parent / "nspawn.log", "w+")
    # --keep-unit/--register=no: no systemd on the host to register with; CAP_NET_ADMIN is kept in the
    # container's bounding set only when asked for (nspawn drops it without a private network).
    container = subprocess.Popen(["systemd-nspawn", "--quiet", "--boot", "--keep-unit", "--register=no",
                                  "--capability=CAP_NET_ADMIN", "--console=pipe", "-D", str(root)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        status, body = _wait_for_json(f"http://127.0.0.1:{health_port}/healthz", container, deadline_s=120)
        assert status == 200 and body["status"] == "degraded", (status, body)      # no link works: still 200
        main_pid = _service_main_pid(container.pid)
        init_pid = _parent_pid(main_pid)

        def systemctl(*args: str) -> str:
            return _run(["nsenter", f"--target={init_pid}", "--mount", "--pid", "--", "systemctl", *args],
                        timeout_s=60).stdout

        def show(*names: str) -> dict[str, str]:
            lines = systemctl("show", "qkdd.service", *(f"--property={name}" for name in names)).splitlines()
            return dict(line.split("=", 1) for line in lines if "=" in line)

        state = show("ActiveState", "SubState", "NRestarts", "StatusText", "UnitFileState")
        assert state["ActiveState"] == "active" and state["SubState"] == "running", state
        assert state["NRestarts"] == "0" and state["UnitFileState"] == "enabled", state
        assert state["StatusText"].startswith("serving"), state
        first_ping = int(show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
        time.sleep(5)  # two or three pings at WatchdogSec/2
        second = show("WatchdogTimestampMonotonic", "NRestarts")
        assert int(second["WatchdogTimestampMonotonic"]) > first_ping and second["NRestarts"] == "0", second

        status_lines = dict(line.split(":", 1) for line in Path(f"/proc/{main_pid}/status").read_text().splitlines())
        assert int(status_lines["Uid"].split()[0]) == uid
        for capability_set in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
            assert status_lines[capability_set].strip() == CAP_NET_ADMIN_MASK, (capability_set, status_lines)
        assert status_lines["NoNewPrivs"].strip() == "1" and status_lines["Seccomp"].strip() == "2"

        mounts = {}
        for line in Path(f"/proc/{main_pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            mounts[fields[4]] = fields[5].split(",")
        def options_at(path: str) -> list[str]:  # of the innermost mount holding `path`
            point = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len)
            return mounts[point]

        assert "ro" in options_at("/usr/lib/qkdd") and "ro" in options_at("/etc/qkdd"), mounts
        assert "rw" in options_at("/var/lib/qkdd"), mounts

        credentials = Path(f"/proc/{main_pid}/root/run/credentials/qkdd.service")
        assert (credentials / "qkdd_kms-client-secret").read_text() == "test-kms-secret\n"
        kek = (credentials / "kek").stat()   # SetCredentialEncrypted= of the package's drop-in, decrypted
        assert kek.st_uid == uid and kek.st_mode & 0o077 == 0, oct(kek.st_mode)
        assert (credentials / "kek").read_text() == kek_hex
        assert not (credentials / "qkdd_kek").exists()  # no plain KEK file, and nothing missing is fatal

        listening = _listening_addresses(main_pid)
        assert sorted(port for _, port in listening) == sorted([api_port, health_port]), listening
        assert all(ipaddress.ip_address(host).is_loopback for host, _ in listening), listening

        systemctl("stop", "qkdd.service")
        stopped = show("ActiveState", "Result", "ExecMainStatus")
        assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, stopped
        # The connection may drop as the manager goes down; the container's exit is what counts.
        subprocess.run(["nsenter", f"--target={init_pid}", "--mount", "--pid", "--", "systemctl", "poweroff"],
                       capture_output=True, timeout=60)
        assert container.wait(timeout=90) == 0
    except BaseException:
        log.seek(0)
        print("--- container console (tail)\n" + log.read()[-4000:])
        raise
    finally:
        if container.poll() is None:
            _kill_container(container)
        log.close()
        dropin.unlink()
        config.write_text(packaged_config)
        secret.unlink(missing_ok=True)


def _listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every listening TCP socket that process `pid` holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: TCP_LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)   # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, packed), int(port_hex, 16)))
    return found


def _kill_container(container: subprocess.Popen) -> None:
    """SIGKILL the container's init (PID 1 of its namespace, which takes every process in it along),
    then nspawn itself: killing only nspawn would leave the booted system running."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and _parent_pid(int(entry.name)) == container.pid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, AttributeError):
            continue
    container.kill()
    container.wait(timeout=30)


def _parent_pid(pid: int) -> int:
    return int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def _service_main_pid(container_pid: int) -> int:
    """The host PID of `qkdd run` started by the container's systemd: a descendant of systemd-nspawn.
    (Its /proc/PID/root cannot tell: it reads "/" from inside the service's own mount namespace.)"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"/usr/bin/qkdd" not in command or b"run" not in command:
                continue
            ancestor = int(entry.name)
            while ancestor > 1:
                ancestor = _parent_pid(ancestor)
                if ancestor == container_pid:
                    return int(entry.name)
        except (OSError, AttributeError):
            continue
    raise AssertionError("no qkdd run process in the container")


# --------------------------------------------------------------------------------------------------
# The RPM


@pytest.mark.slow
@pytest.mark.root
@needs_root
def test_rpm_layout_scriptlets_and_requires(rpm_path):
    def query(*flags: str) -> str:
        return _run(["rpm", "-qp", *flags, str(rpm_path)], timeout_s=120).stdout

    files = set(query("--list").split())
    for expected in ("/usr/lib/qkdd/bin/python3", "/usr/lib/qkdd/pyvenv.cfg", "/usr/bin/qkdd", "/usr/bin/qkdctl",
                     "/usr/lib/systemd/system/qkdd.service", "/etc/qkdd/credentials",
                     "/usr/lib/systemd/system/qkdd-wireguard-go@.socket",
                     "/usr/lib/systemd/system/qkdd-wireguard-go@.service"):
        assert expected in files, expected
    assert any(re.search(r"/site-packages/qkdd/_native\..*so$", path) for path in files)
    assert "/etc/qkdd/qkdd.toml" in set(query("--configfiles").split())
    _check_packaged_defaults(files, _rpm_file(rpm_path, "etc/qkdd/qkdd.toml"))
    docs = set(query("--docfiles").split())
    assert _readme_doc_paths() | {"/usr/share/doc/qkdd/README.md"} <= docs, docs
    modes = {line.split()[-1]: line.split()[:4] for line in query("--list", "-v").splitlines()}
    assert modes["/var/lib/qkdd"][0] == "drwx------" and modes["/var/lib/qkdd"][2:4] == ["qkdd", "qkdd"]
    assert modes["/etc/qkdd/credentials"][0] == "drwx------" and modes["/etc/qkdd/credentials"][2] == "root"

    scripts = query("--scripts")
    sections = dict(re.findall(r"^(\w+) scriptlet .*?:\n(.*?)(?=^\w+ scriptlet |\Z)", scripts, re.M | re.S))
    assert "useradd" in sections["preinstall"] and "qkdd" in sections["preinstall"]
    assert "systemctl" in sections["postinstall"] and "preset" in sections["postinstall"]
    assert "/usr/lib/qkdd/kek-setup" in sections["postinstall"]
    assert "systemctl" in sections["preuninstall"] and "disable" in sections["preuninstall"]
    # %postun: restart on upgrade ($1 >= 1), remove state and user only on erase ($1 == 0).
    postun = sections["postuninstall"]
    assert "try-restart" in postun and "/var/lib/qkdd" in postun and "userdel" in postun
    assert "/etc/systemd/system/qkdd.service.d/50-kek.conf" in postun   # the sealed KEK goes with the store

    requires = query("--requires")
    assert re.search(r"^python\(abi\) = 3\.\d+$", requires, re.M), requires
    assert re.search(r"^shadow-utils", requires, re.M) and "systemd" in requires
    # The bundled wheels' libraries are private: nothing under /usr/lib/qkdd is offered to other packages.
    provides = query("--provides")
    assert not re.search(r"\.so", provides), provides


def _rpm_file(rpm: Path, member: str) -> str:
    with open(rpm, "rb") as package:
        archive_bytes = subprocess.run(["rpm2archive", "-"], stdin=package, capture_output=True, timeout=120,
                                       check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as archive:
        return archive.extractfile(f"./{member}").read().decode()
