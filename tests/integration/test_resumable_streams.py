"""Resumable streams: every chunk has an event id, and a reader continues after one."""

from __future__ import annotations

import asyncio
import json
from itertools import islice
from typing import Any

import pytest

from runnable_k8s import RunnableK8s, Settings, UnknownEventId
from runnable_k8s.producer.handles import RemoteRun
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess, cli

CHUNKS = 6


def slow_model() -> SlowModel:
    return SlowModel(delay=0.2, chunks=CHUNKS)


def in_process_contents() -> list[Any]:
    """What the same model streams here: what every remote stream must equal."""

    async def collect() -> list[Any]:
        return [c.content async for c in slow_model().astream("hello")]

    return asyncio.run(collect())


def contents(pairs: list[tuple[str, Any]]) -> list[Any]:
    return [chunk.content for _, chunk in pairs]


def test_a_reader_that_stopped_continues_after_its_last_event_id(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = RunnableK8s(bound=slow_model(), settings=settings).submit("hello", stream=True)
    first = list(islice(run.stream(timeout=60, with_ids=True), 3))
    # A new handle, as another process would build it, while the run is still streaming.
    rest = list(
        RemoteRun.attach(run.id, settings).stream(timeout=60, after=first[-1][0], with_ids=True)
    )
    whole = list(RemoteRun.attach(run.id, settings).stream(timeout=60, with_ids=True))
    assert first + rest == whole
    assert contents(first) + contents(rest) == in_process_contents()
    ids = [int(event_id) for event_id, _ in whole]
    assert ids == sorted(set(ids))  # distinct and in stream order
    # The default stream still yields bare chunks, the same ones.
    assert [c.content for c in run.stream(timeout=60)] == contents(whole)
    assert [c.content for c in run.stream(timeout=60, after=first[-1][0])] == contents(rest)


async def test_astream_continues_after_an_event_id(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = await RunnableK8s(bound=slow_model(), settings=settings).asubmit("hello", stream=True)
    first: list[tuple[str, Any]] = []
    async for pair in run.astream(timeout=60, with_ids=True):
        first.append(pair)
        if len(first) == 2:
            break
    resumed = RemoteRun(run.id, settings)
    rest = [p async for p in resumed.astream(timeout=60, after=int(first[-1][0]), with_ids=True)]
    whole = [p async for p in resumed.astream(timeout=60, with_ids=True)]
    assert first + rest == whole
    assert contents(first) + contents(rest) == await asyncio.to_thread(in_process_contents)
    bare = [c.content async for c in resumed.astream(timeout=60, after=first[-1][0])]
    assert bare == contents(rest)


def test_an_after_that_is_not_an_id_or_lies_beyond_the_end_is_a_clear_error(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = RunnableK8s(bound=slow_model(), settings=settings).submit("hello", stream=True)
    whole = list(run.stream(timeout=60, with_ids=True))
    last = whole[-1][0]
    assert list(run.stream(timeout=60, after=last)) == []  # the end: nothing more, no error
    for bad in ("abc", "-1", "1.5", "", True):
        with pytest.raises(UnknownEventId, match="not an event id"):
            list(run.stream(timeout=60, after=bad))  # type: ignore[arg-type]
    for beyond in (int(last) + 1, "999"):
        with pytest.raises(UnknownEventId, match="beyond the end"):
            list(run.stream(timeout=60, after=beyond))


async def test_astream_refuses_an_after_beyond_the_end(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = await RunnableK8s(bound=slow_model(), settings=settings).asubmit("hello", stream=True)
    whole = [p async for p in run.astream(timeout=60, with_ids=True)]
    with pytest.raises(UnknownEventId, match="beyond the end"):
        [p async for p in run.astream(timeout=60, after=int(whole[-1][0]) + 1)]
    with pytest.raises(UnknownEventId, match="not an event id"):
        [p async for p in run.astream(timeout=60, after="x")]


def test_a_run_not_streamed_has_one_chunk_with_an_id_to_resume_after(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = RunnableK8s(bound=SlowModel(delay=0.1), settings=settings).submit("hi")
    ((event_id, output),) = list(run.stream(timeout=60, with_ids=True))
    assert output.content == "echo: hi" == run.result(timeout=60).content
    assert list(run.stream(timeout=60, after=event_id)) == []
    with pytest.raises(UnknownEventId, match="beyond the end"):
        list(run.stream(timeout=60, after=int(event_id) + 1))


def parse(lines: str) -> list[tuple[str, Any]]:
    pairs = []
    for line in lines.splitlines():
        event_id, _, shown = line.partition("\t")
        pairs.append((event_id, json.loads(shown)))
    return pairs


def test_cli_stream_prints_ids_and_continues_after_one(
    settings: Settings, worker: WorkerProcess
) -> None:
    run = RunnableK8s(bound=slow_model(), settings=settings).submit("hello", stream=True)
    whole = parse(cli(settings, "stream", run.id, "--ids", "--timeout", "60").stdout)
    assert [text for _, text in whole] == in_process_contents()
    assert [event_id for event_id, _ in whole] == [
        event_id for event_id, _ in run.stream(timeout=60, with_ids=True)
    ]
    after = whole[2][0]
    rest = parse(cli(settings, "stream", run.id, "--ids", "--after", after).stdout)
    assert whole[:3] + rest == whole
    plain = cli(settings, "stream", run.id, "--after", after).stdout
    assert plain.strip() == "".join(text for _, text in rest).strip()
    bad = cli(settings, "stream", run.id, "--after", "nope", check=False)
    assert bad.returncode != 0 and "UnknownEventId" in bad.stderr, bad.stderr
    beyond = cli(settings, "stream", run.id, "--after", str(int(whole[-1][0]) + 1), check=False)
    assert beyond.returncode != 0 and "beyond the end" in beyond.stderr, beyond.stderr
