"""Run verbs for shells and cron jobs: submit, status, result, cancel, stream (and batch, in
cli_batch.py).

A runnable is named by import path (`module:attribute`, as uvicorn names apps), imported here
on the producer side from the current directory. A `RunnableK8s` is used as it is; any other
runnable is shipped (`bound=`), or run by reference with `--ref`.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from langchain_core.runnables import Runnable, RunnableConfig

from runnable_k8s import connections
from runnable_k8s.errors import (
    ConfigurationError,
    RunnableK8sError,
    SerializationRefused,
)
from runnable_k8s.producer.dead_letters import DeadLetters
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.producer.redis_errors import translated
from runnable_k8s.producer.runnable import RunnableK8s
from runnable_k8s.protocol import interrupts
from runnable_k8s.protocol.allowlist import import_object
from runnable_k8s.protocol.messages import Protocol, RunStatus
from runnable_k8s.settings import Settings
from runnable_k8s.store.limits import read_wait
from runnable_k8s.store.threads import Strategy

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except RunnableK8sError as exc:
        raise click.ClickException(str(exc)) from exc


def _errors(func: F) -> F:
    """Turn library errors into one clear line and a non-zero exit."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RunnableK8sError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def load_runnable(path: str, settings: Settings, *, ref: bool) -> RunnableK8s[Any, Any]:
    """The RunnableK8s for an import path.

    With `ref`, or when the path cannot be imported here (the code lives only in the worker
    image), or when the runnable cannot travel (a LangGraph graph, a RunnableLambda), the
    workers run it by reference; they must list it in RUNNABLE_K8S_ALLOWED_REFS.
    """
    if ref:
        return RunnableK8s(ref=path, settings=settings)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj = import_object(path)
    except ConfigurationError:
        click.echo(f"({path} is not importable here: running it by reference)", err=True)
        return RunnableK8s(ref=path, settings=settings)
    if isinstance(obj, RunnableK8s):
        return obj
    if not isinstance(obj, Runnable):
        raise click.ClickException(f"{path} is a {type(obj).__name__}, not a LangChain Runnable")
    try:
        return RunnableK8s(bound=obj, settings=settings)
    except SerializationRefused:
        click.echo(f"({path} cannot travel as JSON: running it by reference)", err=True)
        return RunnableK8s(ref=path, settings=settings)


def to_json(value: Any) -> Any:
    """A JSON-able form of an output (LangChain objects as their serialized form, a graph's
    interrupts as `{"value": ..., "id": ...}`)."""
    return interrupts.plain(value)


def _parse_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc


def _chunk_text(chunk: Any) -> str:
    content = getattr(chunk, "content", chunk)
    return content if isinstance(content, str) else json.dumps(to_json(chunk))


def _resume_command(resume: str) -> Any:
    """`Command(resume=...)` for a graph's input (LangGraph's class where it is installed
    here, the protocol's stand-in where not: both travel the same way)."""
    try:
        from langgraph.types import Command
    except ImportError:
        return interrupts.Command(resume=_parse_input(resume))
    return Command(resume=_parse_input(resume))


@click.command()
@click.argument("runnable")
@click.option("--input", "input_", default=None, help="The input, as JSON.")
@click.option(
    "--resume",
    default=None,
    help="Resume an interrupted graph on --thread: the answer as JSON (sent as "
    "Command(resume=...); an object keyed by interrupt id answers several).",
)
@click.option("--thread", default=None, help="LangGraph thread id (configurable.thread_id).")
@click.option("--config", "config_", default=None, help="The RunnableConfig, as JSON.")
@click.option("--stream", is_flag=True, help="Publish chunks (for `runnable-k8s stream ID`).")
@click.option("--ref", is_flag=True, help="Run RUNNABLE by reference (worker imports it).")
@click.option(
    "--multitask-strategy",
    type=click.Choice(["enqueue", "reject", "interrupt", "rollback"]),
    default="enqueue",
    show_default=True,
    help="When another run of --thread is queued or running: wait (enqueue), fail "
    "(reject), stop it keeping its checkpoints (interrupt) or discarding them (rollback).",
)
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low"]),
    default=None,
    help="Which queue list the run waits on (default normal).",
)
@click.option("--webhook", default=None, help="URL the outcome is POSTed to when the run ends.")
@_errors
def submit(
    *,  # click passes every parameter by keyword
    runnable: str,
    input_: str | None,
    resume: str | None,
    thread: str | None,
    config_: str | None,
    stream: bool,
    ref: bool,
    multitask_strategy: Strategy,
    priority: str | None,
    webhook: str | None,
) -> None:
    """Submit RUNNABLE (module:attribute) with --input JSON (or --resume JSON); print the run
    id."""
    if (input_ is None) == (resume is None):
        raise click.UsageError("give exactly one of --input and --resume")
    config = _parse_input(config_) if config_ is not None else {}
    if not isinstance(config, dict):
        raise click.BadParameter("--config must be a JSON object")
    if thread is not None:
        config["configurable"] = {**config.get("configurable", {}), "thread_id": thread}
    payload = _resume_command(resume) if resume is not None else _parse_input(input_ or "")
    settings = _settings()
    remote = load_runnable(runnable, settings, ref=ref)
    handle = remote.submit(
        payload,
        cast(RunnableConfig, config) or None,
        stream=stream,
        multitask_strategy=multitask_strategy,
        priority=priority,
        webhook=webhook,
    )
    click.echo(handle.id)


