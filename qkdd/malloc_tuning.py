"""Bounds on the C allocator, set once at start-up before the daemon's worker threads exist.

glibc gives each thread that allocates while another holds the main arena an arena of its own, up to 8 per
core (mallopt(3), M_ARENA_MAX). The daemon's worker threads (trio.to_thread: SQLite, the C post-processing,
numpy) each touch a few MB per frame, and memory freed in an arena stays with that arena, so over hours the
resident size grew with every arena's high-water mark while Python's own heap stayed flat (bench/soak.py:
42-62 MB/h over 70 min with the default). Two arenas keep the worker threads off the main thread's arena.

glibc also raises its mmap threshold to the size of each large block freed (M_MMAP_THRESHOLD, dynamic
from 128 KiB up to 32 MiB): after the first frame, a frame's multi-MB numpy arrays come from the heap
instead of mmap, and a heap fragmented by smaller blocks cannot give them back. A fixed threshold keeps
blocks of MMAP_THRESHOLD_BYTES and more in mmap, returned to the system when freed.

MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ in the environment, if set, win.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("qkdd.daemon")

M_MMAP_THRESHOLD = -3       # glibc malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD_BYTES = 256 * 1024


def tune_malloc(arenas: int = ARENAS, mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> list[str]:
    """Ask glibc for at most `arenas` arenas and a fixed mmap threshold; the settings it took (none where
    the C library is not glibc or the environment already chose)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc (musl has no mallopt)
        return []
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    taken = []
    for name, option, value in (("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
                                ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold_bytes)):
        if name in os.environ:
            continue
        if mallopt(option, value) == 1:
            taken.append(name)
        else:
            log.info("the C library refused %s=%d (mallopt)", name, value)
    return taken
