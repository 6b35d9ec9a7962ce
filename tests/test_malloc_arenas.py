"""The daemon bounds glibc's malloc arenas (qkdd/malloc_arenas.py): eight threads that allocate at once get
at most two arenas with the bound and more without it, counted by glibc's own malloc_stats() in a real
process."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the bound is glibc's mallopt")

SCRIPT = """
import ctypes, sys, threading
from qkdd.malloc_arenas import limit_malloc_arenas
if sys.argv[1] == "bounded":
    assert limit_malloc_arenas()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
together = threading.Barrier(8)
def work():
    together.wait()                       # all eight allocate at the same time
    blocks = [libc.malloc(4096) for _ in range(64)]
    together.wait()                       # and hold their blocks until all have allocated
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()                       # one "Arena N:" paragraph per arena, on stderr
"""


def arenas(mode: str, **extra_env: str) -> int:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"} | extra_env
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env,
                            timeout=60, check=True)
    return sum(line.startswith("Arena ") for line in result.stderr.splitlines())


def test_eight_allocating_threads_share_at_most_two_arenas():
    assert arenas("bounded") <= 2
    assert arenas("default") > 2             # what the daemon would do without the bound


def test_an_operators_malloc_arena_max_wins(monkeypatch):
    from qkdd.malloc_arenas import limit_malloc_arenas
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
