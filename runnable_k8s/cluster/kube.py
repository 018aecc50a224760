"""The narrow seam to the Kubernetes API: apply, get, and one-line error messages.

`KubeApi` is the boundary the deploy and status code talk to; `DynamicKubeApi` implements
it with the `kubernetes` client's dynamic client (server-side apply, field manager
`runnable-k8s`). Tests pass their own `KubeApi`, or point the real one at a closed port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from runnable_k8s.errors import ConfigurationError, RunnableK8sError

FIELD_MANAGER = "runnable-k8s"
_REQUEST_TIMEOUT = 30.0


class KubeApi(Protocol):
    """What deploy and status need from a cluster."""

    def knows(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. False for ScaledObject without KEDA)."""
        ...

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        ...

    def apply(self, obj: Mapping[str, Any], *, namespace: str, dry_run: bool) -> dict[str, Any]:
        """Server-side apply `obj` in `namespace`; return what the server answered."""
        ...


class DynamicKubeApi:
    """`KubeApi` over `kubernetes.dynamic.DynamicClient`. Errors come out translated."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes.dynamic

        # The client's functions are unannotated; keep them behind Any.
        dynamic: Any = kubernetes.dynamic
        self.host = str(api_client.configuration.host)
        with translate_errors(self.host):
            self._client = dynamic.DynamicClient(api_client)

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._client.resources.get(api_version=api_version, kind=kind)

    def knows(self, api_version: str, kind: str) -> bool:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        with translate_errors(self.host):
            try:
                self._resource(api_version, kind)
            except ResourceNotFoundError:
                return False
        return True

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        with translate_errors(self.host, f"{kind} {namespace}/{name}"):
            try:
                found = self._resource(api_version, kind).get(
                    name=name, namespace=namespace, _request_timeout=_REQUEST_TIMEOUT
                )
            except NotFoundError:
                return None
        return dict(found.to_dict())

    def apply(self, obj: Mapping[str, Any], *, namespace: str, dry_run: bool) -> dict[str, Any]:
        what = f"{obj['kind']} {namespace}/{obj['metadata']['name']}"
        with translate_errors(self.host, what):
            answer = self._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
                body=dict(obj),
                namespace=namespace,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                dry_run="All" if dry_run else None,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        return dict(answer.to_dict())


def connect(
    *, context: str | None = None, kubeconfig: str | None = None
) -> tuple[DynamicKubeApi, str]:
    """A `KubeApi` for the kubeconfig context (or the in-cluster service account).

    Returns:
        The API and the context's default namespace (`default` when it names none).

    Raises:
        ConfigurationError: no usable kubeconfig or in-cluster configuration.
        RunnableK8sError: the API server cannot be reached.
    """
    import kubernetes.client
    import kubernetes.config
    from kubernetes.config.config_exception import ConfigException

    client: Any = kubernetes.client
    config: Any = kubernetes.config

    namespace = "default"
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = active
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c["name"] == context), active)
        namespace = chosen.get("context", {}).get("namespace") or namespace
    except (ConfigException, OSError) as exc:
        if kubeconfig or context:
            raise ConfigurationError(f"cannot use the kubeconfig: {_first_line(exc)}") from exc
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as inner:
            raise ConfigurationError(
                "no Kubernetes configuration: set KUBECONFIG or create ~/.kube/config "
                "(e.g. `kind create cluster`), or pass --kubeconfig"
            ) from inner
    # Fail fast on a dead endpoint instead of retrying three times.
    configuration.retries = 0
    return DynamicKubeApi(client.ApiClient(configuration)), namespace


@contextmanager
def translate_errors(host: str, what: str | None = None) -> Iterator[None]:
    """Turn client and transport errors into a one-line `RunnableK8sError`."""
    import urllib3
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        yield
    except ApiException as exc:
        raise RunnableK8sError(describe_api_error(exc, what)) from exc
    except ResourceNotFoundError as exc:
        raise RunnableK8sError(
            f"the cluster does not serve this kind ({_first_line(exc)}); for ScaledObject and "
            "TriggerAuthentication, install KEDA first"
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        text = _first_line(reason)
        if "refused" in text.lower():
            text = "connection refused"
        raise RunnableK8sError(f"cannot reach the Kubernetes API at {host}: {text}") from exc


def describe_api_error(exc: Any, what: str | None = None) -> str:
    """A one-line message for an `ApiException` (or a dynamic client error)."""
    status = getattr(exc, "status", None)
    message = _server_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", ""))
    subject = f" ({what})" if what else ""
    if status == 401:
        return f"unauthorized (401){subject}: the credentials were rejected; log in again"
    if status == 403:
        return f"forbidden (403){subject}: {message}"
    if status == 404:
        return f"not found (404){subject}: {message}"
    if status == 409:
        return f"conflict (409){subject}: {message}"
    if status == 422:
        return f"rejected as invalid (422){subject}: {message}"
    return f"Kubernetes API error {status}{subject}: {message}"


def _server_message(body: Any) -> str:
    if not body:
        return ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return _first_line(body)
    if isinstance(parsed, dict) and parsed.get("message"):
        return _first_line(parsed["message"])
    return _first_line(body)


def _first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0] if lines else type(value).__name__
