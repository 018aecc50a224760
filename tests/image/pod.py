"""The worker's pod spec as shipped (`k8s/base`), read the way the kubelet reads it: its
ConfigMap, its Secrets, its `$(VAR)` expansion and its probe commands, nothing copied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "k8s" / "base"


def worker_container() -> dict[str, Any]:
    deployment = yaml.safe_load((BASE / "deployment.yaml").read_text())
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = next(c for c in containers if c["name"] == "worker")
    return found


def config_map() -> dict[str, str]:
    """`k8s/base/config.env` as the ConfigMap generator reads it."""
    values: dict[str, str] = {}
    for line in (BASE / "config.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def probe(name: str) -> list[str]:
    """The exec command of `startupProbe`, `livenessProbe` or `readinessProbe`."""
    return list(worker_container()[name]["exec"]["command"])


def pod_env(
    redis_url: str,
    secrets: dict[str, dict[str, str]],
    *,
    config: dict[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment: envFrom (ConfigMap, Secrets), then `env` in order with
    `$(VAR)` expanded from what is already set, as the kubelet does. The ConfigMap's broker
    address is pointed at `redis_url` (host, port, database); its password is the
    `runnable-k8s-redis` Secret's."""
    container = worker_container()
    address = urlsplit(redis_url)
    config = dict(config_map() if config is None else config)
    config.update(
        REDIS_HOST=address.hostname or "127.0.0.1",
        REDIS_PORT=str(address.port or 6379),
        REDIS_DB=address.path.strip("/") or "0",
    )
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config)
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for entry in container.get("env", []):
        if "value" in entry:
            # The kubelet leaves a reference to an unset variable as written.
            env[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"]
            )
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env
