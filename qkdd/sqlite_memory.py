"""SQLite's own heap use in this process (page caches, schema, statements), read from the SQLite library Python
already loaded, so that /metrics can tell the store's page cache apart from the rest of the daemon's memory.
"""
from __future__ import annotations

import ctypes
import os

# sqlite.org/c3ref/c_status_malloc_count.html: bytes currently handed out by SQLite's allocator (and the
# most ever), counted while SQLITE_CONFIG_MEMSTATUS is on, its default.
SQLITE_STATUS_MEMORY_USED = 0
_SQLITE_OK = 0


def _status64():
    """sqlite3_status64 (SQLite >= 3.10) of the library the sqlite3 module uses, or None. The handle of the
    already loaded _sqlite3 extension (RTLD_NOLOAD: nothing new is loaded) finds the symbol in the extension
    itself (SQLite linked in) or in the libsqlite3 it links dynamically: the same copy the key store runs on."""
    try:
        import _sqlite3
        library = ctypes.CDLL(_sqlite3.__file__, mode=os.RTLD_NOLOAD)
        function = library.sqlite3_status64
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_STATUS64 = _status64()


def available() -> bool:
    """Whether sqlite_memory_bytes() can answer here."""
    return _STATUS64 is not None


def sqlite_memory_bytes() -> tuple[int, int] | None:
    """(bytes SQLite holds now, the most it held since start) over every connection of this process, or None
    if the library gives no sqlite3_status64."""
    if _STATUS64 is None:
        return None
    current, highwater = ctypes.c_int64(), ctypes.c_int64()
    if _STATUS64(SQLITE_STATUS_MEMORY_USED, ctypes.byref(current), ctypes.byref(highwater), 0) != _SQLITE_OK:
        return None
    return current.value, highwater.value
