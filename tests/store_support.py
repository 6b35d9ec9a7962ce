"""A small tmpfs for key-store tests that need a really full disk (root only; skipped otherwise), and a
filler file that takes every free byte of it."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

CHUNK_BYTES = 64 * 1024


@contextlib.contextmanager
def small_tmpfs(parent: Path, size_bytes: int):
    """A tmpfs of `size_bytes` mounted under `parent` for the block; pytest.skip when this process may not
    mount one (not root, or no mount capability in this container)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount_point = parent / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def fill_disk(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file in `directory` until the file system refuses (ENOSPC), less `leave_bytes`."""
    path = directory / "filler"
    chunk = os.urandom(CHUNK_BYTES)
    with open(path, "wb", buffering=0) as handle:      # unbuffered: nothing left to flush at close
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    if leave_bytes:
        os.truncate(path, max(0, os.path.getsize(path) - leave_bytes))
    return path


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize
