"""The Celery task message for one run, built directly as kombu's Redis transport stores it.

Producers LPUSH this JSON onto the queue list themselves, in the same Redis round trip as the
run's status record (and its large body, if any). That is why the producer does not need
Celery at all, and why publishing costs one round trip. The format is Celery's task message
protocol v2 (documented), wrapped as kombu's virtual transport wraps it; the body is left
unencoded (no `body_encoding`), which kombu accepts, instead of base64 of JSON.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

TASK_NAME: Final = "runnable_k8s.run"
_ORIGIN: Final = f"{os.getpid()}@{socket.gethostname()}"
_EMBED: Final = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'

FIXED_HEADERS: Final[Mapping[str, object]] = MappingProxyType(
    {
        "lang": "py",
        "task": TASK_NAME,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": (None, None),
        "parent_id": None,
        "kwargsrepr": "{}",
        "ignore_result": True,
    }
)
"""The headers every run message carries with these values. The worker refuses a message
whose headers differ (see `runnable_k8s.worker.consumer`): Celery acts on them before the task
verifies anything. The others are `id` and `root_id` (the run id), `argsrepr` and `origin`."""
FREE_HEADERS: Final = frozenset({"id", "root_id", "argsrepr", "origin"})
EMBED: Final[Mapping[str, None]] = MappingProxyType(json.loads(_EMBED))
"""The body's third element: no callbacks, errbacks, chain or chord, ever."""


def build(wire: str, *, run_id: str, queue: str, description: str) -> str:
    """Return the message to LPUSH onto `queue`.

    Args:
        wire: the sealed run envelope (the task's only argument).
        run_id: used as Celery's task id, so Flower and `celery inspect` show our run ids.
        queue: the queue (list) name.
        description: a short, secret-free `argsrepr` for Flower and `celery inspect`.
    """
    body = "[[" + json.dumps(wire) + "],{}," + _EMBED + "]"
    message = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            **FIXED_HEADERS,
            "id": run_id,
            "root_id": run_id,
            "argsrepr": description,
            "origin": _ORIGIN,
        },
        "properties": {
            "correlation_id": run_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message, separators=(",", ":"))


def argument_of(message: bytes) -> tuple[str, str] | None:
    """The task argument (the sealed envelope) and the delivery tag of a message `build`
    made, or None when `message` is not shaped like one. `message` is read from Redis: only
    its types are checked here; whoever uses the envelope verifies it."""
    try:
        outer = json.loads(message)
        body = json.loads(outer["body"])
        wire, tag = body[0][0], outer["properties"]["delivery_tag"]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None
    if not isinstance(wire, str) or not isinstance(tag, str):
        return None
    return wire, tag
