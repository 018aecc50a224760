"""Redis key names: they live in the run store (`runnable_k8s/store/keys.py`); re-exported
here for code written before it. New code imports `runnable_k8s.store.keys`."""

from __future__ import annotations

from runnable_k8s.store.keys import (
    CANCEL_CHANNEL,
    PREFIX,
    UNACKED,
    body,
    cancel,
    dead_letters,
    events,
    kept_body,
    kept_request,
    lock,
    message,
    pending,
    rescue_lock,
    retry_of,
    status,
    webhook,
    webhooks,
)

__all__ = [
    "CANCEL_CHANNEL",
    "PREFIX",
    "UNACKED",
    "body",
    "cancel",
    "dead_letters",
    "events",
    "kept_body",
    "kept_request",
    "lock",
    "message",
    "pending",
    "rescue_lock",
    "retry_of",
    "status",
    "webhook",
    "webhooks",
]
