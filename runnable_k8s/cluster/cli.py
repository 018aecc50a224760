"""`runnable-k8s cluster ...`: render, deploy and inspect the workers on Kubernetes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from runnable_k8s.errors import ConfigurationError, RunnableK8sError
from runnable_k8s.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Library errors become `Error: <message>` and exit code 1, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RunnableK8sError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _render_options(func: F) -> F:
    options = [
        click.option(
            "--overlay", default="dev", show_default=True, help="Overlay under k8s/overlays."
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a value of k8s/base/config.env (repeatable), e.g. "
            "RUNNABLE_K8S_QUEUE=reports.",
        ),
        click.option(
            "--component",
            "extra_components",
            multiple=True,
            metavar="NAME",
            help="Add an optional component (repeatable), e.g. servicemonitor.",
        ),
        click.option("--image", help="Image reference for the worker container."),
        click.option(
            "--kustomize-dir",
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            help="Use this k8s/ tree instead of the packaged one.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _kube_options(func: F) -> F:
    options = [
        click.option("--namespace", "-n", help="Namespace (default: the context's)."),
        click.option("--context", help="kubeconfig context (default: the current one)."),
        click.option(
            "--kubeconfig",
            type=click.Path(dir_okay=False, path_type=Path),
            help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _render(
    overlay: str,
    sets: tuple[str, ...],
    extra_components: tuple[str, ...],
    image: str | None,
    kustomize_dir: Path | None,
) -> list[dict[str, Any]]:
    from runnable_k8s.cluster import checks, manifests

    root = kustomize_dir or manifests.default_root()
    overrides = manifests.parse_sets(sets, manifests.config_keys(root))
    objects = manifests.render(
        overlay, sets=overrides, extra_components=extra_components, image=image, root=root
    )
    checks.assert_consistent(objects)
    return objects


@click.group()
def cluster() -> None:
    """Render, deploy and inspect the Kubernetes workers (needs the `k8s` extra)."""


@cluster.command()
@_render_options
@_friendly
def manifests(
    *,
    overlay: str,
    sets: tuple[str, ...],
    extra_components: tuple[str, ...],
    image: str | None,
    kustomize_dir: Path | None,
) -> None:
    """Print the rendered manifests of an overlay as YAML (checked for consistency)."""
    from runnable_k8s.cluster.manifests import to_yaml

    objects = _render(overlay, sets, extra_components, image, kustomize_dir)
    click.echo(to_yaml(objects), nl=False)


@cluster.command()
@_render_options
@_kube_options
@click.option("--dry-run", is_flag=True, help="Server-side dry run: validated, nothing persisted.")
@_friendly
def deploy(
    *,
    overlay: str,
    sets: tuple[str, ...],
    extra_components: tuple[str, ...],
    image: str | None,
    kustomize_dir: Path | None,
    namespace: str | None,
    context: str | None,
    kubeconfig: Path | None,
    dry_run: bool,
) -> None:
    """Apply an overlay with server-side apply (field manager `runnable-k8s`)."""
    from runnable_k8s.cluster import deploy as deploying
    from runnable_k8s.cluster.kube import connect

    objects = _render(overlay, sets, extra_components, image, kustomize_dir)
    api, default_namespace = connect(
        context=context, kubeconfig=str(kubeconfig) if kubeconfig else None
    )
    target = namespace or default_namespace
    applied = deploying.deploy(api, objects, namespace=target, dry_run=dry_run)
    suffix = " (server dry run)" if dry_run else ""
    for item in applied:
        click.echo(f"{item.kind.lower()}/{item.name} applied in {item.namespace}{suffix}")


@cluster.command()
@_kube_options
@click.option(
    "--redis-url",
    help="Broker URL for the queue counts (default: $RUNNABLE_K8S_REDIS_URL), e.g. "
    "through `kubectl port-forward`.",
)
@_friendly
def status(
    *,
    namespace: str | None,
    context: str | None,
    kubeconfig: Path | None,
    redis_url: str | None,
) -> None:
    """Show worker replicas, the ScaledObject's conditions, and queued/in-flight runs."""
    from runnable_k8s.cluster import status as reading
    from runnable_k8s.cluster.kube import connect

    settings = Settings.from_env()
    api, default_namespace = connect(
        context=context, kubeconfig=str(kubeconfig) if kubeconfig else None
    )
    found = reading.read_cluster(api, namespace or default_namespace)
    queue = settings.queue
    if found.scaler and found.scaler.queue:
        if found.scaler.queue != settings.queue:
            found.warnings.append(
                f"the workers consume {found.scaler.queue!r}, but RUNNABLE_K8S_QUEUE here is "
                f"{settings.queue!r}: producers with these settings are not served"
            )
        queue = found.scaler.queue
    url = redis_url or settings.redis_url
    if url:
        url_db = Settings(redis_url=url).redis_db
        if found.scaler and found.scaler.database not in (None, str(url_db)):
            found.warnings.append(
                f"KEDA reads database {found.scaler.database}, this URL database {url_db}"
            )
        found.queue = reading.read_queue(url, queue)
    else:
        found.warnings.append(
            "queue counts unknown: set RUNNABLE_K8S_REDIS_URL or pass --redis-url"
        )
    click.echo(reading.format_status(found))
    if not found.ok:
        raise ConfigurationError("status incomplete (see above)")
