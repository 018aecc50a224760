"""Memory-management tuning for the worker process: the garbage collector and glibc's malloc.

Garbage collector. LangChain allocates thousands of small container objects per run (configs,
callback managers, messages). With CPython's default young-generation threshold (700
allocations) a busy worker spends a large share of its CPU in collections that each traverse
the same long-lived import graph again (LangChain, pydantic, Celery: about 100,000 objects).
`gc.freeze()` once start-up is over moves everything alive into a permanent generation that
no later collection scans, and a higher threshold makes collections rarer (cyclic garbage
still goes, in larger batches).

malloc. A large payload is copied a few times on its way through a worker (socket buffers,
parsing, signing), each copy a fresh allocation. glibc serves allocations above its mmap
threshold with `mmap` and gives freed heap tops back to the OS above its trim threshold, so
every megabyte-sized run faulted its pages in again: measured on 2 vCPUs, a fresh megabyte
costs about 0.75 ms in page faults against 0.05 ms to copy into memory already mapped. Keeping
up to `malloc_keep` bytes of freed heap mapped makes those copies cheap. It bounds what RSS
keeps after a burst, it does not raise the peak.

Measured effects are in the README, "Performance".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("runnable_k8s.worker")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Arenas: the event loop's thread and the pool threads that read large bodies share two, so
# memory one of them freed is reused by the others instead of kept apart in per-thread arenas
# (glibc allows 8 per core), each holding up to `keep` of its own.
_ARENAS = 2
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def tune_gc(threshold: int) -> None:
    """Freeze what start-up created and set the young-generation threshold (0: Python's)."""
    gc.collect()
    gc.freeze()
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
    log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())


def tune_malloc(keep: int) -> bool:
    """Keep up to `keep` bytes of freed heap mapped (glibc only; 0 leaves glibc's defaults).
    Returns whether glibc accepted the settings."""
    if keep <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        log.debug("malloc: no mallopt in %s, left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Allocations below the mmap threshold come from the heap, whose freed top stays mapped
    # up to the trim threshold. Setting either also stops glibc's own dynamic adjustment.
    mmap_threshold = min(max(keep // 2, 128 * 1024), _MAX_MMAP_THRESHOLD)
    accepted = all(
        mallopt(parameter, value)
        for parameter, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, min(keep, 2**31 - 1)),
            (_M_ARENA_MAX, _ARENAS),
        )
    )
    log.debug(
        "malloc: mmap threshold %d, trim threshold %d, accepted %s", mmap_threshold, keep, accepted
    )
    return accepted
