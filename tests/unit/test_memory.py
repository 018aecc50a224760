"""The worker's memory tuning, applied to this (test) process and undone after."""

from __future__ import annotations

import gc
import platform
from collections.abc import Iterator

import pytest

from runnable_k8s.worker import memory


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_freezes_and_sets_the_young_threshold(restore_gc: None) -> None:
    memory.tune_gc(12_345)
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 1_000  # pytest and its plugins alone leave that many


def test_tune_gc_zero_keeps_the_threshold(restore_gc: None) -> None:
    before = gc.get_threshold()
    memory.tune_gc(0)
    assert gc.get_threshold() == before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_is_accepted_by_glibc() -> None:
    assert memory.tune_malloc(64 * 1024 * 1024) is True


def test_tune_malloc_zero_changes_nothing() -> None:
    assert memory.tune_malloc(0) is False
