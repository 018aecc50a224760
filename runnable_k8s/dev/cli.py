"""`runnable-k8s dev`: a local cluster in one command (Redis, KEDA-faithful autoscaling, real
workers, a live view)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
import redis

from runnable_k8s import keda
from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.settings import Settings, SigningKey
from runnable_k8s.store import keys

if TYPE_CHECKING:
    from runnable_k8s.dev.scaling import ScalingConfig


@click.command()
@click.option("--polling-interval", type=float, default=None, help="Seconds between decisions.")
@click.option("--cooldown", type=float, default=None, help="Quiet seconds before KEDA scales to 0.")
@click.option(
    "--scale-down-window", type=float, default=None, help="HPA scale-down stabilisation, seconds."
)
@click.option("--min-replicas", type=int, default=None)
@click.option("--max-replicas", type=int, default=None)
@click.option(
    "--target",
    type=int,
    default=None,
    help="Runs per worker: the scaling target and each worker's concurrency (one value, as "
    "RUNNABLE_K8S_CONCURRENCY is in the cluster).",
)
@click.option(
    "--overlay",
    default="dev",
    show_default=True,
    help="Kustomize overlay whose ScaledObject and ConfigMap are used ('' for the base).",
)
@click.option(
    "--kustomize-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The k8s/ folder (default: the one shipped in the package).",
)
@click.option(
    "--restart-backoff",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds before a crashed worker is restarted (doubles, like CrashLoopBackOff).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where worker logs go (default: a temporary folder, printed).",
)
def dev(**options: Any) -> None:
    """Run workers locally, autoscaled from zero exactly as KEDA would scale them.

    Reads the ScaledObject and config.env of the kustomize tree (pollingInterval,
    cooldownPeriod, min/max replicas, target, activation, HPA behaviour), counts queued plus
    in-flight runs (LLEN of each priority's list + HLEN unacked, by the ScaledObject's
    formula) every polling interval, and starts workers or stops them warmly (SIGTERM).
    Without RUNNABLE_K8S_REDIS_URL it starts an embedded Redis-protocol server. Ctrl-C stops
    cleanly: with the embedded server it first finishes queued runs (Ctrl-C again to stop at
    once); with your own Redis queued runs stay there.
    """
    from runnable_k8s.dev import scaling

    try:
        settings = Settings.from_env()
        config, values = scaling.load(options["kustomize_dir"], options["overlay"] or None)
        config = config.with_overrides(
            polling_interval=options["polling_interval"],
            cooldown=options["cooldown"],
            min_replicas=options["min_replicas"],
            max_replicas=options["max_replicas"],
            target=options["target"],
            scale_down_window=options["scale_down_window"],
            queue=settings.queue,
        )
    except RunnableK8sError as exc:
        raise click.ClickException(str(exc)) from exc
    with contextlib.ExitStack() as stack:
        generated_key = settings.signing_key is None
        if generated_key:
            settings = settings.replace(signing_key=SigningKey(secrets.token_urlsafe(48).encode()))
        embedded = settings.redis_url is None
        if embedded:
            from runnable_k8s.embedded import EmbeddedRedis

            # Killed with `dev` even when `dev` cannot stop it (SIGKILL): see lifeline.py.
            server = stack.enter_context(contextlib.closing(EmbeddedRedis(die_with_parent=True)))
            try:
                settings = settings.replace(redis_url=server.start())
            except RunnableK8sError as exc:
                raise click.ClickException(str(exc)) from exc
        log_dir: Path | None = options["log_dir"]
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rk8s-dev-")))
        _print_connection(settings, embedded=embedded, generated_key=generated_key)
        _print_scaling(config, log_dir)
        from runnable_k8s.cluster.checks import cooldown_problem

        problem = cooldown_problem(
            config.cooldown,
            config.polling_interval,
            settings,
            min_replicas=config.min_replicas,
            counts_pending=keys.pending(settings.queue) in config.triggers.values(),
        )
        if problem:
            # Not refused: short cooldowns are what a local try-out wants. On a cluster,
            # `runnable-k8s cluster deploy` refuses the same manifests.
            click.echo(f"warning: {problem}", err=True)
        _serve(
            settings,
            config,
            values,
            log_dir=log_dir,
            embedded=embedded,
            restart_backoff=options["restart_backoff"],
        )


def _serve(
    settings: Settings,
    config: ScalingConfig,
    values: dict[str, str],
    *,
    log_dir: Path,
    embedded: bool,
    restart_backoff: float,
) -> None:
    from runnable_k8s.dev.session import DevSession
    from runnable_k8s.dev.view import LiveView, safe_echo

    try:
        session = DevSession(
            settings,
            config,
            log_dir,
            base_env=dict(os.environ),
            config_values=values,
            restart_backoff=restart_backoff,
        )
    except RunnableK8sError as exc:  # e.g. a ConfigMap value no worker would accept
        raise click.ClickException(str(exc)) from exc
    view = LiveView(session.pool)
    session.pool.on_event = view.on_event
    session.controller.on_sample = view.on_sample
    interrupted = threading.Event()
    hung_up = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        # The terminal is gone: nobody is left to press Ctrl-C a second time, so no draining.
        hung_up.set()
        interrupted.set()

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in stops}
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    session.start()
    try:
        # Woken now and then to notice a control loop that died: `dev` then stops too, rather
        # than leaving workers nobody scales or restarts.
        while not interrupted.wait(1.0) and session.alive:
            pass
        backlog = session.controller.backlog() if embedded and session.alive else 0
        if backlog and not hung_up.is_set():
            view.message(
                f"stopping: finishing {backlog} queued or running run(s) first "
                "(the embedded server keeps nothing); Ctrl-C again to stop now"
            )
            interrupted.clear()
            session.drain(float("inf"), interrupted)
        view.message("stopping: workers finish their running runs, then exit")
    except KeyboardInterrupt:
        view.message("stopping now: workers finish their running runs, then exit")
    finally:
        # Nothing may interrupt the warm stop halfway: a worker left out of it would outlive
        # `dev` (until its own parent-pid check stops it).
        for signum in stops:
            signal.signal(signum, signal.SIG_IGN)
        try:
            session.close()
        finally:
            left = _left_over(session.client, settings.queue)
            view.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if left:
        where = "were discarded with the embedded server" if embedded else "stay queued in Redis"
        safe_echo(f"{left} queued run(s) {where}")
    counts = session.pool.counts
    safe_echo(
        f"stopped: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['crashed']} worker crash(es)"
    )


def _print_scaling(config: ScalingConfig, log_dir: Path) -> None:
    click.echo(
        f"scaling: {config.source}\n"
        f"  pollingInterval {config.polling_interval:g} s, cooldownPeriod {config.cooldown:g}"
        f" s, replicas {config.min_replicas}..{config.max_replicas}, target "
        f"{config.target:g} runs per worker, activation > {config.activation:g}, scale-down "
        f"window {config.scale_down.window:g} s\n"
        f"  metric: {config.describe_formula()}\n"
        f"worker logs: {log_dir}\n"
        "Ctrl-C to stop."
    )


def _left_over(client: redis.Redis, queue: str) -> int:
    with contextlib.suppress(redis.RedisError, OSError):
        return keda.queue_counts(client, queue).queued
    return 0


def _print_connection(settings: Settings, *, embedded: bool, generated_key: bool) -> None:
    url = settings.require_redis_url()
    click.echo("producers connect with:")
    click.echo(f"  export RUNNABLE_K8S_REDIS_URL={url}")
    if generated_key:
        key = settings.require_signing_key().reveal().decode()
        click.echo(f"  export RUNNABLE_K8S_SIGNING_KEY={key}   # throw-away key for this session")
    else:
        click.echo("  (and the same RUNNABLE_K8S_SIGNING_KEY as this shell)")
    if settings.queue != "runnable-k8s":
        click.echo(f"  export RUNNABLE_K8S_QUEUE={settings.queue}")
    if embedded:
        click.echo("(embedded Redis-protocol server; it stops with `dev`)")
