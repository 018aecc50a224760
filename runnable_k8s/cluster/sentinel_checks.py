"""Cross-checks of `redis-sentinel` triggers against a `sentinel://` worker URL (see
checks.py): KEDA must ask the same sentinels for the same master, in the same database,
with TLS exactly when the worker uses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runnable_k8s import connections

TRIGGER = "redis-sentinel"


def problems(label: str, trigger_type: str, metadata: Mapping[str, Any], url: str) -> list[str]:
    """What makes a trigger count something other than what the worker consumes."""
    if not connections.is_sentinel(url):
        return [
            f"{label} is a {TRIGGER} trigger, but the broker URL is not sentinel:// "
            f"(scheme {url.split('://', 1)[0]}://)"
        ]
    target = connections.parse_sentinel(url)
    if trigger_type != TRIGGER:
        return [f"{label} is a {trigger_type} trigger, but the broker URL is sentinel://"]
    found: list[str] = []
    addresses = {a.strip() for a in str(metadata.get("addresses", "")).split(",") if a.strip()}
    wanted = {f"{host}:{port}" for host, port in target.sentinels}
    if addresses != wanted:
        found.append(
            f"{label} asks the sentinels {', '.join(sorted(addresses)) or '(none)'}, but the "
            f"broker URL lists {', '.join(sorted(wanted))}"
        )
    if metadata.get("sentinelMaster") != target.master_name:
        found.append(
            f"{label} has sentinelMaster {metadata.get('sentinelMaster')!r}, but the broker "
            f"URL's master_name is {target.master_name!r}"
        )
    tls = str(metadata.get("enableTLS", "false")).lower() == "true"
    if tls != target.tls:
        found.append(
            f"{label} has enableTLS={str(tls).lower()}, but the broker URL scheme is "
            f"{'sentinels' if target.tls else 'sentinel'}://"
        )
    if str(metadata.get("databaseIndex", "0")) != str(target.db):
        found.append(
            f"{label} reads database {metadata.get('databaseIndex', '0')}, but the broker URL "
            f"uses database {target.db}"
        )
    return found
