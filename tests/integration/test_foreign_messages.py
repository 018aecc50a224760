"""Queue items that are Celery messages but not our producer's: Celery's built-in tasks, made-up
task names, and our own task with headers or a body embed Celery would act on before our task
verifies anything. Each is refused where the consumer turns messages into requests: logged,
counted, acknowledged, never run, and the worker keeps serving."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from runnable_k8s import RunnableK8s, Settings
from runnable_k8s.embedded import free_port
from runnable_k8s.models import DemoChatModel
from runnable_k8s.producer.client import new_run_id
from runnable_k8s.protocol import task_message
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.integration.test_security import assert_never_ran, demo_json, request_for
from tests.reliability.conftest import wait_until
from tests.support.workers import WorkerProcess


class Guarded:
    def __init__(self, settings: Settings, worker: WorkerProcess, port: int) -> None:
        self.settings = settings
        self.worker = worker
        self.port = port

    def rejected(self, reason: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "runnable_k8s_rejected_messages_total"
                    and sample.labels.get("reason") == reason
                ):
                    return float(sample.value)
        raise AssertionError(f"no rejected counter for reason={reason}")


@pytest.fixture(scope="module")
def guarded(redis_url: str, logs_dir: Path) -> Iterator[Guarded]:
    settings = make_settings(redis_url)
    port = free_port()
    env = {"RUNNABLE_K8S_METRICS_PORT": str(port)}
    process = WorkerProcess(settings, logs_dir, concurrency=8, env=env, name="guarded")
    process.wait_ready()
    yield Guarded(settings, process, port)
    process.stop()


def celery_message(settings: Settings, run_id: str, wire: str = "x") -> dict[str, Any]:
    """A message exactly as our producer writes it, as a dict to change."""
    built = task_message.build(wire, run_id=run_id, queue=settings.queue, description="probe")
    message: dict[str, Any] = json.loads(built)
    return message


def with_body(message: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    message["body"] = json.dumps([args, kwargs, embed])


def accumulate_to(queue: str) -> dict[str, Any]:
    """A signature a built-in task would publish: onto `queue`, which nothing consumes."""
    app = Celery("forger", set_as_current=False)
    return dict(app.signature("celery.accumulate", args=(1, 2), queue=queue))


def builtin_calls(decoy: str) -> dict[str, tuple[list[Any], dict[str, Any]]]:
    """Arguments that make each built-in task do something (seen to run without the guard)."""
    five = [accumulate_to(decoy) for _ in range(5)]
    group_id = str(uuid.uuid4())
    return {
        "celery.accumulate": ([1, 2], {}),
        "celery.group": ([five, [[group_id, None], None], group_id, []], {}),
        "celery.chain": ([], {"tasks": five}),
        "celery.chord": ([five, accumulate_to(decoy)], {}),
        "celery.chord_unlock": ([str(uuid.uuid4()), accumulate_to(decoy)], {}),
        "celery.backend_cleanup": ([], {}),
        "celery.map": ([accumulate_to(decoy), [[1], [2]]], {}),
        "celery.starmap": ([accumulate_to(decoy), [[1, 2], [3, 4]]], {}),
        "celery.chunks": ([accumulate_to(decoy), [[1, 2], [3, 4]], 1], {}),
    }


def acknowledged(client: redis.Redis, settings: Settings, run_ids: set[str]) -> bool:
    """None of `run_ids` is still queued or held unacknowledged (so none comes back)."""
    held = [json.loads(raw)[0] for raw in client.hvals(keys.UNACKED)]
    queued = [json.loads(raw) for raw in client.lrange(settings.queue, 0, -1)]
    return not any(m.get("headers", {}).get("id") in run_ids for m in held + queued)


def push_all(client: redis.Redis, settings: Settings, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        client.lpush(settings.queue, json.dumps(message))


def wait_refused(guarded: Guarded, run_ids: set[str]) -> str:
    lines: list[str] = []

    def all_logged() -> bool:
        lines[:] = [
            line
            for line in guarded.worker.log().splitlines()
            if "rejected message claimed_run=" in line
            and any(f"claimed_run={run_id} " in line for run_id in run_ids)
        ]
        return len(lines) >= len(run_ids)

    wait_until(all_logged, 20, f"{len(run_ids)} refusals logged")
    return "\n".join(lines)


def assert_still_serving(settings: Settings) -> None:
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    assert "Pichu" in remote.invoke("What does Pikachu evolve from?").content


def test_celery_builtin_and_made_up_task_names_are_refused_before_anything_runs(
    guarded: Guarded, redis_client: redis.Redis
) -> None:
    settings = guarded.settings
    decoy = f"decoy-{uuid.uuid4().hex[:8]}"
    calls = builtin_calls(decoy)
    calls["runnable_k8s.not_a_task"] = ([1, 2], {})
    builtins = Celery("probe", set_as_current=False)
    builtins.finalize()
    # Every task a Celery app registers by itself, not only the ones known today.
    assert {name for name in builtins.tasks if name.startswith("celery.")} <= set(calls)
    before = guarded.rejected("unknown_task")
    messages, ids = [], {}
    for name, (args, kwargs) in calls.items():
        run_id = new_run_id()
        message = celery_message(settings, run_id)
        message["headers"]["task"] = name
        with_body(message, args, kwargs)
        messages.append(message)
        ids[run_id] = name
    push_all(redis_client, settings, messages)
    assert_still_serving(settings)
    refusals = wait_refused(guarded, set(ids))
    for run_id, name in ids.items():
        assert f"claimed_run={run_id} reason=task {name!r} is not runnable_k8s.run" in refusals
    log = guarded.worker.log()
    assert "Task celery." not in log
    assert "Task runnable_k8s.not_a_task" not in log
    assert "unregistered task" not in log
    # `celery.group` and friends would have published their signatures here.
    assert redis_client.llen(decoy) == 0
    assert guarded.rejected("unknown_task") - before == len(calls)
    wait_until(lambda: acknowledged(redis_client, settings, set(ids)), 10, "refusals acked")


def test_a_correct_envelope_under_a_foreign_task_name_is_refused(
    guarded: Guarded, redis_client: redis.Redis
) -> None:
    settings = guarded.settings
    request = request_for(settings, demo_json(settings), "What does Pikachu evolve from?")
    wire, _ = Protocol(settings).seal_request(request)
    message = celery_message(settings, request.run_id, wire.decode())
    message["headers"]["task"] = "celery.accumulate"
    push_all(redis_client, settings, [message])
    refusal = wait_refused(guarded, {request.run_id})
    assert "reason=task 'celery.accumulate' is not runnable_k8s.run" in refusal
    assert_never_ran(redis_client, request.run_id)
    assert "Task celery.accumulate" not in guarded.worker.log()
    assert_still_serving(settings)


Change = Callable[[dict[str, Any], str], None]


def set_header(key: str, value: object) -> Change:
    def change(message: dict[str, Any], decoy: str) -> None:
        message["headers"][key] = value

    return change


def set_embed(key: str) -> Change:
    def change(message: dict[str, Any], decoy: str) -> None:
        args, kwargs, embed = json.loads(message["body"])
        link = [accumulate_to(decoy)]
        embed[key] = link if key != "chord" else accumulate_to(decoy)
        message["body"] = json.dumps([args, kwargs, embed])

    return change


def add_call(extra_args: list[Any], kwargs: dict[str, Any]) -> Change:
    def change(message: dict[str, Any], decoy: str) -> None:
        args, _, embed = json.loads(message["body"])
        message["body"] = json.dumps([args + extra_args, kwargs, embed])

    return change


def set_property(key: str, value: object) -> Change:
    def change(message: dict[str, Any], decoy: str) -> None:
        message["properties"][key] = value

    return change


def other_id(message: dict[str, Any], decoy: str) -> None:
    message["headers"]["id"] = message["headers"]["root_id"] = new_run_id()


CHANGES: dict[str, Change] = {
    "callbacks": set_embed("callbacks"),
    "errbacks": set_embed("errbacks"),
    "chain": set_embed("chain"),
    "chord": set_embed("chord"),
    "group": set_header("group", str(uuid.uuid4())),
    "eta": set_header("eta", "2999-01-01T00:00:00+00:00"),
    "countdown eta": set_header("eta", "2000-01-01T00:00:00+00:00"),
    "expires": set_header("expires", "2000-01-01T00:00:00+00:00"),
    "timelimit": set_header("timelimit", [0.01, 0.01]),
    "retries": set_header("retries", 3),
    "replaced_task_nesting": set_header("replaced_task_nesting", 1),
    "stamps": set_header("stamped_headers", ["x"]),
    "ignore_result": set_header("ignore_result", False),
    "shadow": set_header("shadow", "celery.accumulate"),
    "parent_id": set_header("parent_id", str(uuid.uuid4())),
    "root_id": set_header("root_id", str(uuid.uuid4())),
    "kwargs": add_call([], {"extra": 1}),
    "extra args": add_call([1], {}),
    "reply_to": set_property("reply_to", "somewhere"),
    "task id not the envelope's": other_id,
    "v1 message (no task header)": lambda message, decoy: message["headers"].pop("task"),
}


def test_our_task_with_links_or_headers_our_producer_never_sets_is_refused(
    guarded: Guarded, redis_client: redis.Redis
) -> None:
    settings = guarded.settings
    decoy = f"decoy-{uuid.uuid4().hex[:8]}"
    protocol = Protocol(settings)
    messages, ids, requests = [], {}, []
    for what, change in CHANGES.items():
        # A genuinely signed run: only the Celery message around it is changed.
        request = request_for(settings, demo_json(settings), f"Pikachu? ({what})")
        wire, _ = protocol.seal_request(request)
        message = celery_message(settings, request.run_id, wire.decode())
        change(message, decoy)
        messages.append(message)
        ids[message["headers"]["id"]] = what
        requests.append(request)
    before = guarded.rejected("malformed") + guarded.rejected("unknown_task")
    push_all(redis_client, settings, messages)
    assert_still_serving(settings)
    wait_refused(guarded, set(ids))
    time.sleep(0.5)  # a run that slipped through would have started by now
    for request in requests:
        assert_never_ran(redis_client, request.run_id)
    assert redis_client.llen(decoy) == 0
    after = guarded.rejected("malformed") + guarded.rejected("unknown_task")
    assert after - before == len(CHANGES)
    wait_until(lambda: acknowledged(redis_client, settings, set(ids)), 10, "refusals acked")


def test_a_redelivered_message_of_our_producer_still_runs(
    guarded: Guarded, redis_client: redis.Redis
) -> None:
    # kombu marks a message it puts back (after a worker died) as redelivered.
    settings = guarded.settings
    request = request_for(settings, demo_json(settings), "What does Pikachu evolve from?")
    wire, _ = Protocol(settings).seal_request(request)
    message = celery_message(settings, request.run_id, wire.decode())
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True
    push_all(redis_client, settings, [message])
    guarded.worker.wait_for_log(f"finished run={request.run_id} name=test state=succeeded")
