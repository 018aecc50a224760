"""The Celery task message the producer LPUSHes itself, checked against Celery and kombu."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runnable_k8s.protocol.task_message import TASK_NAME, build

celery = pytest.importorskip("celery")

WIRE = '[1,"run","run-42",4102444800.0,0]\n' + "a" * 64 + '\n{"secret":"payload \\u00e9"}\u00e9'
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Headers Celery 5.7 adds for features we never use; its worker reads them with defaults.
OPTIONAL_CELERY_HEADERS = {"replaced_task_nesting", "stamped_headers", "stamps"}


def message(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "run_id": "run-42",
        "queue": "my-queue",
        "description": "RunnableK8s(name='chain', mode='invoke')",
    }
    args.update(overrides)
    result: dict[str, Any] = json.loads(build(WIRE, **args))
    return result


def celery_message() -> Any:
    app = celery.Celery("x", broker="memory://", set_as_current=False)
    return app.amqp.as_task_v2(
        "run-42",
        TASK_NAME,
        args=[WIRE],
        kwargs={},
        argsrepr="RunnableK8s(name='chain', mode='invoke')",
        kwargsrepr="{}",
        ignore_result=True,
    )


def test_required_fields() -> None:
    msg = message()
    assert msg["headers"]["task"] == "runnable_k8s.run"
    assert msg["headers"]["id"] == "run-42"
    assert msg["headers"]["root_id"] == "run-42"
    assert msg["properties"]["correlation_id"] == "run-42"
    assert msg["properties"]["delivery_info"] == {"exchange": "", "routing_key": "my-queue"}
    assert "body_encoding" not in msg["properties"]
    assert msg["content-type"] == "application/json"
    assert msg["content-encoding"] == "utf-8"
    assert msg["properties"]["delivery_tag"]


def test_body_is_args_kwargs_embed() -> None:
    body = json.loads(message()["body"])
    assert body == [[WIRE], {}, EMBED]


def test_argsrepr_carries_the_description_not_the_payload() -> None:
    msg = message()
    assert msg["headers"]["argsrepr"] == "RunnableK8s(name='chain', mode='invoke')"
    assert msg["headers"]["kwargsrepr"] == "{}"
    headers = json.dumps(msg["headers"])
    assert "payload" not in headers and "a" * 64 not in headers


def test_delivery_tags_are_unique() -> None:
    assert message()["properties"]["delivery_tag"] != message()["properties"]["delivery_tag"]


def test_headers_match_celery_protocol_v2() -> None:
    ours = message()["headers"]
    theirs = celery_message().headers
    assert set(ours) <= set(theirs)
    assert set(theirs) - set(ours) <= OPTIONAL_CELERY_HEADERS
    for key in set(ours) - {"origin"}:
        assert ours[key] == theirs[key], key


def test_body_matches_celery_protocol_v2() -> None:
    args, kwargs, embed = celery_message().body
    assert json.loads(message()["body"]) == [list(args), kwargs, embed]


def test_kombu_decodes_the_message_as_its_redis_transport_would() -> None:
    from kombu.transport.virtual import Message

    class Channel:
        """The one channel method kombu's virtual Message needs to read a payload."""

        def decode_body(self, body: str, encoding: str | None = None) -> str:
            assert encoding is None
            return body

    received = Message(message(), channel=Channel())
    assert received.decode() == [[WIRE], {}, EMBED]
    assert received.headers["task"] == TASK_NAME
    assert received.delivery_info["routing_key"] == "my-queue"


def test_special_characters_in_ids_stay_json() -> None:
    msg = message(run_id='r"\n', queue="q\\", description="d\u00e9")
    assert msg["headers"]["id"] == 'r"\n'
    assert msg["properties"]["delivery_info"]["routing_key"] == "q\\"
