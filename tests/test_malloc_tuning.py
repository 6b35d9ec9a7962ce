"""The daemon's bounds on glibc's allocator (qkdd/malloc_tuning.py), each measured by glibc itself in a
real process: eight threads that allocate at once get at most two arenas (malloc_stats), and a 1 MiB block
allocated after an 8 MiB one was freed is still mmapped (mallinfo2), where by default it is not."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the bounds are glibc's mallopt")

PRELUDE = """
import ctypes, sys, threading
from qkdd.malloc_tuning import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc() == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
"""

ARENAS = PRELUDE + """
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

MMAPPED = PRELUDE + """
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.free(libc.malloc(8 << 20))           # by default this raises the mmap threshold to 8 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)    # 1: the block is its own mapping, returned when freed
libc.free(block)
"""


def run(script: str, mode: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                          timeout=60, check=True)


def arenas(mode: str) -> int:
    return sum(line.startswith("Arena ") for line in run(ARENAS, mode).stderr.splitlines())


def test_eight_allocating_threads_share_at_most_two_arenas():
    assert arenas("tuned") <= 2
    assert arenas("default") > 2             # what the daemon would do without the bound


def test_a_large_block_stays_mmapped_after_a_larger_one_was_freed():
    assert run(MMAPPED, "tuned").stdout.split() == ["1"]
    assert run(MMAPPED, "default").stdout.split() == ["0"]


def test_an_operators_environment_wins(monkeypatch):
    from qkdd.malloc_tuning import tune_malloc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_malloc() == []
