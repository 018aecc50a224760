"""`cluster deploy` without a cluster: the exact objects applied, and API errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from k8s_helpers import FakeKube, free_port
from kubernetes.client.exceptions import ApiException

from runnable_k8s.cluster import kube
from runnable_k8s.cluster.cli import cluster
from runnable_k8s.cluster.deploy import deploy, plan
from runnable_k8s.cluster.kube import connect, describe_api_error
from runnable_k8s.errors import ConfigurationError, RunnableK8sError

Objects = list[dict[str, Any]]
SECRETS = ("runnable-k8s-signing-key", "runnable-k8s-model-keys", "runnable-k8s-redis")


def _with_secrets(namespace: str) -> FakeKube:
    return FakeKube({("Secret", namespace, name): {"kind": "Secret"} for name in SECRETS})


def test_deploy_applies_exactly_the_plan_in_dependency_order(dev: Objects) -> None:
    api = _with_secrets("agents")
    applied = deploy(api, dev, namespace="agents")
    sent = [obj for obj, _, _ in api.applied]
    assert sent == plan(dev, "agents")
    assert {ns for _, ns, _ in api.applied} == {"agents"}
    assert all(obj["metadata"]["namespace"] == "agents" for obj in sent)
    kinds = [obj["kind"] for obj in sent]
    assert kinds[0] == "ServiceAccount"
    assert kinds.index("ConfigMap") < kinds.index("Deployment") < kinds.index("ScaledObject")
    assert kinds.index("TriggerAuthentication") < kinds.index("ScaledObject")
    assert kinds[-1] == "ScaledObject"
    assert [(a.kind, a.name) for a in applied] == [(o["kind"], o["metadata"]["name"]) for o in sent]
    # The rendered objects themselves are untouched.
    assert all("namespace" not in o["metadata"] for o in dev)


def test_dry_run_is_passed_to_the_server(dev: Objects) -> None:
    api = _with_secrets("default")
    deploy(api, dev, namespace="default", dry_run=True)
    assert {dry for _, _, dry in api.applied} == {True}


def test_without_keda_nothing_is_applied(dev: Objects) -> None:
    api = FakeKube(missing_kinds=frozenset({"ScaledObject", "TriggerAuthentication"}))
    with pytest.raises(
        ConfigurationError, match=r"ScaledObject \(keda.sh/v1alpha1\).*install KEDA"
    ):
        deploy(api, dev, namespace="default")
    assert api.applied == []


def test_missing_secrets_stop_the_deploy(dev: Objects) -> None:
    api = FakeKube()
    with pytest.raises(ConfigurationError) as caught:
        deploy(api, dev, namespace="agents")
    message = str(caught.value)
    # dev generates the Redis password; the other two must be created by hand.
    assert "runnable-k8s-signing-key, runnable-k8s-model-keys" in message
    assert "runnable-k8s-redis" not in message
    assert api.applied == []


def test_an_api_error_midway_says_how_far_it_got(dev: Objects) -> None:
    api = _with_secrets("default")
    api.fail_on = "Deployment"
    with pytest.raises(RunnableK8sError, match=r"forbidden \(403\).* after applying \d+ object"):
        deploy(api, dev, namespace="default")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (403, 'forbidden (403) (Deployment ns/w): deployments.apps "w" is forbidden: no'),
        (404, 'not found (404) (Deployment ns/w): deployments.apps "w" is forbidden: no'),
        (401, "unauthorized (401) (Deployment ns/w): the credentials were rejected"),
        (500, "Kubernetes API error 500 (Deployment ns/w): "),
    ],
)
def test_api_errors_become_one_line(status: int, expected: str) -> None:
    exc = ApiException(status=status, reason="Whatever")
    exc.body = json.dumps(
        {"kind": "Status", "message": 'deployments.apps "w" is forbidden: no\nmore'}
    )
    message = describe_api_error(exc, "Deployment ns/w")
    assert message.startswith(expected)
    assert "\n" not in message


def _kubeconfig(tmp_path: Path, server: str, namespace: str = "agents") -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {
                        "name": "ctx",
                        "context": {"cluster": "c", "user": "u", "namespace": namespace},
                    }
                ],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_a_closed_port_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    config = _kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(RunnableK8sError) as caught:
        connect(kubeconfig=str(config))
    assert str(caught.value) == (
        f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused"
    )


def test_cli_deploy_against_a_closed_port_exits_1(tmp_path: Path) -> None:
    port = free_port()
    config = _kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    result = CliRunner().invoke(cluster, ["deploy", "--kubeconfig", str(config)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused"
    ]


def test_cli_deploy_without_any_kubeconfig_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(cluster, ["deploy"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no Kubernetes configuration: set KUBECONFIG")
    result = CliRunner().invoke(cluster, ["deploy", "--kubeconfig", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot use the kubeconfig")


class _Forbidding(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": 'forbidden: User "system:anonymous" cannot get path "/api"',
                "reason": "Forbidden",
                "code": 403,
            }
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def forbidding_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forbidding)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_forbidding_server_is_one_clear_line(tmp_path: Path, forbidding_server: str) -> None:
    config = _kubeconfig(tmp_path, forbidding_server)
    result = CliRunner().invoke(cluster, ["deploy", "--kubeconfig", str(config)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        'Error: forbidden (403): forbidden: User "system:anonymous" cannot get path "/api"'
    )


def test_connect_reads_the_contexts_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    class Recording:
        def __init__(self, api_client: Any) -> None:
            seen["host"] = api_client.configuration.host

    monkeypatch.setattr(kube, "DynamicKubeApi", Recording)
    _, namespace = connect(kubeconfig=str(_kubeconfig(tmp_path, "https://10.0.0.1:6443", "ml")))
    assert namespace == "ml"
    assert seen["host"] == "https://10.0.0.1:6443"


def test_cli_deploy_with_an_injected_api(dev: Objects, monkeypatch: pytest.MonkeyPatch) -> None:
    api = _with_secrets("ml")
    monkeypatch.setattr(kube, "connect", lambda **_: (api, "ml"))
    result = CliRunner().invoke(cluster, ["deploy", "--dry-run", "--image", "reg/rk8s:9"])
    assert result.exit_code == 0, result.output
    assert "scaledobject/runnable-k8s-worker applied in ml (server dry run)" in result.output
    worker = next(
        o
        for o, _, _ in api.applied
        if o["metadata"]["name"] == "runnable-k8s-worker" and o["kind"] == "Deployment"
    )
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/rk8s:9"
