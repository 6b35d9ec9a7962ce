"""driver = "sdk": the reference vendor library (native/sdk_reference/qkd_device_ref.c, implementing
native/include/qkd_device.h) is compiled with gcc here and loaded through cffi's ABI mode; frames flow into
SdkDevice, and a missing library, another ABI version and error codes give clear, recoverable problems."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import trio

from qkdd.hal.sdk import abi
from qkdd.hal.sdk.device import SdkDevice
from qkdd.hal.sdk.settings import SdkConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "native" / "include" / "qkd_device.h"
REFERENCE = ROOT / "native" / "sdk_reference" / "qkd_device_ref.c"


def compile_library(out: pathlib.Path, *defines: str) -> pathlib.Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler is part of the build set-up (scripts/system-packages.txt)"
    sim_sources = [str(ROOT / "native" / "src" / f"{part}.c") for part in ("sim_chacha", "sim_channel", "sim_sampler",
                                                                            "bits")]
    subprocess.run([compiler, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                    "-D_GNU_SOURCE", "-shared", "-fPIC", "-Wl,-Bsymbolic", "-Wl,--no-undefined", f"-I{HEADER.parent}",
                    f"-I{ROOT / 'native' / 'src'}", *defines, "-o", str(out), str(REFERENCE), *sim_sources, "-lm"],
                   check=True)
    return out


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk")
    return {"good": compile_library(root / "libqkd_ref.so"),
            "abi2": compile_library(root / "libqkd_ref_abi2.so", "-DQKD_REF_ABI_VERSION=2")}


def test_sdk_loader_declarations_match_the_published_header():
    block = re.search(r"/\* sdk:begin \*/(.*?)/\* sdk:end \*/", HEADER.read_text(), re.S).group(1)
    assert abi.normalised(block) == abi.normalised(abi.CDEF)


def test_sdk_reference_library_frames_through_cffi_match_at_both_ends(libraries):
    library = abi.Library(str(libraries["good"]))
    alice, bob = library.open("seed=7,detections=50000", "alice"), library.open("seed=7,detections=50000", "bob")
    buffers = {role: (np.empty(60000, np.uint64), *(np.empty(60000, np.uint8) for _ in range(3))) for role in "ab"}
    info_a, info_b = alice.read_frame(*buffers["a"]), bob.read_frame(*buffers["b"])
    assert info_a.frame_id == info_b.frame_id == 0 and info_a.records == info_b.records == 50000
    n = info_a.records
    slots_a, bases_a, bits_a, intens_a = (b[:n] for b in buffers["a"])
    slots_b, bases_b, bits_b, _ = (b[:n] for b in buffers["b"])
    assert np.array_equal(slots_a, slots_b) and bool(np.all(slots_a[1:] > slots_a[:-1]))
    assert info_a.slot_count > int(slots_a[-1]) and sum(info_a.pulses_per_intensity) == info_a.slot_count
    assert set(np.unique(intens_a).tolist()) == {0, 1, 2}
    same = bases_a == bases_b
    errors = float(np.mean(bits_a[same] != bits_b[same]))
    # GYS detectors: misalignment 3.3 % plus dark counts; bases X with probability 0.63 at both ends
    assert 0.5 < float(np.mean(same)) < 0.56 and 0.025 < errors < 0.05
    assert alice.decoy()[0] == pytest.approx(0.40)
    status = alice.status()
    assert status.ok and status.detail == "reference device, 1 frames"
    with pytest.raises(abi.SdkError, match=r"decoy: invalid argument or configuration \(code -1\)"):
        bob.decoy()
    small = (np.empty(10, np.uint64), *(np.empty(10, np.uint8) for _ in range(3)))
    with pytest.raises(abi.SdkError, match=r"read_frame: frame larger than the buffer \(code -4\)"):
        alice.read_frame(*small)
    with pytest.raises(ValueError):
        alice.read_frame(np.empty(10, np.uint32), *small[1:])
    with pytest.raises(abi.SdkError, match="open: invalid argument"):
        library.open("detections=lots", "alice")
    alice.close()
    bob.close()
    replay = library.open("seed=7,detections=1000,replay=1", "alice")      # the benchmark's mode
    first, again = replay.read_frame(*buffers["a"]), None
    slots = buffers["a"][0][:first.records].copy()
    again = replay.read_frame(*buffers["a"])
    assert (first.frame_id, again.frame_id) == (0, 1) and np.array_equal(buffers["a"][0][:again.records], slots)
    replay.close()


def test_sdk_missing_library_and_wrong_abi_version_are_refused(libraries, tmp_path):
    with pytest.raises(abi.SdkError, match=f"SDK library {tmp_path}/nope.so: cannot load"):
        abi.Library(str(tmp_path / "nope.so"))
    with pytest.raises(abi.SdkError, match="implements qkd_device ABI version 2; qkdd speaks 1"):
        abi.Library(str(libraries["abi2"]))
    with pytest.raises(abi.SdkError, match="not a qkd_device.h library"):
        abi.Library(shutil.which("true") and "libc.so.6")


async def wait_for(predicate, timeout_s=60.0):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


def test_sdk_device_reports_errors_and_resumes_when_the_library_is_fixed(libraries, tmp_path):
    async def main():
        path = tmp_path / "libvendor.so"                 # not there yet: the device waits, unhealthy
        device = SdkDevice(SdkConfig(str(path), "seed=3,detections=20000,fail_after=2", reopen_s=0.05), "alice",
                           link_id="sdk-1")
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            await wait_for(lambda: device.problem is not None and "cannot load" in device.problem)
            health = await device.health()
            assert not health.ok and str(path) in health.detail
            shutil.copy(libraries["abi2"], path)
            await wait_for(lambda: "ABI version 2" in (device.problem or ""))
            path.unlink()
            shutil.copy(libraries["good"], path)       # a fixed library: frames flow without a restart
            with trio.fail_after(60):
                first = await device.next_frame()
                second = await device.next_frame()
            assert (first.frame_id, second.frame_id) == (0, 1) and first.alice.slots.size == 20000
            assert device.decoy_settings().q_x == pytest.approx(0.63)
            # fail_after=2: the third read returns QKD_DEVICE_E_IO; the device reopens and starts over
            await wait_for(lambda: "read_frame: device input/output error" in (device.problem or "")
                           or device.frames_read > 2)
            with trio.fail_after(60):
                again = await device.next_frame()
            assert again.frame_id == 0 and np.array_equal(again.alice.slots, first.alice.slots)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_sdk_link_engines_over_the_reference_library_make_the_same_keys(libraries, tmp_path):
    from qkdd.keystore import KeyState, KeyStore
    from qkdd.peer import generate_identity
    from tests.link_support import LinkEnd
    from tests.peer_harness import fast_settings
    link = "sdk-ab"

    async def main():
        alice_id, bob_id = generate_identity(), generate_identity()
        stores = {role: KeyStore(str(tmp_path / f"{role}.db"), bytes(32)) for role in ("alice", "bob")}
        config = SdkConfig(str(libraries["good"]), "seed=11,distance_km=25,detections=250000",
                           max_records_per_frame=250_000)
        async with trio.open_nursery() as nursery:
            alice = LinkEnd(link, "alice", SdkDevice(config, "alice", link_id=link), stores["alice"],
                            fast_settings(link, listen=("127.0.0.1", 0)), alice_id, bob_id.public_key())
            await alice.start(nursery)
            bob = LinkEnd(link, "bob", SdkDevice(config, "bob", link_id=link), stores["bob"],
                          fast_settings(link, dial=("127.0.0.1", alice.listen_port)), bob_id, alice_id.public_key())
            await bob.start(nursery)
            await wait_for(lambda: alice.status.totals["keys"] >= 50 and bob.status.totals["keys"] >= 50, 90)
            inventory = stores["bob"].inventory(link)
            for key_id, state in list(stores["alice"].inventory(link).items())[:40]:
                if state is KeyState.AVAILABLE and inventory.get(key_id) is KeyState.AVAILABLE:
                    assert stores["alice"].peek(link, key_id).material == stores["bob"].peek(link, key_id).material
            key = await alice.keys.request_key(256)
            assert (await bob.keys.fetch_key(key.key_id)).material == key.material
            assert 0.02 < alice.status.last_qber < 0.05
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_a_daemon_names_a_missing_sdk_library_in_healthz_and_runs_once_it_is_there(libraries, tmp_path):
    """A real daemon with an sdk link whose library is not installed yet: it stays up, /healthz names the
    library and why it cannot load (once the device start-up grace is over, qkdd.link.status), and once the
    library is in place the device answers again by itself."""
    import httpx

    from qkdd.link.status import DEVICE_START_GRACE_S
    from qkdd.peer import generate_identity, save_private_key, save_public_key
    from tests.daemon_support import Daemon, base_config, wait_until

    own, peer = generate_identity(), generate_identity()
    save_private_key(own, tmp_path / "own.key")
    save_public_key(peer.public_key(), tmp_path / "peer.pub")
    library = tmp_path / "vendor" / "libqkd.so"
    link = (f'[[links]]\nlink_id = "sdk-1"\nrole = "alice"\ndriver = "sdk"\npeer_listen = "127.0.0.1:0"\n'
            f'peer_key_file = "{tmp_path / "own.key"}"\npeer_public_key = "{tmp_path / "peer.pub"}"\n'
            f'[links.sdk]\nsdk_library = "{library}"\ndevice_config = "seed=3,detections=20000"\nreopen_s = 0.2\n')
    (tmp_path / "state").mkdir()
    daemon = Daemon(base_config(tmp_path / "state", links=link), tmp_path).start()
    try:
        def sdk_link() -> dict:
            report = httpx.get(f"{daemon.health_url}/healthz", timeout=5).json()
            return next(entry for entry in report["links"] if entry["link_id"] == "sdk-1")

        wait_until(lambda: "cannot load" in sdk_link()["detail"], DEVICE_START_GRACE_S + 30,
                   "/healthz naming the missing library")
        state = sdk_link()
        assert str(library) in state["detail"] and state["state"] == "fallback", state
        assert daemon.process.poll() is None
        library.parent.mkdir()
        shutil.copy(libraries["good"], library)
        wait_until(lambda: "cannot load" not in sdk_link()["detail"] and sdk_link()["state"] != "fallback", 30,
                   "the link leaving fallback once the library is there")
        assert daemon.log.count("cannot load") <= 2             # one line for the episode (and its summary)
    finally:
        daemon.stop()