@click.command()
@click.argument("run_id")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object, times as seconds since the epoch (for scripts).",
)
@_errors
def status(run_id: str, as_json: bool) -> None:
    """Print a run's state, attempt and times (ISO 8601, UTC)."""
    settings = _settings()
    run = RemoteRun(run_id, settings)
    fields = status_fields(run.status(), _retry_of(settings, run_id))
    hook = run.webhook()
    if hook is not None:
        fields["webhook"] = f"{hook.state} after {hook.attempts} attempt(s): {hook.url}"
        fields["webhook_error"] = hook.error
    if fields["state"] == "running":
        fields["waiting"] = _waiting(settings, run_id, as_json=as_json)
    line = run.thread_position() if fields["state"] == "queued" else None
    if line:  # waiting for its thread (0: it holds it, as any queued run)
        fields["thread_line"] = line
    if as_json:
        click.echo(json.dumps(fields))
        return
    echo_fields(fields)


def status_fields(st: RunStatus, retry_of: str | None) -> dict[str, Any]:
    """A run's status as `status` and `failed show` print it (times as epoch seconds)."""
    return {
        "id": st.run_id,
        "state": st.state,
        "name": st.name,
        "attempt": st.attempt,
        "created_at": st.created_at,
        "started_at": st.started_at,
        "finished_at": st.finished_at,
        "reason": st.reason,
        "retry_of": retry_of,
    }


def echo_fields(fields: dict[str, Any]) -> None:
    """One `key: value` line each, times in ISO 8601 (UTC), `-` for none."""
    for key, value in fields.items():
        shown = iso_time(value) if key.endswith("_at") else value
        click.echo(f"{key + ':':<13}{'-' if shown in (None, '') else shown}")


def _waiting(settings: Settings, run_id: str, *, as_json: bool) -> Any:
    """What the run's model call waits on (flow control), if anything."""
    client = connections.sync_client(settings.require_redis_url(), socket_connect_timeout=5)
    try:
        with translated("cannot read the run's flow-control wait from Redis"):
            found = read_wait(client, Protocol(settings).signer, run_id)
    finally:
        client.close()
    if found is None or as_json:
        return found
    until = iso_time(found.get("until")) if isinstance(found.get("until"), float) else "?"
    return f"{found.get('key')} ({found.get('reason')}) until {until}"


def _retry_of(settings: Settings, run_id: str) -> str | None:
    letters = DeadLetters(settings)
    try:
        return letters.retry_of(run_id)
    finally:
        letters.close()


def iso_time(epoch: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC, to the millisecond (`...T12:00:00.000Z`)."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float, default=None, help="Seconds to wait.")
@_errors
def result(run_id: str, timeout: float | None) -> None:
    """Wait for a run and print its output as JSON (errors: message, exit 1)."""
    click.echo(json.dumps(to_json(RemoteRun(run_id, _settings()).result(timeout=timeout))))


@click.command()
@click.argument("run_id")
@_errors
def cancel(run_id: str) -> None:
    """Cancel a run (queued: never starts; running: cancelled by its worker)."""
    before = RemoteRun(run_id, _settings()).cancel()
    click.echo(f"cancel requested ({before.state} before)" if not before.done else before.state)


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float, default=None, help="Seconds to wait.")
@click.option("--after", default=None, help="Print only the chunks after this event id.")
@click.option("--ids", is_flag=True, help="Print each chunk on its own line after its event id.")
@_errors
def stream(run_id: str, timeout: float | None, after: str | None, ids: bool) -> None:
    """Print a run's output chunks as they arrive (text as it is, other chunks as JSON).

    With --ids, each line is `ID<TAB>chunk` (text as a JSON string, other chunks as JSON);
    `--after ID` continues a stream from there."""
    run = RemoteRun(run_id, _settings())
    if ids:
        for event_id, chunk in run.stream(timeout=timeout, after=after, with_ids=True):
            # JSON keeps a chunk that contains a newline on its one line.
            content = getattr(chunk, "content", chunk)
            shown = content if isinstance(content, str) else to_json(chunk)
            click.echo(f"{event_id}\t{json.dumps(shown)}")
        return
    for chunk in run.stream(timeout=timeout, after=after):
        click.echo(_chunk_text(chunk), nl=not isinstance(getattr(chunk, "content", chunk), str))
    click.echo()


COMMANDS = (submit, status, result, cancel, stream)  # and cli_batch.batch
