"""Reliability tests: real Redis-protocol servers, real worker processes, failures on purpose.

Each test gets its own server: kombu's `unacked` hash is per database, and these tests read it
(and kill or restart the server), so sharing the session server would mix their counts.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from runnable_k8s.embedded import EmbeddedRedis, free_port, server_binary
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.store import keys
from tests.support.workers import WorkerProcess


class DurableRedis:
    """A server with an fsync-always append-only file on a fixed port, so SIGKILL and a start
    on the same port keep every acknowledged write (as a Redis with AOF would)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rk8s-durable-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.process = subprocess.Popen(
            [
                server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", self._dir.name,
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--maxmemory-policy", "noeviction",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return self.url
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("durable server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        self._dir.cleanup()


@pytest.fixture
def own_redis_url() -> Iterator[str]:
    """A fresh server for one test."""
    server = EmbeddedRedis()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def own_redis(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


@pytest.fixture
def durable_redis() -> Iterator[DurableRedis]:
    server = DurableRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def workers(logs_dir: Path) -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; all are stopped (or killed) afterwards."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        with contextlib.suppress(Exception):
            worker.kill()


def started_count(logs: list[str], run_id: str) -> int:
    """How many times workers began executing `run_id` (their `started run=` log lines)."""
    return sum(log.count(f"started run={run_id} ") for log in logs)


def outcomes(client: redis.Redis, run_id: str) -> int:
    """Outcome entries in the run's event stream (a caller would read the first)."""
    return sum(1 for _, fields in client.xrange(keys.events(run_id)) if fields.get(b"k") == b"r")


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.1) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")


def result_of(run: RemoteRun, timeout: float) -> Any:
    """`run.result()` (one place to change how the suite waits)."""
    return run.result(timeout=timeout)


def read_across_outage(durable_redis: DurableRedis, read: Callable[[], Iterable[Any]]) -> list[Any]:
    """Run `read` on a thread while Redis is killed for 2 s and started again; return what it
    read. Fails if it raised or had not finished 90 s after the restart."""
    got: list[Any] = []
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            got.extend(read())
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(0.3)
    durable_redis.kill()
    time.sleep(2.0)
    durable_redis.start()
    reader.join(90)
    assert not reader.is_alive()
    assert not failure, f"the reader failed across the outage: {failure[0]!r}"
    return got
