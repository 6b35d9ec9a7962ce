"""The tunnel's state file (qkdd.consumers.wireguard) is read and written, fsync included, in worker threads,
never on the event loop; saves that overlap leave the file with the latest state (real files, a real key
store, /bin/true standing in for `wg`)."""
from __future__ import annotations

import os
import threading

import trio

from qkdd.config import WireGuardConfig
from qkdd.consumers.wg_epoch import Epoch
from qkdd.consumers.wg_tool import WgTool
from qkdd.consumers.wireguard import TunnelRotation, TunnelState
from qkdd.keystore import KeyStore
from qkdd.metrics import Metrics

PEER = "HTJCFVji7BIGv9iSV/M7VuLj7iiBuVTXa/LbKmfCKFA="
CONFIG = WireGuardConfig(name="t1", link_id="a-b", interface="wgtest0", peer_public_key=PEER, on_exhausted="clear")


async def open_tunnel(tmp_path) -> TunnelRotation:
    return await TunnelRotation.open(CONFIG, leader=False, store=KeyStore(str(tmp_path / "keys.db"), os.urandom(32)),
                                     wg=WgTool(CONFIG.interface, PEER, wg_command="/bin/true"),
                                     metrics=Metrics().tunnel(CONFIG.name, CONFIG.interface, PEER),
                                     state_dir=str(tmp_path), rotation_interval_s=60.0)


def on_event_loop_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def test_a_restarted_tunnel_reads_and_rewrites_its_state_off_the_event_loop(tmp_path, monkeypatch):
    """A tunnel whose file says the "clear" fallback ran re-applies it at start and saves its state again."""
    path = tmp_path / "wireguard-t1.json"
    before = TunnelState(Epoch(3, "0f4b8d1c-3f6e-4c1a-9a51-2b7e0c1d9e55", 1.7e9), 1.7e9, "clear")
    path.write_text(before.to_json())
    reads, fsyncs = [], []
    real_from_json, real_fsync = TunnelState.from_json.__func__, os.fsync
    monkeypatch.setattr(TunnelState, "from_json", classmethod(
        lambda cls, text: reads.append(on_event_loop_thread()) or real_from_json(cls, text)))
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(on_event_loop_thread()) or real_fsync(fd))

    async def main():
        tunnel = await open_tunnel(tmp_path)
        assert tunnel.state == before
        path.unlink()                                  # so that the file seen afterwards is the new write
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel.run)
            with trio.fail_after(10):
                while not path.exists():
                    await trio.sleep(0.01)             # the fallback runs /bin/true, then saves in a thread
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert reads == [False] and fsyncs == [False]
    assert TunnelState.from_json(path.read_text()) == before
    assert not (tmp_path / "wireguard-t1.json.tmp").exists()


def test_overlapping_saves_leave_the_latest_state_in_the_file(tmp_path):
    states = [TunnelState(Epoch(number, f"00000000-0000-4000-8000-{number:012d}", 1.7e9 + number), 1.7e9 + number)
              for number in range(1, 9)]

    async def main():
        tunnel = await open_tunnel(tmp_path)
        async with trio.open_nursery() as nursery:
            for state in states:                       # all start before the first write finishes
                nursery.start_soon(tunnel._save, state)
        return tunnel.state

    latest = trio.run(main)                            # the state of the save called last (trio picks the order)
    assert latest in states
    assert TunnelState.from_json((tmp_path / "wireguard-t1.json").read_text()) == latest
    assert not (tmp_path / "wireguard-t1.json.tmp").exists()
