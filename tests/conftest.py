"""Session services: a real Redis-protocol server on a free loopback port, and real workers."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.settings import Settings, SigningKey
from tests.support.models import TEST_CLASSES
from tests.support.postgres import INSTALL_HINT, PostgresServer, find_bindir, unavailable
from tests.support.workers import WorkerProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-e2e",
        action="store_true",
        default=False,
        help="run end-to-end tests against a real Kubernetes cluster with KEDA",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--with-e2e"):
        return
    skip = pytest.mark.skip(reason="needs a Kubernetes cluster with KEDA: pass --with-e2e")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """RUNNABLE_K8S_TEST_REDIS_URL if set (read via pytest's own env access), else an embedded
    server this session starts and stops."""
    import os

    external = os.environ.get("RUNNABLE_K8S_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis()
    url = server.start()
    try:
        yield url
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_settings(redis_url: str, **changes: object) -> Settings:
    base = Settings(
        signing_key=SigningKey(secrets.token_urlsafe(48).encode()),
        redis_url=redis_url,
        queue=f"test-{uuid.uuid4().hex[:8]}",
        allowed_classes=tuple(TEST_CLASSES.split(",")),
        wait_timeout=60.0,
        allowed_refs=("tests.support.refs:",),
        retry_on=("tests.support.models:TransientError",),
        retry_backoff=0.05,
        max_attempts=3,
    )
    return base.replace(**changes)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    """Settings shared by the session worker and the tests that call it."""
    return make_settings(redis_url)


@pytest.fixture(scope="session")
def worker(settings: Settings, logs_dir: Path) -> Iterator[WorkerProcess]:
    """One real worker process for the session's integration tests."""
    process = WorkerProcess(settings, logs_dir, concurrency=32, name="session")
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server this session starts and stops (initdb and pg_ctl into a temporary
    folder, on a free loopback port). Skipped, with the reason, where the server binaries are
    missing; under CI=true that fails instead (.ci/run installs them)."""
    bindir = find_bindir()
    if bindir is None:
        unavailable(f"initdb and pg_ctl not found; {INSTALL_HINT}")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()
