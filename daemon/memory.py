"""The C allocator's settings for a process that handles one large buffer after another.

Each object brings buffers of its pixel data's size (the value read, the ciphertext, the
encoded file): half a megabyte for a CT slice. glibc's malloc gives buffers above its mmap
threshold fresh pages from the kernel and returns the heap's free top to the kernel once
it exceeds the trim threshold, so every object pays page faults and zeroing for memory the
previous object just freed: about 0.3 ms of the 1.8 ms that encrypting a 512x512 slice
takes (``tests/benchmarks/crypto.py``). Fixed, larger thresholds keep freed buffers for the
next object; the memory kept is bounded by the thresholds and by the largest working set
the process had.

One arena serves all threads (``M_ARENA_MAX`` 1; the GIL serializes them anyway): the
threads' own arenas would keep and return memory by their own rules. Set
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment (systemd
``Environment=``) to choose other values; this module then leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: buffers up to this size come from the heap (larger ones: their own mapping, as before)
MMAP_THRESHOLD = 32 << 20
#: free memory the heap keeps before returning its top to the kernel
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_done = False


def tune_allocator() -> bool:
    """Set the thresholds once per process (glibc only); True when they were set."""
    global _done
    if _done:
        return True
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False  # the administrator chose
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): its own behaviour
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    # one arena for every thread: the GIL serializes them anyway, and the main arena is the
    # one whose kept memory the thresholds above govern (threads' own arenas trim apart)
    mallopt(_M_ARENA_MAX, 1)
    return _done
