"""Give freed heap memory back to the operating system at the end of a memory-heavy stage.

glibc's malloc keeps freed blocks below its (dynamic, up to 32 MB) mmap threshold in the heap for
reuse, and a fragmented heap does not shrink: measured on a 1B-parameter model with 16k-latent
SAEs, computing the concept associations left 1.06 GB of freed memory resident (2,078 MB anonymous
RSS; 1,017 MB after ``malloc_trim(0)``), which every later stage of the audit then carried on top of
the next model. ``malloc_trim`` returns those free pages; it does not move or free live memory,
so it is safe at any point, and it costs milliseconds. A no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys


@functools.cache
def _malloc_trim():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return None


def release_free_memory() -> None:
    """Collect garbage, then hand free heap pages back to the OS (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


__all__ = ["release_free_memory"]
