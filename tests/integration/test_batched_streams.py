"""Streams that batch themselves: a fast model's chunks share entries, a slow model's do not,
and every chunk keeps its own signed position (order, ids, resuming, tamper checks)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis

from runnable_k8s import RemoteError, RunnableK8s, Settings, SignatureRejected
from runnable_k8s.producer.handles import RemoteRun
from runnable_k8s.protocol import stream
from runnable_k8s.protocol.codec import pack, unpack
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import keys
from tests.support.models import BurstModel, SlowModel
from tests.support.workers import WorkerProcess

TOKENS = 1500
Fields = dict[bytes, bytes]


def expected(tokens: int, fail_after: int | None = None) -> list[Any]:
    """What the same model streams in-process: what every remote stream must equal."""

    async def collect() -> list[Any]:
        model = BurstModel(tokens=tokens, fail_after=fail_after)
        found: list[Any] = []
        try:
            async for chunk in model.astream("go"):
                found.append(chunk.content)
        except ValueError:
            pass
        return found

    return asyncio.run(collect())


def batches(settings: Settings, client: redis.Redis, run_id: str) -> list[tuple[Fields, int]]:
    """The run's signed entries, each with how many items it holds."""
    protocol = Protocol(settings)
    found = []
    for _, fields in client.xrange(keys.events(run_id)):
        if fields[b"k"] in stream.BATCH_KINDS:
            found.append((fields, len(protocol.open_batch(fields[b"m"], run_id))))
    return found


def burst(settings: Settings, tokens: int = TOKENS) -> RemoteRun:
    model = BurstModel(tokens=tokens)
    return RunnableK8s(bound=model, settings=settings).submit("go", stream=True)


