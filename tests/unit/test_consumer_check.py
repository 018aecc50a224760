"""The worker consumer's check accepts exactly what the producer writes (so a change to one
without the other fails here, not in production) and refuses the same message changed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu.transport.virtual import Message

from runnable_k8s.protocol.task_message import build
from runnable_k8s.worker.consumer import check

RUN_ID = "0123456789abcdef0123456789abcdef"
WIRE = f'[1,"run","{RUN_ID}",4102444800.0,0]\n' + "a" * 64 + '\n{"x":"\\u00e9"}\u00e9'
LIMIT = 64 * 1024


class Channel:
    """The one channel method kombu's virtual Message needs to read a payload."""

    def decode_body(self, body: str, encoding: str | None = None) -> str:
        return body


def delivered(payload: dict[str, Any]) -> Message:
    return Message(payload, channel=Channel())


def produced() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(
        build(WIRE, run_id=RUN_ID, queue="q", description="invoke chain run=x")
    )
    return payload


def test_the_producers_message_passes() -> None:
    assert check(delivered(produced()), LIMIT) is None


def test_a_message_kombu_put_back_passes() -> None:
    payload = produced()
    payload["headers"]["redelivered"] = True
    payload["properties"]["delivery_info"]["redelivered"] = True
    assert check(delivered(payload), LIMIT) is None


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("task", "celery.group", "unknown_task"),
        ("eta", "2999-01-01T00:00:00", "malformed"),
        ("retries", False, "malformed"),
        ("replaced_task_nesting", 1, "malformed"),
        ("id", "another", "malformed"),
        ("redelivered", "yes", "malformed"),
    ],
)
def test_a_changed_header_is_refused(key: str, value: object, reason: str) -> None:
    payload = produced()
    payload["headers"][key] = value
    refusal = check(delivered(payload), LIMIT)
    assert refusal is not None and refusal.reason == reason


def test_an_envelope_over_the_limit_is_refused_as_too_large() -> None:
    refusal = check(delivered(produced()), len(WIRE.encode()) - 1)
    assert refusal is not None and refusal.reason == "too_large"
