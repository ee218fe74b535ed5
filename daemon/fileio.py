"""File helpers for the spool: fsync, and byte ranges copied from file to file.

A file is durable once its data and its folder's entry are on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int | None = None) -> int:
    """Append ``length`` bytes of ``src`` from ``offset`` (None: up to its end) to ``dst``:
    in the kernel (``copy_file_range``) where it can, else through user space. Returns the
    bytes copied; EOFError when ``src`` ends first."""
    dst.flush()
    if length is None:
        length = max(0, os.fstat(src.fileno()).st_size - offset)
    kernel = hasattr(os, "copy_file_range")
    done = 0
    while done < length:
        n = 0
        if kernel:
            try:
                n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, offset + done)
            except OSError:  # another filesystem, or no kernel support: user space from here
                kernel = False
        if n == 0:
            src.seek(offset + done)
            chunk = src.read(min(length - done, 1 << 20))
            if not chunk:
                raise EOFError(f"the source ends {length - done} bytes short")
            dst.write(chunk)
            dst.flush()
            n = len(chunk)
        done += n
    return done
