"""Reading the small key files qkdd is given (the key-encryption key, peer identities): regular files only
and bounded in size, so a FIFO, device or huge file named by mistake neither blocks start-up nor is read
without end. Callers check the mode and word the errors for their file."""
from __future__ import annotations

import os
import stat


class KeyFileError(ValueError):
    """The path names something other than a regular file of bounded size. The message is a predicate
    ("is not a regular file", "has 9000 bytes, ...") to follow the caller's name for the file."""


def read_key_file(path: str | os.PathLike, max_bytes: int, *, follow_symlinks: bool = True) -> tuple[bytes, int]:
    """The file's bytes and its st_mode. OSError when it cannot be opened or read; KeyFileError when it
    is not a regular file or has more than `max_bytes` bytes."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK      # O_NONBLOCK: opening a FIFO must not wait
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError("is not a regular file")
        if info.st_size > max_bytes:
            raise KeyFileError(f"has {info.st_size} bytes, more than the {max_bytes} a key file may have")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:                  # grew since fstat
        raise KeyFileError(f"has more than the {max_bytes} bytes a key file may have")
    return data, info.st_mode
