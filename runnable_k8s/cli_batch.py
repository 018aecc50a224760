"""`runnable-k8s batch`: every line of a file as a run, results written in input order.

For shells and cron jobs; its exit codes are documented in the README's "Command line" section.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from runnable_k8s.cli_runs import _settings, load_runnable, to_json
from runnable_k8s.errors import RemoteError, RunnableK8sError, WaitTimeout
from runnable_k8s.producer.client import client_for
from runnable_k8s.producer.results import unwrap

# `batch` exit codes, documented in the README's "Command line" section. Click itself exits 2
# on a usage error (a missing option or file); an input line that is not JSON is one too.
BATCH_SOME_FAILED = 1
BATCH_NOT_RUN = 3


class _BatchNotRun(click.ClickException):
    exit_code = BATCH_NOT_RUN


def _read_inputs(path: Path) -> Iterator[Any]:
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise click.UsageError(f"{path}:{number}: not JSON: {exc}") from exc


def _failure(exc: RunnableK8sError) -> dict[str, Any]:
    if isinstance(exc, RemoteError):
        return {"type": exc.remote_type, "message": exc.remote_message}
    return {"type": type(exc).__name__, "message": str(exc)}


@click.command()
@click.argument("runnable")
@click.option(
    "--input-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="One JSON input per line.",
)
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="One JSON result per line, in input order.",
)
@click.option("--ref", is_flag=True, help="Run RUNNABLE by reference (worker imports it).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for all results.")
def batch(
    runnable: str, input_file: Path, output_file: Path, ref: bool, timeout: float | None
) -> None:
    """Submit every line of --input-file as a run; write results in input order.

    Exit status: 0 every line succeeded; 1 the output file is written and at least one line
    failed or was not done within --timeout; 2 usage error (including an input line that is
    not JSON); 3 the batch could not run (runnable, settings or Redis), no output file.
    """
    inputs = list(_read_inputs(input_file))
    try:
        lines = _run_batch(runnable, inputs, ref=ref, timeout=timeout)
    except RunnableK8sError as exc:
        raise _BatchNotRun(f"{type(exc).__name__}: {exc}") from exc
    except click.ClickException as exc:  # settings or runnable refused by the helpers
        raise _BatchNotRun(exc.message) from exc
    with output_file.open("w") as out:
        for line in lines:
            out.write(json.dumps(line) + "\n")
    failed = sum(1 for line in lines if not line["ok"])
    click.echo(f"{len(lines)} runs, {failed} failed -> {output_file}", err=True)
    if failed:
        click.get_current_context().exit(BATCH_SOME_FAILED)


def _run_batch(
    runnable: str, inputs: list[Any], *, ref: bool, timeout: float | None
) -> list[dict[str, Any]]:
    settings = _settings()
    remote = load_runnable(runnable, settings, ref=ref)
    client = client_for(settings)
    handles = [remote.submit(value) for value in inputs]
    index = {handle.id: i for i, handle in enumerate(handles)}
    lines: list[dict[str, Any] | None] = [None] * len(handles)
    wait = timeout if timeout is not None else settings.wait_timeout
    # A progress bar only for a person watching: without a terminal, click would still print
    # its label (a bare "runs" line) into whatever collects stderr.
    bar = (
        click.progressbar(length=len(handles), label="runs", file=sys.stderr)
        if sys.stderr.isatty()
        else None
    )
    with bar if bar is not None else contextlib.nullcontext():
        try:
            for event in client.events(list(index), timeout=wait):
                if event.outcome is None:
                    continue
                i = index[event.run_id]
                try:
                    output = to_json(unwrap(client.protocol, event.outcome))
                    lines[i] = {"index": i, "ok": True, "output": output}
                except RunnableK8sError as exc:
                    lines[i] = {"index": i, "ok": False, "error": _failure(exc)}
                if bar is not None:
                    bar.update(1)
        except WaitTimeout:
            pass  # the lines still missing are reported as not done, below
    for i, handle in enumerate(handles):
        if lines[i] is None:
            message = (
                f"no result after {wait:g} s; the run goes on: runnable-k8s result {handle.id}"
            )
            lines[i] = {
                "index": i,
                "ok": False,
                "error": {"type": "WaitTimeout", "message": message},
            }
    return [line for line in lines if line is not None]
