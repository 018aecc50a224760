"""The image tier: `docker/Dockerfile` built with buildah, the worker run with podman as the
Deployment runs it. Skipped (with the reason) where the tools are missing, except in CI."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from runnable_k8s.embedded import free_port
from runnable_k8s.settings import Settings, SigningKey
from tests.image.containers import (
    BuiltImage,
    Container,
    Storage,
    build_image,
    missing_tools,
    private_storage,
    run_worker,
)
from tests.image.pod import pod_env

# Seconds measured in this session, printed at the end (build and start-to-ready times).
MEASURED: dict[str, float] = {}

StartWorker = Callable[..., tuple[Container, Settings]]


def _unavailable() -> str | None:
    missing = missing_tools()
    if missing:
        return (
            f"the image tier needs {', '.join(missing)} on PATH (Debian: apt-get install "
            "buildah podman runc debootstrap uidmap slirp4netns; .ci/run does it)"
        )
    if os.geteuid() != 0:
        return "the image tier runs buildah and podman as root (private storage, runc)"
    return None


@pytest.fixture(scope="session")
def image_storage() -> Iterator[Storage]:
    reason = _unavailable()
    if reason is not None:
        # CI installs the tools (.ci/run): there a missing tool is a failure, never a skip.
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI must run the image tier: {reason}")
        pytest.skip(reason)
    with private_storage() as storage:
        yield storage


@pytest.fixture(scope="session")
def worker_image(image_storage: Storage) -> BuiltImage:
    built = build_image(image_storage, f"localhost/runnable-k8s:test-{uuid.uuid4().hex[:8]}")
    MEASURED["stand-in base (debootstrap; 0 = cached)"] = built.base_seconds
    MEASURED["stand-in base import"] = built.import_seconds
    MEASURED["image build (buildah bud)"] = built.build_seconds
    return built


def pod_secrets(signing_key: str, redis_url: str) -> dict[str, dict[str, str]]:
    """The three Secrets the Deployment reads: the broker password is `redis_url`'s (the
    Deployment composes the URL from it again); a model key nobody uses here."""
    return {
        "runnable-k8s-signing-key": {"signing-key": signing_key},
        "runnable-k8s-redis": {"password": unquote(urlsplit(redis_url).password or "")},
        "runnable-k8s-model-keys": {"OPENAI_API_KEY": "sk-unused-" + secrets.token_hex(8)},
    }


@pytest.fixture
def start_worker(
    worker_image: BuiltImage, image_storage: Storage, tmp_path: Path
) -> Iterator[StartWorker]:
    """Start a worker container on a Redis; returns it and the producer's matching Settings.

    Each container gets its own queue and metrics port: the session's Redis and the host's
    network are shared with other tests."""
    started: list[Container] = []

    def start(redis_url: str) -> tuple[Container, Settings]:
        key = secrets.token_urlsafe(48)
        queue = f"image-{uuid.uuid4().hex[:8]}"
        env = pod_env(redis_url, pod_secrets(key, redis_url))
        env.update(RUNNABLE_K8S_QUEUE=queue, RUNNABLE_K8S_METRICS_PORT=str(free_port()))
        name = f"worker-{uuid.uuid4().hex[:8]}"
        container = run_worker(image_storage, worker_image.tag, env, name, tmp_path)
        started.append(container)
        settings = Settings(
            signing_key=SigningKey(key.encode()),
            redis_url=env["RUNNABLE_K8S_REDIS_URL"],
            queue=queue,
            wait_timeout=60.0,
        )
        return container, settings

    yield start
    for container in started:
        container.remove()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.write_sep("-", "image tier: measured seconds")
        for what, seconds in MEASURED.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f}")