def test_a_fast_model_fills_entries_and_every_chunk_arrives_in_order_with_its_id(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    run = burst(settings)
    pairs = list(run.stream(timeout=120, with_ids=True))
    contents = expected(TOKENS)
    assert [chunk.content for _, chunk in pairs] == contents
    assert [event_id for event_id, _ in pairs] == [str(i) for i in range(len(contents))]
    sizes = [items for _, items in batches(settings, redis_client, run.id)]
    assert sum(sizes) == len(contents)
    # Chunks produced while a write was in flight went out together.
    assert len(sizes) < TOKENS / 2 and max(sizes) > 1
    assert run.result(timeout=60).content == "".join(contents)


def test_a_slow_model_gets_each_chunk_out_on_its_own(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    model = SlowModel(delay=0.1, chunks=4)
    run = RunnableK8s(bound=model, settings=settings).submit("hi", stream=True)
    chunks = len(list(run.stream(timeout=60)))
    assert chunks >= 4
    # No waiting for company: each chunk left as soon as it was produced.
    assert [items for _, items in batches(settings, redis_client, run.id)] == [1] * chunks


def test_resuming_after_an_id_inside_a_batched_entry_yields_exactly_the_rest(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    run = burst(settings)
    whole = list(run.stream(timeout=120, with_ids=True))
    start = 0
    for _, items in batches(settings, redis_client, run.id):
        if items >= 3:
            break
        start += items
    else:
        pytest.fail("no entry held three chunks")
    middle = start + 1  # the second item of that entry
    rest = list(RemoteRun.attach(run.id, settings).stream(timeout=60, after=middle, with_ids=True))
    assert rest == whole[middle + 1 :]
    assert rest[0][0] == str(middle + 1)


def test_chunks_streamed_before_a_failure_all_arrive_then_the_error(
    settings: Settings, worker: WorkerProcess
) -> None:
    model = BurstModel(tokens=TOKENS, fail_after=700)
    run = RunnableK8s(bound=model, settings=settings).submit("go", stream=True)
    seen: list[str] = []
    with pytest.raises(RemoteError, match="the burst broke after 700 chunks"):
        for chunk in run.stream(timeout=120):
            seen.append(chunk.content)
    assert seen == expected(TOKENS, fail_after=700)
    assert len(seen) == 700


def _split_wire(wire: bytes) -> tuple[bytes, bytes]:
    """(header and MAC, body) of a sealed message."""
    first = wire.index(b"\n")
    second = wire.index(b"\n", first + 1)
    return wire[: second + 1], wire[second + 1 :]


def _edit_body(fields: Fields, edit: Callable[[dict[str, Any], list[bytes]], bytes]) -> Fields:
    """The entry with its body rewritten by someone without the key (the MAC is kept)."""
    signed, body = _split_wire(fields[b"m"])
    head, segments = unpack(body)
    return {**fields, b"m": signed + edit(head, segments)}


def _swap_items(head: dict[str, Any], segments: list[bytes]) -> bytes:
    head.pop("seg")
    return pack(head, segments[1], segments[0], *segments[2:])


def _drop_item(head: dict[str, Any], segments: list[bytes]) -> bytes:
    head.pop("seg")
    head["k"] = head["k"][1:]
    return pack(head, *segments[1:])


def _change_item(head: dict[str, Any], segments: list[bytes]) -> bytes:
    head.pop("seg")
    return pack(head, segments[0].replace(b"b", b"X"), *segments[1:])


def _relabel_item(head: dict[str, Any], segments: list[bytes]) -> bytes:
    head.pop("seg")
    head["k"] = "c" + "e" + head["k"][2:]
    return pack(head, *segments)


# Each rewrites the run's stream from its genuine entries, then keeps the genuine outcome.
# The first multi-item entry is `entries[target]`.
TAMPERINGS: dict[str, tuple[Callable[[list[Fields], int], list[Fields]], str]] = {
    "items-swapped-inside-an-entry": (
        lambda e, t: [*e[:t], _edit_body(e[t], _swap_items), *e[t + 1 :]],
        "signature mismatch",
    ),
    "item-dropped-inside-an-entry": (
        lambda e, t: [*e[:t], _edit_body(e[t], _drop_item), *e[t + 1 :]],
        "signature mismatch",
    ),
    "item-changed-inside-an-entry": (
        lambda e, t: [*e[:t], _edit_body(e[t], _change_item), *e[t + 1 :]],
        "signature mismatch",
    ),
    "item-relabelled-inside-an-entry": (
        lambda e, t: [*e[:t], _edit_body(e[t], _relabel_item), *e[t + 1 :]],
        "signature mismatch",
    ),
    "batched-entry-dropped": (lambda e, t: [*e[:t], *e[t + 1 :]], "was tampered with"),
    "batched-entries-reordered": (
        lambda e, t: [*e[:t], e[t + 1], e[t], *e[t + 2 :]],
        "was tampered with",
    ),
    "batched-entry-relabelled": (
        lambda e, t: [*e[:t], {**e[t], b"k": b"e"}, *e[t + 1 :]],
        "was tampered with",
    ),
    "last-batched-entry-dropped": (lambda e, t: e[:-1], "lost entries"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_batched_stream_is_refused(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis, tampering: str
) -> None:
    rebuild, refusal = TAMPERINGS[tampering]
    run = burst(settings)
    assert len(list(run.stream(timeout=120))) == len(expected(TOKENS))
    signed = batches(settings, redis_client, run.id)
    target = next(i for i, (_, items) in enumerate(signed) if items >= 3)
    assert target + 1 < len(signed)  # an entry follows it, to reorder with
    key = keys.events(run.id)
    final = [f for _, f in redis_client.xrange(key) if f[b"k"] == stream.EntryKind.OUTCOME.wire]
    redis_client.delete(key)
    for fields in [*rebuild([f for f, _ in signed], target), *final]:
        redis_client.xadd(key, fields)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match=refusal):
        list(RemoteRun.attach(run.id, settings).stream(timeout=30))


def test_an_exact_replay_of_an_entry_is_skipped_and_other_items_at_its_position_are_refused(
    settings: Settings, worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    # After a failover a worker appends again, byte for byte, entries the new master lost,
    # which a reader may already have had (worker/stream_writer.py): the reader skips such a
    # replay. Items of other content at positions already read (another delivery starting
    # the run over, say) are refused.
    run = burst(settings)
    whole = [chunk.content for chunk in run.stream(timeout=120)]
    assert whole == expected(TOKENS)
    signed = batches(settings, redis_client, run.id)
    target = next(i for i, (_, items) in enumerate(signed) if items >= 3)
    entries = [fields for fields, _ in signed]
    key = keys.events(run.id)
    final = [f for _, f in redis_client.xrange(key) if f[b"k"] == stream.EntryKind.OUTCOME.wire]
    protocol = Protocol(settings)
    first = sum(items for _, items in signed[:target])
    items = protocol.open_batch(entries[target][b"m"], run.id)
    other = protocol.seal_batch(run.id, first, [(items[0].kind, items[0].data)])
    replayed = {b"k": entries[target][b"k"], b"m": other}
    cases = {
        # The entries `target` and the one after it again, as a worker appends what a
        # failover lost: the reader had them, and skips them.
        "replayed": (
            [*entries[: target + 2], entries[target], entries[target + 1], *entries[target + 2 :]],
            None,
        ),
        "other items": ([*entries[: target + 1], replayed, *entries[target + 1 :]], "tampered"),
    }
    for rebuilt, refusal in cases.values():
        redis_client.delete(key)
        for fields in [*rebuilt, *final]:
            redis_client.xadd(key, fields)  # type: ignore[arg-type]
        reading = RemoteRun.attach(run.id, settings)
        if refusal is None:
            assert [chunk.content for chunk in reading.stream(timeout=30)] == whole
        else:
            with pytest.raises(SignatureRejected, match=refusal):
                list(reading.stream(timeout=30))
