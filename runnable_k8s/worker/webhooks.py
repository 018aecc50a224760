"""Completion webhooks: every worker's loop that POSTs the outcome of ended runs.

Each turn claims due runs from the queue's due-time set (store/webhooks.py), so any worker
delivers any run, and one that dies mid-delivery hands it on when its claim lapses. Before a
byte is sent the URL (read from Redis, signed by a producer) is checked against this
worker's own RUNNABLE_K8S_WEBHOOK_ALLOW: a payload never chooses where a worker sends data.
Redirects are not followed (a 3xx is a failed attempt), proxies and .netrc from the
environment are not used. Failed attempts are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Final

import httpx
import redis.asyncio as aredis

from runnable_k8s.errors import SignatureRejected, WebhookRefused
from runnable_k8s.protocol import stream
from runnable_k8s.protocol.messages import Outcome, Protocol, RunStatus
from runnable_k8s.protocol.webhook import (
    RUN_HEADER,
    SIGNATURE_HEADER,
    WebhookDelivery,
    check_url,
    payload,
    sign,
)
from runnable_k8s.settings import Settings
from runnable_k8s.store import keys
from runnable_k8s.store.webhooks import RECHECK, DueSet
from runnable_k8s.worker.metrics import WorkerMetrics

log = logging.getLogger("runnable_k8s.worker")

_IDLE: Final = 0.5  # seconds between looks at an empty due set
_BATCH: Final = 16  # deliveries one worker runs at once
_MAX_DELAY: Final = 300.0  # cap on one retry's backoff


class Deliverer:
    def __init__(
        self,
        client: aredis.Redis,
        protocol: Protocol,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._client = client
        self._protocol = protocol
        self._settings = settings
        self._metrics = metrics
        self.due = DueSet(client, protocol.signer, settings.queue)

    async def forever(self) -> None:
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=self._settings.webhook_timeout,
        ) as http:
            while True:
                try:
                    claimed = await self.turn(http)
                except Exception as exc:  # Redis away: the claims lapse, the next turn retries
                    log.warning("webhook turn failed: %s", exc)
                    claimed = 0
                if claimed < _BATCH:
                    await asyncio.sleep(_IDLE)

    async def turn(self, http: httpx.AsyncClient) -> int:
        """Claim the due deliveries and make one attempt at each. Returns how many."""
        lease = self._settings.webhook_timeout + 30
        run_ids = await self.due.claim(lease, _BATCH)
        await asyncio.gather(*(self._one(http, run_id) for run_id in run_ids))
        return len(run_ids)

    async def _one(self, http: httpx.AsyncClient, run_id: str) -> None:
        try:
            delivery = await self.due.record(run_id)
            status = await self._status(run_id)
        except SignatureRejected as exc:
            log.warning(
                "dropped webhook of run=%s: its records failed verification (%s)", run_id, exc
            )
            await self.due.forget(run_id)
            return
        if delivery is None or delivery.state != "pending" or status is None:
            await self.due.forget(run_id)  # expired, or already settled by another worker
            return
        if not status.done:
            await self.due.later(run_id, time.time() + RECHECK)
            return
        try:
            url = check_url(delivery.url, self._settings.webhook_allow)
            if self._settings.webhook_secret is None:
                raise WebhookRefused("RUNNABLE_K8S_WEBHOOK_SECRET is not set on the worker")
        except WebhookRefused as exc:
            self._count("refused")
            log.warning("refused webhook of run=%s: %s", run_id, exc)
            settled = dataclasses.replace(
                delivery, state="refused", error=str(exc), updated_at=time.time()
            )
            await self.due.update(run_id, settled, None)
            return
        await self._attempt(http, run_id, url, delivery, status)

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        run_id: str,
        url: str,
        delivery: WebhookDelivery,
        status: RunStatus,
    ) -> None:
        assert self._settings.webhook_secret is not None  # checked by the caller
        try:
            outcome = await self._outcome(run_id)
        except SignatureRejected:  # a tampered stream: the signed status alone goes out
            outcome = None
        body = payload(status, outcome, self._protocol)
        attempt = delivery.attempts + 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "runnable-k8s-webhook",
            RUN_HEADER: run_id,
            SIGNATURE_HEADER: sign(self._settings.webhook_secret, body, int(time.time())),
        }
        try:
            response = await http.post(url, content=body, headers=headers)
            code = response.status_code
            error = "" if 200 <= code < 300 else f"HTTP {code}"
            if 300 <= code < 400:
                error += " (redirects are not followed)"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        now = time.time()
        if not error:
            self._count("delivered")
            log.info("delivered webhook of run=%s attempt=%d", run_id, attempt)
            done = WebhookDelivery(delivery.url, "delivered", attempt, "", now)
            await self.due.update(run_id, done, None)
        elif attempt >= self._settings.webhook_attempts:
            self._count("failed")
            log.warning("webhook of run=%s failed after %d attempts: %s", run_id, attempt, error)
            await self.due.update(
                run_id, WebhookDelivery(delivery.url, "failed", attempt, error, now), None
            )
        else:
            self._count("retried")
            delay = min(_MAX_DELAY, self._settings.webhook_backoff * 2 ** (attempt - 1))
            log.info(
                "webhook of run=%s attempt=%d: %s; again in %gs", run_id, attempt, error, delay
            )
            await self.due.update(
                run_id, WebhookDelivery(delivery.url, "pending", attempt, error, now), now + delay
            )

    async def _status(self, run_id: str) -> RunStatus | None:
        raw = await self._client.get(keys.status(run_id))
        return None if not isinstance(raw, bytes) else self._protocol.open_status(raw, run_id)

    async def _outcome(self, run_id: str) -> Outcome | None:
        """The run's signed outcome: the last entry of its event stream."""
        entries: Any = await self._client.xrevrange(keys.events(run_id), count=1)
        for _, fields in entries or []:
            if stream.entry_kind(fields) == stream.EntryKind.OUTCOME.wire:
                return self._protocol.open_outcome(stream.entry_message(fields), run_id)
        return None

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.webhooks.labels(result=result).inc()
