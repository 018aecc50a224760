"""End to end on a real cluster with KEDA (kind works). Skipped unless `--with-e2e`.

Needs: a current kubeconfig context, KEDA installed, and the worker image available to the
cluster (default `runnable-k8s:dev`, e.g. `kind load docker-image runnable-k8s:dev`; another
reference with RUNNABLE_K8S_E2E_IMAGE). Set RUNNABLE_K8S_E2E_SCALE_TO_ZERO=1 to also wait
for the scale-down to zero (cooldownPeriod, about six minutes). See the README, "Deploy to
Kubernetes".
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from k8s_helpers import free_port

from runnable_k8s.cluster.cli import cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

DEV_PASSWORD = "dev-password-not-a-secret"


def _kubectl(kubectl: str, *args: str) -> str:
    done = subprocess.run([kubectl, *args], capture_output=True, text=True, check=True)
    return done.stdout


def _get(kubectl: str, namespace: str, what: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        _kubectl(kubectl, "-n", namespace, "get", what, "-o", "json")
    )
    return result


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(5)


@pytest.fixture
def namespace(kubectl: str) -> Iterator[str]:
    name = f"rk8s-e2e-{uuid.uuid4().hex[:8]}"
    _kubectl(kubectl, "create", "namespace", name)
    _kubectl(
        kubectl,
        "-n",
        name,
        "create",
        "secret",
        "generic",
        "runnable-k8s-signing-key",
        f"--from-literal=signing-key={secrets.token_urlsafe(48)}",
    )
    _kubectl(
        kubectl,
        "-n",
        name,
        "create",
        "secret",
        "generic",
        "runnable-k8s-model-keys",
        "--from-literal=OPENAI_API_KEY=sk-e2e-not-used",
    )
    try:
        yield name
    finally:
        _kubectl(kubectl, "delete", "namespace", name, "--wait=false")


def test_dev_overlay_scales_on_in_flight_runs(kubectl: str, namespace: str) -> None:
    image = os.environ.get("RUNNABLE_K8S_E2E_IMAGE", "runnable-k8s:dev")
    result = CliRunner().invoke(
        cluster, ["deploy", "--overlay", "dev", "--namespace", namespace, "--image", image]
    )
    assert result.exit_code == 0, result.output

    def scaler_ready() -> bool:
        status = _get(kubectl, namespace, "scaledobject/runnable-k8s-worker").get("status", {})
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )

    _wait(scaler_ready, 180, "the ScaledObject to be Ready")
    _kubectl(kubectl, "-n", namespace, "rollout", "status", "deployment/redis", "--timeout=180s")

    port = free_port()
    forward = subprocess.Popen(
        [kubectl, "-n", namespace, "port-forward", "svc/redis", f"{port}:6379"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://:{DEV_PASSWORD}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        _wait(lambda: _pings(client), 30, "the port-forward")
        # What KEDA sees while a run executes: an entry in kombu's `unacked` hash, nothing
        # in the queue list. The workers must scale up (and stay up) on it alone.
        client.hset("unacked", "e2e-fake-delivery", "{}")

        def workers_ready() -> bool:
            deployment = _get(kubectl, namespace, "deployment/runnable-k8s-worker")
            return int(deployment.get("status", {}).get("readyReplicas") or 0) >= 1

        _wait(workers_ready, 300, "a ready worker (scale 0 -> 1, probes passing)")
        status = CliRunner().invoke(
            cluster, ["status", "--namespace", namespace, "--redis-url", url]
        )
        assert status.exit_code == 0, status.output
        assert "0 queued, 1 in flight" in status.output

        client.hdel("unacked", "e2e-fake-delivery")
        if os.environ.get("RUNNABLE_K8S_E2E_SCALE_TO_ZERO") == "1":

            def scaled_to_zero() -> bool:
                deployment = _get(kubectl, namespace, "deployment/runnable-k8s-worker")
                return int(deployment["spec"].get("replicas") or 0) == 0

            _wait(scaled_to_zero, 900, "the scale-down to zero")
        client.close()
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
