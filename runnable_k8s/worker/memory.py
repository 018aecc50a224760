"""Garbage-collector tuning for the worker process.

LangChain allocates thousands of small container objects per run (configs, callback managers,
messages). With CPython's default young-generation threshold (700 allocations) a busy worker
spends a large share of its CPU in collections that each traverse the same long-lived import
graph again (LangChain, pydantic, Celery: about 100,000 objects). Measured in-process on the
benchmark's chain, 32 concurrent `abatch` chunks cost about 1.7x as much CPU per item with
the default GC as with the tuning below (`benchmarks/README.md`, "Garbage collection").

Two measures, both standard for long-running CPython services:
- `gc.freeze()` once start-up is over moves everything alive into a permanent generation
  that no later collection scans (nothing there is ever freed anyway);
- a higher young-generation threshold makes collections rarer; cyclic garbage still goes,
  only in larger batches.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("runnable_k8s.worker")


def tune(threshold: int) -> None:
    """Freeze what start-up created and set the young-generation threshold (0: Python's)."""
    gc.collect()
    gc.freeze()
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
    log.debug(
        "gc tuned: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
