"""The Celery application, configured explicitly from `Settings` (no config modules, no global
app), and the `runnable-k8s worker` entry point."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.exceptions import Reject
from celery.worker.request import Request

from runnable_k8s import connections
from runnable_k8s.errors import RunNotSucceeded
from runnable_k8s.protocol import priority
from runnable_k8s.protocol.task_message import TASK_NAME
from runnable_k8s.settings import Settings
from runnable_k8s.worker import durability, logs, memory, revocation, task_state, transport
from runnable_k8s.worker.consumer import guarded_consumer
from runnable_k8s.worker.execution import Executor
from runnable_k8s.worker.health import Readiness, heartbeat
from runnable_k8s.worker.loop import LoopThread
from runnable_k8s.worker.metrics import WorkerMetrics
from runnable_k8s.worker.outage import REDIS_ERRORS
from runnable_k8s.worker.priorities import watch_depth
from runnable_k8s.worker.rescue import Rescuer
from runnable_k8s.worker.transport import SENTINEL_TRANSPORT, TRANSPORT
from runnable_k8s.worker.webhooks import Deliverer

log = logging.getLogger("runnable_k8s.worker")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours. Each choice matters for not losing runs."""
    visibility = settings.effective_visibility_timeout
    restore_every = max(1, min(60, int(visibility / 10)))
    _, sentinel_options = connections.kombu_broker(settings.require_redis_url())
    transport: dict[str, Any] = {
        **sentinel_options,
        "visibility_timeout": visibility,
        # How often a live worker looks for messages a dead one held (and hands back those
        # older than the visibility timeout). kombu scans only every 10th sweep by default,
        # about 100 s: scan on every sweep, at a tenth of the visibility timeout.
        "unacked_restore_throttle": 1,
        "unacked_restore_interval": restore_every,
        # The lock one worker holds while it hands messages back. kombu keeps it 300 s, so a
        # worker killed during a restore stalled every redelivery for five minutes (the soak
        # found it); a restore takes milliseconds, and a second restorer only causes a
        # duplicate delivery, which the claim turns away.
        "unacked_mutex_expire": max(10, restore_every),
        # One list per priority, fetched by weight so higher lists go first and the low one
        # still gets its share (worker/priorities.py).
        "queue_order_strategy": "runnable_k8s.worker.priorities:WeightedCycle",
    }
    config: dict[str, Any] = {
        # JSON only: a pickle-accepting worker executes whatever anyone writes to Redis.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the run: a killed worker's run is redelivered, not lost.
        "task_acks_late": True,
        # A run that did not succeed raises (so Celery's state tells it, see task_state) after
        # its outcome is recorded: its message must be acked like a success's, not requeued.
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        # Prefetched messages leave the queue list and hide backlog from KEDA.
        "worker_prefetch_multiplier": 1,
        # Redelivery happens only after this; it must exceed the longest run.
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "task_default_queue": settings.queue,
        # kombu's Redis transport, minus the crash on queue items that are not messages.
        "broker_transport": SENTINEL_TRANSPORT if sentinel_options else TRANSPORT,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "task_send_sent_event": False,
        # Task events (for Flower) are off unless set, until a monitor asks: Flower turns them
        # on with `enable_events`, which works without mingle and gossip (README: their cost).
        "worker_send_task_events": settings.task_events,
        "worker_enable_remote_control": settings.remote_control,
    }
    url = settings.require_redis_url()
    if connections.is_sentinel(url):
        # kombu's Sentinel URLs carry no query (connections.kombu_broker): the master's TLS
        # options (`sentinels://...?ssl_ca_certs=...`) reach kombu here, or not at all.
        tls = connections.parse_sentinel(url).broker_tls()
        if tls is not None:
            config["broker_use_ssl"] = tls
    elif urlsplit(url).scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(urlsplit(url).query):
        # kombu's own default for `rediss://` without it is to verify nothing.
        config["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return config


class DescribedRequest(Request):  # type: ignore[misc]
    """A task request that describes itself to remote control (`celery inspect active`,
    `reserved`, `scheduled`, `query_task`, Flower) by its `argsrepr`, "{mode} {name} run={id}",
    set by the producer, never by its argument: the signed envelope with the caller's input."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        return dict(super().info(safe=True))


def celery_app(settings: Settings) -> Celery:
    """The Celery app on our broker transport and configuration, with no task yet."""
    broker, _ = connections.kombu_broker(settings.require_redis_url())
    # BrokerAMQP: a failover keeps our transport (see transport.BrokerConnection).
    app = Celery("runnable_k8s", broker=broker, set_as_current=False, amqp=transport.BrokerAMQP)
    app.conf.update(celery_config(settings))
    return app


def create_app(
    settings: Settings, executor: Executor, loop: LoopThread, readiness: Readiness | None = None
) -> Celery:
    """Build the Celery app whose one task hands each message to `executor` on `loop`; its
    consumer keeps `readiness` (the ready file) while it takes messages."""
    app = celery_app(settings)
    # Nothing but our own task, as our producer writes it, becomes a request (see the module);
    # the size bound is the executor's own first check (body limit plus header and MAC).
    app.conf.worker_consumer = guarded_consumer(
        executor.metrics, settings.max_body_bytes + 1024, readiness
    )

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME,
        ignore_result=True,
        acks_late=True,
        Request=DescribedRequest,
        # Expected: logged by Celery as one INFO line, no traceback (see task_state).
        throws=(RunNotSucceeded,),
    )
    def run(wire: str) -> None:
        # Blocks this pool thread until the run is over, so the message is acked only then.
        try:
            handled = loop.run(executor.handle(wire, executor.fetch_beside(wire)))
            if settings.replica_acks:  # before the ack: see durability.confirm
                loop.run(durability.confirm(executor.redis, settings))
        except REDIS_ERRORS as exc:
            # Not the message's fault: hand it back (or, with Redis still away, leave it
            # unacknowledged for redelivery) instead of acknowledging a run never recorded.
            raise Reject(f"Redis unavailable: {exc}", requeue=True) from exc
        # Raised outside the `try`, so no other exception is chained into what Celery shows.
        failure = task_state.failure(handled)
        if failure is not None:
            raise failure

    return app


def run_worker(
    settings: Settings,
    *,
    concurrency: int | None = None,
    queue: str | None = None,
    loglevel: str | None = None,
    hostname: str | None = None,
) -> None:
    """Run a worker in this process until it is told to stop (SIGTERM: warm shutdown)."""
    if queue:
        settings = settings.replace(queue=queue)
    if concurrency:
        # The executor sizes its Redis pools from it: one connection per run held at once.
        settings = settings.replace(concurrency=concurrency)
    metrics = WorkerMetrics()
    # Before anything large is allocated, so every later allocation follows the settings.
    memory.tune_malloc(settings.malloc_keep)
    transport.on_malformed(lambda: metrics.reject("malformed"))
    executor = Executor(settings, metrics)
    logs.install(settings, executor.worker_id)
    metrics.serve(settings.metrics_port)
    loop = LoopThread()
    rescuer = Rescuer(
        executor.redis,
        settings.queue,
        after=settings.rescue_after,
        every=settings.rescue_every,
    )
    deliverer = Deliverer(executor.redis, executor.protocol, settings, metrics)
    readiness = Readiness(settings.heartbeat_file, metrics)
    executor.on_ended = deliverer.due.due_now
    background = [
        loop.submit(deliverer.forever()),
        loop.submit(executor.cancellations.listen()),
        loop.submit(rescuer.forever()),
        loop.submit(
            heartbeat(
                executor.redis,
                settings.heartbeat_file,
                settings.heartbeat_interval,
                readiness,
                metrics,
            )
        ),
        loop.submit(
            watch_depth(executor.redis, settings.queue, settings.heartbeat_interval, metrics)
        ),
    ]
    app = create_app(settings, executor, loop, readiness)
    revocation.install(settings.require_redis_url(), executor.protocol)  # revoke = cancel
    # The loop thread starts once Celery has set up logging: the background loops submitted
    # above wait in its queue until then, so their first lines (a webhook delivered as the
    # worker starts, a rescue) reach the worker's log. Nothing may `loop.run` before it.
    logs.after_setup(app, loop.start)
    argv = [
        # Celery's banner is not a log line: no banner when every line must be JSON.
        *(["--quiet"] if settings.log_json else []),
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency or settings.concurrency}",
        f"--queues={','.join(priority.lists(settings.queue).values())}",
        f"--loglevel={loglevel or settings.log_level}",
        # Mingle and gossip cost a second at start-up and chatter on Redis; we use neither.
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")

    # Everything imported and built so far lives as long as the process. Not in Celery's
    # `worker_ready` signal: that runs on the consumer's thread once it is consuming, and a
    # message popped meanwhile is in neither the queue nor kombu's unacked hash while the
    # collection runs (lost if the worker is killed then, until the rescue sweep finds it).
    memory.tune_gc(settings.gc_threshold)
    try:
        app.worker_main(argv)
    finally:
        readiness.stopped()
        for future in background:
            future.cancel()
        loop.start()  # a no-op unless the worker stopped before it started: `_close` needs it
        loop.submit(_close(executor)).result(timeout=5)
        loop.stop()


async def _close(executor: Executor) -> None:
    await asyncio.sleep(0)
    await connections.aclose(executor.redis)  # and its sentinels' connections
    executor.clients.close_sync()
