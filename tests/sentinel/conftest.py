"""The Sentinel tier: a private master, replica and three sentinels per test (tests kill
nodes), and worker processes that are stopped afterwards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sentinel import SentinelGroup
from tests.support.workers import WorkerProcess


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """Skipped, with the reason, where no server binary runs in sentinel mode; under CI=true
    that fails instead (the embedded Valkey does, and .ci/run installs it)."""
    group = SentinelGroup()
    try:
        group.start()
    except (RuntimeError, OSError) as exc:
        group.close()
        message = f"Sentinel tests need a server that runs with --sentinel: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def workers(logs_dir: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        with contextlib.suppress(Exception):
            worker.kill()
