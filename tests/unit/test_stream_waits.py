"""The shared stream reader's bookkeeping (producer/waiting.py `Registry`), without Redis: which
streams a read covers from which cursor, who gets which entries, when a read must be woken."""

from __future__ import annotations

import queue
from typing import Any

from runnable_k8s.producer.waiting import Registry, Subscription, parse_reply
from runnable_k8s.protocol import stream

CHUNK = {b"k": b"c", b"m": b"..."}
OUTCOME = {b"k": stream.EntryKind.OUTCOME.wire, b"m": b"..."}


def sub(*keys: str) -> Subscription:
    return Subscription(list(keys), queue.Queue())


def taken(s: Subscription) -> list[Any]:
    found = []
    while not s.inbox.empty():
        found.append(s.inbox.get_nowait())
    return found


def test_a_stream_is_read_from_the_lowest_cursor_and_each_wait_gets_only_what_it_lacks() -> None:
    registry = Registry()
    first = sub("a")
    registry.add(first)
    registry.dispatch([("a", [("1-0", CHUNK), ("2-0", CHUNK)])])
    assert registry.streams() == {"a": "2-0"}
    late = sub("a")  # a second reader of the same stream joins from its start
    registry.add(late)
    assert registry.streams() == {"a": "0-0"}
    registry.dispatch([("a", [("1-0", CHUNK), ("2-0", CHUNK), ("3-0", CHUNK)])])
    assert [ids for _, ids in [(k, [i for i, _ in e]) for k, e in taken(first)]] == [
        ["1-0", "2-0"],
        ["3-0"],
    ]
    assert [[i for i, _ in e] for _, e in taken(late)] == [["1-0", "2-0", "3-0"]]
    assert registry.streams() == {"a": "3-0"}


def test_a_read_in_flight_is_woken_only_for_a_wait_it_misses() -> None:
    registry = Registry()
    registry.add(sub("a"))
    registry.reading = registry.streams()
    assert registry.add(sub("b"))  # not in the read: wake it
    assert not registry.add(sub("a"))  # the read covers it, from the cursor it needs
    registry.reading = {"a": "5-0", "b": "0-0"}
    assert registry.add(sub("a"))  # this wait needs entries before 5-0
    assert not registry.add(sub("b"))


def test_after_an_outcome_a_stream_is_not_read_again_for_that_wait() -> None:
    registry = Registry()
    s = sub("a", "b")
    registry.add(s)
    registry.dispatch([("a", [("1-0", CHUNK), ("2-0", OUTCOME)])])
    assert registry.streams() == {"b": "0-0"}
    registry.remove(s)
    assert registry.empty()


def test_a_wait_that_stops_taking_is_left_out_of_the_reads_until_it_catches_up() -> None:
    registry = Registry()
    slow, other = sub("a"), sub("b")
    registry.add(slow)
    registry.add(other)
    for n in range(1, 65):
        registry.dispatch([("a", [(f"{n}-0", CHUNK)])])
    assert slow.paused
    assert registry.streams() == {"b": "0-0"}
    for _ in range(40):
        slow.inbox.get_nowait()
        registry.resume(slow)
    assert not slow.paused
    assert registry.streams() == {"a": "64-0", "b": "0-0"}


def test_an_error_ends_only_the_waits_of_its_streams() -> None:
    registry = Registry()
    bad, good = sub("a"), sub("b")
    registry.add(bad)
    registry.add(good)
    error = RuntimeError("not a stream")
    registry.fail(error, ["a"])
    assert taken(bad) == [error]
    assert taken(good) == []
    assert registry.streams() == {"b": "0-0"}


def test_raw_replies_in_either_protocol_become_entries_with_their_fields() -> None:
    resp2 = [[b"a", [[b"1-0", [b"k", b"c", b"m", b"x"]]]]]
    resp3 = {b"a": [[b"1-0", [b"k", b"c", b"m", b"x"]]]}
    want = [("a", [("1-0", {b"k": b"c", b"m": b"x"})])]
    assert parse_reply(resp2) == want
    assert parse_reply(resp3) == want
    assert parse_reply(None) == []
