"""Completion webhooks: which URLs are allowed, and how a delivery is signed and verified.

Shared by the producer (refuses a URL off its allowlist at submit), the worker (refuses it
again before sending a byte, always: the URL came through Redis) and receivers
(`verify_webhook`). A delivery carries the header

    X-RunnableK8s-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

so a receiver checks the body is the workers' and recent (replays of old deliveries fail).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from runnable_k8s.errors import ForgedMessage, SignatureRejected, WebhookRefused
from runnable_k8s.protocol import interrupts
from runnable_k8s.protocol.envelope import WEBHOOK, Envelope, Signer
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.settings import Settings, SigningKey

SIGNATURE_HEADER: Final = "X-RunnableK8s-Signature"
RUN_HEADER: Final = "X-RunnableK8s-Run"
MAX_URL: Final = 2048
TOLERANCE: Final = 300.0
"""Default seconds a receiver accepts a delivery's timestamp off its own clock."""


def check_url(url: object, allow: tuple[str, ...]) -> str:
    """`url` if it is a plain http(s) URL under one of the `allow` prefixes.

    A prefix matches only at a boundary: `https://hooks.example.com` admits
    `https://hooks.example.com/x` but not `https://hooks.example.com.evil.net/` nor
    `https://hooks.example.com:8443/`. User info (`user@host`), control characters,
    backslashes and non-ASCII text are refused outright, so no parser can read another host
    into the URL than the one the prefix names.

    Raises:
        WebhookRefused: why, naming the URL.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise WebhookRefused(f"webhook URL must be a string of 1 to {MAX_URL} characters")
    if not url.isascii() or any(c <= " " or c in "\\\x7f" for c in url):
        raise WebhookRefused(f"webhook URL {url!r} has spaces, control or non-ASCII characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise WebhookRefused(f"webhook URL {url!r} must be http(s)://host/... without user info")
    if not any(_under(url, prefix) for prefix in allow):
        where = ", ".join(allow) if allow else "nothing (RUNNABLE_K8S_WEBHOOK_ALLOW is empty)"
        raise WebhookRefused(f"webhook URL {url!r} is not allowed: the allowlist is {where}")
    return url


def _under(url: str, prefix: str) -> bool:
    if not url.startswith(prefix):
        return False
    return prefix.endswith("/") or len(url) == len(prefix) or url[len(prefix)] in "/?#"


def check_webhook(url: object, settings: Settings) -> str:
    """The producer's check: always the URL's shape, and the allowlist when the producer's
    settings carry one (the workers check their own in any case).

    Raises:
        WebhookRefused: the URL is malformed or off the producer's allowlist.
    """
    if settings.webhook_allow:
        return check_url(url, settings.webhook_allow)
    return check_url(url, ("http://", "https://"))


def sign(secret: SigningKey, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.reveal(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def payload(status: RunStatus, outcome: Outcome | None, protocol: Protocol) -> bytes:
    """The JSON body a receiver gets: the run's status and, when recorded, its output or error
    (LangChain objects in their serialized form, as `runnable-k8s result` prints them)."""
    body: dict[str, Any] = {
        "run_id": status.run_id,
        "state": status.state,
        "name": status.name,
        "attempt": status.attempt,
        "reason": status.reason,
        "created_at": status.created_at,
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "output": None,
        "error": None,
    }
    if outcome is not None:
        body["output"] = interrupts.plain(protocol.data.decode_data(outcome.output))
        body["error"] = outcome.error.as_json() if outcome.error is not None else None
    return json.dumps(body, separators=(",", ":")).encode()


def verify_webhook(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a webhook delivery, on the receiver's side, before trusting its body.

    Args:
        secret: the workers' RUNNABLE_K8S_WEBHOOK_SECRET.
        body: the raw request body, exactly as received (before any JSON parsing).
        header: the `X-RunnableK8s-Signature` header's value.
        tolerance: seconds the delivery's timestamp may be off the receiver's clock.

    Raises:
        SignatureRejected: missing, malformed, wrong or stale signature.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    fields = dict(part.split("=", 1) for part in (header or "").split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError) as exc:
        raise SignatureRejected(f"no valid {SIGNATURE_HEADER} header") from exc
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise SignatureRejected("webhook timestamp is outside the tolerance (replayed?)")
    expected = sign(SigningKey(key), body, timestamp).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise SignatureRejected("webhook signature does not match its body")


WebhookState = Literal["pending", "delivered", "failed", "refused"]
_STATES: Final = ("pending", "delivered", "failed", "refused")
_FOREVER: Final = 10 * 365 * 86400.0  # the record's Redis TTL bounds its life, not this


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """Where a run's completion webhook stands (`RemoteRun.webhook()`, `runnable-k8s status`).

    `state`: "pending" (the run goes on, or a retry is due), "delivered" (the receiver
    answered 2xx), "failed" (every attempt failed; `error` says how the last one did) or
    "refused" (the worker would not call the URL; `error` says why: no byte was sent)."""

    url: str
    state: WebhookState = "pending"
    attempts: int = 0
    error: str = ""
    updated_at: float | None = None


def seal_delivery(signer: Signer, run_id: str, delivery: WebhookDelivery) -> bytes:
    body = json.dumps(
        {
            "url": delivery.url,
            "state": delivery.state,
            "attempts": delivery.attempts,
            "error": delivery.error,
            "updated_at": delivery.updated_at,
        },
        separators=(",", ":"),
    ).encode()
    return signer.seal(Envelope(WEBHOOK, run_id, time.time() + _FOREVER, body))


def open_delivery(signer: Signer, wire: bytes, run_id: str) -> WebhookDelivery:
    """Raises: SignatureRejected (forged, tampered, another run's, or malformed)."""
    envelope = signer.open(wire, kind=WEBHOOK)
    if envelope.run_id != run_id:
        raise ForgedMessage("webhook record of another run")
    try:
        raw = json.loads(envelope.body)
        url, state, attempts = raw["url"], raw["state"], raw["attempts"]
        error, updated = raw.get("error", ""), raw.get("updated_at")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureRejected("malformed webhook record") from exc
    if (
        not isinstance(url, str)
        or state not in _STATES
        or not isinstance(attempts, int)
        or not isinstance(error, str)
        or not (updated is None or isinstance(updated, int | float))
    ):
        raise SignatureRejected("webhook record has mistyped fields")
    return WebhookDelivery(url, state, attempts, error, updated)
