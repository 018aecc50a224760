"""The stream batcher on its own (worker/stream_writer.py): what leaves in which entry, when.
The integration tests (tests/integration/test_batched_streams.py) run it against Redis; here a
recording writer stands in for Redis, so the timing of each write is under the test's control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from runnable_k8s.protocol import stream
from runnable_k8s.protocol.codec import data_codec
from runnable_k8s.worker.stream_writer import Batch, Batcher, EntryWriter, Progress
from runnable_k8s.worker.streaming import StreamPublisher

C = stream.ItemKind.CHUNK


class Recorder:
    """Appends batches to a list; each write takes `seconds` (a Redis round trip)."""

    def __init__(self, seconds: float = 0.05, fail_at: int | None = None) -> None:
        self.entries: list[list[bytes]] = []
        self.seconds = seconds
        self.fail_at = fail_at
        self.error = ConnectionError("Redis went away")

    async def append(self, items: Batch) -> None:
        if self.fail_at is not None and len(self.entries) == self.fail_at:
            raise self.error
        await asyncio.sleep(self.seconds)
        self.entries.append([data for _, data in items])


def batcher(recorder: Recorder) -> Batcher:
    return Batcher(cast(EntryWriter, recorder), max_body_bytes=1 << 20)


async def test_the_first_item_leaves_at_once_and_a_burst_shares_the_next_entry() -> None:
    recorder = Recorder()
    out = batcher(recorder)
    await out.put(C, b"0")
    await asyncio.sleep(0.01)  # the first write is in flight
    for i in range(1, 6):
        await out.put(C, str(i).encode())
    await out.close()
    assert recorder.entries == [[b"0"], [b"1", b"2", b"3", b"4", b"5"]]


async def test_items_far_apart_leave_one_entry_each() -> None:
    recorder = Recorder(seconds=0.001)
    out = batcher(recorder)
    for i in range(3):
        await out.put(C, str(i).encode())
        await asyncio.sleep(0.05)  # a real model's pace: each write ended long before
    await out.close()
    assert recorder.entries == [[b"0"], [b"1"], [b"2"]]


async def test_abandon_waits_for_the_write_in_flight_and_drops_the_rest() -> None:
    recorder = Recorder()
    out = batcher(recorder)
    await out.put(C, b"0")
    await asyncio.sleep(0.01)
    await out.put(C, b"1")
    await out.abandon()
    assert recorder.entries == [[b"0"]]


async def test_a_write_that_gave_up_is_raised_by_the_next_put_and_by_close() -> None:
    recorder = Recorder(seconds=0.001, fail_at=1)
    out = batcher(recorder)
    await out.put(C, b"0")
    await asyncio.sleep(0.05)
    await out.put(C, b"1")
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionError) as caught:
        await out.put(C, b"2")
    assert caught.value is recorder.error  # the same object: the executor tells it by identity
    assert recorder.entries == [[b"0"]]


def publisher(recorder: Recorder) -> StreamPublisher:
    class Executor:
        class protocol:  # the attribute the publisher reads
            data = data_codec()

    made = StreamPublisher.__new__(StreamPublisher)
    made._executor = cast(Any, Executor)
    made._progress = Progress()
    made._batcher = batcher(recorder)
    return made


async def test_chunks_produced_before_a_failure_are_published_before_it() -> None:
    recorder = Recorder()

    async def failing() -> AsyncIterator[str]:
        for i in range(5):
            yield f"t{i}"
        raise ValueError("the model broke")

    with pytest.raises(ValueError, match="the model broke"):
        await publisher(recorder).chunks(failing())
    assert [item for entry in recorder.entries for item in entry] == [
        f"\x00t{i}".encode() for i in range(5)
    ]


async def test_a_cancelled_run_publishes_nothing_more() -> None:
    recorder = Recorder()
    started = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        i = 0
        while True:
            yield f"t{i}"
            i += 1
            started.set()
            await asyncio.sleep(0.001)

    task = asyncio.create_task(publisher(recorder).chunks(endless()))
    await started.wait()
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    published = len(recorder.entries)
    await asyncio.sleep(0.1)
    assert len(recorder.entries) == published


async def test_a_model_that_keeps_bursting_gets_ever_larger_entries() -> None:
    # Bursts of 8 items about 1 ms apart, for 50 bursts. At a fixed 2 ms spacing that is about
    # one entry per burst (50; more when the machine is slow and the bursts drift apart); the
    # spacing grows while every entry carries several items, so far fewer entries leave.
    recorder = Recorder(seconds=0.0002)
    out = batcher(recorder)
    for burst_number in range(50):
        for i in range(8):
            await out.put(C, f"{burst_number}.{i}".encode())
        await asyncio.sleep(0.001)
    await out.close()
    assert sum(len(entry) for entry in recorder.entries) == 400
    assert len(recorder.entries) <= 25, [len(entry) for entry in recorder.entries]


async def test_after_a_burst_a_pause_sends_the_next_item_at_once() -> None:
    recorder = Recorder(seconds=0.0002)
    out = batcher(recorder)
    for i in range(200):
        await out.put(C, str(i).encode())
    await asyncio.sleep(0.2)  # the model pauses (a tool call): everything so far has left
    assert sum(len(entry) for entry in recorder.entries) == 200
    await out.put(C, b"after")
    await asyncio.sleep(0.005)  # far below the grown spacing (16 ms): it did not wait for it
    assert recorder.entries[-1] == [b"after"]
    await out.close()


def test_a_streamed_sum_is_what_adding_chunk_by_chunk_gives() -> None:
    from runnable_k8s.worker.streaming import _add, _Sum

    cases: list[list[Any]] = [
        ["a", "b", "c"],
        ["a", 1, 2, "b", "c"],  # the sum starts again where a chunk cannot be added
        [1, "a", "b"],
        [[1], [2], "x", "y", [3]],
        [],
    ]
    for chunks in cases:
        total, expected = _Sum(), None
        for chunk in chunks:
            total.add(chunk)
            expected = _add(expected, chunk)
        assert total.value() == expected, chunks
