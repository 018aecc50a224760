"""Shared test helpers for tests/k8s (a module name no other test folder uses)."""

from __future__ import annotations

import copy
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runnable_k8s.errors import RunnableK8sError

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas" / "keda"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeKube:
    """A `KubeApi` holding objects in memory; records applies; can fail on demand."""

    def __init__(
        self,
        objects: Mapping[tuple[str, str, str], dict[str, Any]] | None = None,
        *,
        missing_kinds: frozenset[str] = frozenset(),
        fail_on: str | None = None,
    ) -> None:
        self.objects = dict(objects or {})
        self.missing_kinds = missing_kinds
        self.fail_on = fail_on
        self.applied: list[tuple[dict[str, Any], str, bool]] = []

    def knows(self, api_version: str, kind: str) -> bool:
        return kind not in self.missing_kinds

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def apply(self, obj: Mapping[str, Any], *, namespace: str, dry_run: bool) -> dict[str, Any]:
        if obj["kind"] == self.fail_on:
            raise RunnableK8sError(f"forbidden (403) ({obj['kind']} {namespace}/x): denied")
        self.applied.append((copy.deepcopy(dict(obj)), namespace, dry_run))
        return dict(obj)
