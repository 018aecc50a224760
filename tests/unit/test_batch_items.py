"""The items of a batch run's output (protocol/batch.py): written by the worker, read by the
producer, in the shape earlier versions wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runnable_k8s.errors import RemoteError, SignatureRejected
from runnable_k8s.producer.results import unwrap_items
from runnable_k8s.protocol.batch import ItemFailed, decode_items, encode_items
from runnable_k8s.protocol.messages import Outcome, Protocol, RemoteFailure

FAILURE = RemoteFailure("builtins.ValueError", "bad input", "Traceback ...")


def test_items_round_trip_through_the_data_codec(protocol: Protocol) -> None:
    results: list[Any] = ["a", ItemFailed(FAILURE), {"k": [1, 2]}, None]
    data = protocol.data
    wire = data.encode_data(encode_items(results), what="output")
    assert decode_items(data.decode_data(wire), len(results)) == results


def test_the_wire_shape_is_the_one_earlier_versions_wrote() -> None:
    assert encode_items(["x", ItemFailed(FAILURE)]) == [
        {"ok": True, "v": "x"},
        {
            "ok": False,
            "e": {
                "type": "builtins.ValueError",
                "message": "bad input",
                "traceback": "Traceback ...",
            },
        },
    ]


def test_the_producer_puts_each_failure_in_its_place(protocol: Protocol) -> None:
    output = protocol.data.encode_data(encode_items([1, ItemFailed(FAILURE), 3]), what="output")
    items = unwrap_items(protocol, Outcome("run-a", "succeeded", output=output), 3)
    assert items[0] == 1 and items[2] == 3
    assert isinstance(items[1], RemoteError)
    assert (items[1].remote_type, items[1].remote_message) == ("builtins.ValueError", "bad input")
    assert items[1].run_id == "run-a"


@pytest.mark.parametrize(
    ("items", "count"),
    [
        ({"ok": True, "v": 1}, 1),  # not a list
        ([{"ok": True, "v": 1}], 2),  # fewer items than inputs
        ([{"v": 1}], 1),  # neither an output nor a failure
        ([{"ok": False, "e": "text"}], 1),  # a failure must be an object
        ([{"ok": "true", "v": 1}], 1),  # only the JSON true is ok
        ([7], 1),
    ],
)
def test_malformed_items_are_refused(items: Any, count: int) -> None:
    with pytest.raises(SignatureRejected):
        decode_items(json.loads(json.dumps(items)), count)


def test_a_malformed_batch_output_names_its_run(protocol: Protocol) -> None:
    output = protocol.data.encode_data([{"v": 1}], what="output")
    with pytest.raises(SignatureRejected, match="run-a"):
        unwrap_items(protocol, Outcome("run-a", "succeeded", output=output), 1)
