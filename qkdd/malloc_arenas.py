"""A bound on the C allocator's per-thread arenas, set once at start-up before the daemon's threads exist.

glibc gives each thread that allocates while another holds the main arena an arena of its own, up to 8 per
core (mallopt(3), M_ARENA_MAX). The daemon's worker threads (trio.to_thread: SQLite, the C post-processing,
numpy) each touch a few MB per frame, and memory freed in an arena stays with that arena, so over hours the
resident size grew with every arena's high-water mark while Python's own heap stayed flat (bench/soak.py:
42-62 MB/h over 70 min with the default, flat with two arenas). Two arenas keep the worker threads off the
main thread's arena without that growth. MALLOC_ARENA_MAX in the environment, if set, wins.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("qkdd.daemon")

M_ARENA_MAX = -8            # glibc malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Ask glibc for at most `arenas` malloc arenas; False where the C library is not glibc or the
    environment already chose (MALLOC_ARENA_MAX)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(M_ARENA_MAX, arenas) == 1
    if not done:
        log.info("the C library refused a bound on its malloc arenas (mallopt M_ARENA_MAX)")
    return done
