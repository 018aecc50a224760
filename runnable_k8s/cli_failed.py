"""`runnable-k8s failed`: list, show, retry and purge dead letters (producer/dead_letters.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import click

from runnable_k8s.cli_runs import _errors, _settings, echo_fields, iso_time, status_fields
from runnable_k8s.producer.dead_letters import DeadLetter, DeadLetters


@contextlib.contextmanager
def _letters() -> Iterator[DeadLetters]:
    letters = DeadLetters(_settings())
    try:
        yield letters
    finally:
        letters.close()


def _fields(letter: DeadLetter) -> dict[str, Any]:
    return status_fields(letter.status, letter.retry_of)


@click.group()
def failed() -> None:
    """Dead letters: runs that failed after their last attempt, were refused, or expired."""


@failed.command("list")
@click.option("--limit", type=int, default=100, show_default=True, help="Newest entries shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_errors
def list_(limit: int, as_json: bool) -> None:
    """List dead letters, newest first (id, ended at, state, attempts, name, reason)."""
    with _letters() as letters:
        listing = letters.listing(limit=limit)
    for letter in listing.letters:
        if as_json:
            click.echo(json.dumps(_fields(letter)))
            continue
        st = letter.status
        click.echo(
            f"{st.run_id}  {iso_time(st.finished_at) or '-'}  {st.state:<7}  "
            f"attempt {st.attempt}  {st.name or '-'}  {st.reason or '-'}"
        )
    if listing.refused:
        click.echo(
            f"({listing.refused} index entries refused: their status is unverifiable or says "
            "the run did not fail)",
            err=True,
        )


@failed.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (times in epoch s).")
@_errors
def show(run_id: str, as_json: bool) -> None:
    """Print a dead letter's verified status and error (type, message, traceback)."""
    with _letters() as letters:
        letter = letters.show(run_id)
    fields = _fields(letter)
    error = letter.outcome.error if letter.outcome is not None else None
    if as_json:
        click.echo(json.dumps({**fields, "error": error.as_json() if error else None}))
        return
    echo_fields(fields)
    if error is not None:
        click.echo(f"{'error:':<13}{error.type}: {error.message}")
        if error.traceback:
            click.echo(error.traceback.rstrip())


@failed.command()
@click.argument("run_id")
@_errors
def retry(run_id: str) -> None:
    """Submit a dead letter's runnable and input again as a new run; print its id."""
    with _letters() as letters:
        click.echo(letters.retry(run_id))


@failed.command()
@click.option(
    "--older-than",
    type=float,
    default=None,
    help="Only entries that ended more than this many seconds ago (default: all).",
)
@_errors
def purge(older_than: float | None) -> None:
    """Remove dead letters (and their kept requests); print how many."""
    with _letters() as letters:
        click.echo(f"purged {letters.purge(older_than=older_than)}")
