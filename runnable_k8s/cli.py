"""`runnable-k8s`: worker, demo, run verbs, and the `cluster` group."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import click

from runnable_k8s import spawn
from runnable_k8s.cli_batch import batch
from runnable_k8s.cli_failed import failed
from runnable_k8s.cli_runs import COMMANDS
from runnable_k8s.cluster.cli import cluster
from runnable_k8s.dev.cli import dev
from runnable_k8s.errors import RunnableK8sError
from runnable_k8s.settings import Settings, SigningKey


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except RunnableK8sError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="runnable-k8s")
def main() -> None:
    """Run LangChain runnables on autoscaled Celery workers over Redis."""


@main.command()
@click.option("--concurrency", "-c", type=int, default=None, help="Runs held at once.")
@click.option("--queue", "-Q", default=None, help="Queue to consume (RUNNABLE_K8S_QUEUE).")
@click.option("--loglevel", "-l", default=None, help="Log level (RUNNABLE_K8S_LOG_LEVEL).")
@click.option("--hostname", "-n", default=None, help="Celery node name.")
@click.option(
    "--parent-pid",
    type=int,
    default=None,
    help="Stop (warm) when process PID exits, and hard if that takes longer than the time "
    "limit plus 60 s (`runnable-k8s dev` passes its own pid).",
)
def worker(
    concurrency: int | None,
    queue: str | None,
    loglevel: str | None,
    hostname: str | None,
    parent_pid: int | None,
) -> None:
    """Start a worker (Celery threads pool, one event loop). SIGTERM finishes running runs."""
    from runnable_k8s import lifeline
    from runnable_k8s.worker.app import run_worker

    settings = _settings()
    try:
        settings.require_signing_key()
        settings.require_redis_url()
    except RunnableK8sError as exc:
        raise click.ClickException(str(exc)) from exc
    # Warm first, like the kubelet's SIGTERM; the hard stop stands in for the SIGKILL after
    # terminationGracePeriodSeconds (time limit + 60 s in the manifests) nobody else will send.
    if parent_pid is not None and not lifeline.exit_with_parent(
        parent_pid, grace=settings.time_limit + 60.0
    ):
        click.echo(f"process {parent_pid} that started this worker is gone: not starting", err=True)
        return
    run_worker(settings, concurrency=concurrency, queue=queue, loglevel=loglevel, hostname=hostname)


@contextlib.contextmanager
def local_worker(
    settings: Settings, *, concurrency: int = 8, log_path: str | None = None
) -> Iterator[spawn.WorkerProcess]:
    """A worker subprocess for `settings` (the demo's), ready (its consumer takes messages)
    when this yields; its output goes to `log_path` (discarded when None).

    Raises:
        WorkerNotReady: it exited, or did not take messages within 60 s.
    """
    worker = spawn.WorkerProcess(
        spawn.environment(settings),
        log=Path(log_path) if log_path else None,
        argv=spawn.worker_argv(
            concurrency=concurrency,
            loglevel="WARNING",
            parent_pid=os.getpid(),  # gone with us, even if we are killed
        ),
    )
    try:
        worker.wait_ready(60)
        yield worker
    finally:
        worker.stop(30)


@main.command()
@click.argument("question", default="What does Pikachu evolve from?")
def demo(question: str) -> None:
    """Ask the demo chain (system prompt | model on a worker | parser) a QUESTION.

    Without RUNNABLE_K8S_REDIS_URL it starts an embedded Redis-protocol server and a local
    worker, and stops both afterwards. With OPENAI_API_KEY set it uses ChatOpenAI (the key stays
    in the worker's environment); otherwise a deterministic demo model.
    """
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from runnable_k8s.embedded import EmbeddedRedis
    from runnable_k8s.producer.runnable import RunnableK8s

    settings = _settings()
    with contextlib.ExitStack() as stack:
        if settings.signing_key is None:
            click.echo("(no RUNNABLE_K8S_SIGNING_KEY: using a throw-away key for this demo)")
            settings = settings.replace(signing_key=SigningKey(secrets.token_urlsafe(48).encode()))
        if settings.redis_url is None:
            server = stack.enter_context(contextlib.closing(EmbeddedRedis()))
            url = server.start()
            click.echo(f"(no RUNNABLE_K8S_REDIS_URL: started an embedded server at {url})")
            settings = settings.replace(redis_url=url)
            try:
                stack.enter_context(local_worker(settings, concurrency=4))
            except RunnableK8sError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo("(started a local worker process)")
        if settings.openai_available:
            from langchain_openai import ChatOpenAI
            from pydantic import SecretStr

            # The producer holds a placeholder; the worker's OPENAI_API_KEY is the real one.
            model: object = ChatOpenAI(
                model="gpt-4o-mini", api_key=SecretStr("sk-held-by-the-worker")
            )
            click.echo("(model: ChatOpenAI gpt-4o-mini, key from the worker's environment)")
        else:
            from runnable_k8s.models import DemoChatModel

            model = DemoChatModel()
            click.echo("(model: the deterministic demo model; set OPENAI_API_KEY for ChatOpenAI)")
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "You are a Pokemon expert. Answer in one or two sentences."),
                ("human", "{input}"),
            ]
        )
        chain = prompt | RunnableK8s(bound=model, settings=settings, timeout=60) | StrOutputParser()  # type: ignore[arg-type]
        try:
            answer = chain.invoke({"input": question})
        except RunnableK8sError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(answer)


main.add_command(cluster)
main.add_command(dev)
main.add_command(failed)
main.add_command(batch)
for _command in COMMANDS:
    main.add_command(_command)
