"""Human in the loop on real workers: a LangGraph graph run by reference stops at `interrupt()`,
its run ends "interrupted" (status, metrics, logs, CLI; never a failure), and `Command(...)`
resumes it on its thread, from Python and from the CLI.

Every expected value comes from the same graph run in-process on a store of its own. Interrupt
ids are derived from checkpoint ids (random per run), so the remote ids are compared with the
ids the worker's store holds for the thread, read here from the same SQLite file."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command, Interrupt, Send

from runnable_k8s import ConfigurationError, RunnableK8s, SerializationRefused, Settings
from tests.conftest import make_settings
from tests.integration.test_observability import free_port
from tests.integration.test_task_states import TaskEvents, finals_of, terminal
from tests.support.hitl import Graph, build_approval, build_two_reviews
from tests.support.workers import WorkerProcess, cli

REFS = ("tests.support.hitl:",)
APPROVAL = "tests.support.hitl:approval"
TWO_REVIEWS = "tests.support.hitl:two_reviews"
Builder = Callable[[Any], Graph]


@dataclass
class Store:
    settings: Settings
    worker: WorkerProcess
    metrics_port: int
    conn: sqlite3.Connection

    def remote(self, ref: str) -> RunnableK8s[Any, Any]:
        return RunnableK8s(ref=ref, settings=self.settings)

    def pending_ids(self, build: Builder, config: dict[str, Any]) -> list[str]:
        """The ids of the interrupts the worker's store holds for a thread."""
        state = build(SqliteSaver(self.conn)).get_state(config)
        return [i.id for i in state.interrupts]

    def runs_interrupted(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("runnable_k8s_runs_total{") and 'outcome="interrupted"' in line
        )


@pytest.fixture(scope="module")
def store(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    db = tmp_path_factory.mktemp("hitl") / "checkpoints.sqlite"
    settings = make_settings(redis_url, allowed_refs=REFS)
    port = free_port()
    env = {
        "RK8S_TEST_SQLITE_DB": str(db),
        "RUNNABLE_K8S_METRICS_PORT": str(port),
        "RUNNABLE_K8S_LOG_JSON": "true",
    }
    worker = WorkerProcess(settings, logs_dir, name="hitl", env=env)
    worker.wait_ready()
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        yield Store(settings, worker, port, conn)
    finally:
        conn.close()
        worker.stop()


def _thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


def _ids_apart(value: Any) -> tuple[Any, list[str]]:
    """`value` with each interrupt's id replaced by its position, and the ids in order (the
    containers' own types, list or tuple, are kept: they are part of what is compared)."""
    ids: list[str] = []

    def walk(node: Any) -> Any:
        if isinstance(node, Interrupt):
            ids.append(node.id)
            return Interrupt(value=walk(node.value), id=f"#{len(ids)}")
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, tuple):
            return tuple(walk(v) for v in node)
        return node

    return walk(value), ids


def _same_as_in_process(remote: Any, local: Any) -> list[str]:
    """Assert `remote` is `local` but for interrupt ids; return the remote ids."""
    shown, ids = _ids_apart(remote)
    expected, local_ids = _ids_apart(local)
    assert shown == expected
    assert len(ids) == len(local_ids)
    return ids


def _interrupts_of(output: dict[str, Any]) -> list[Any]:
    interrupts = output["__interrupt__"]
    assert all(type(i) is Interrupt for i in interrupts)  # LangGraph's class, not a stand-in
    return list(interrupts)


def test_a_graph_stopped_at_interrupt_returns_what_in_process_invoke_returns(
    store: Store,
) -> None:
    config, local_config = _thread(), _thread()
    local = build_approval(InMemorySaver())
    before = store.runs_interrupted()

    handle = store.remote(APPROVAL).submit({"draft": "hello"}, config)
    output = handle.result(timeout=60)
    expected = local.invoke({"draft": "hello"}, local_config)

    ids = _same_as_in_process(output, expected)
    assert [i.value for i in _interrupts_of(output)] == [i.value for i in _interrupts_of(expected)]
    assert ids == store.pending_ids(build_approval, config)
    assert handle.status().state == "interrupted"
    assert handle.status().done
    # Counted, and logged, as interrupted: not a failure.
    assert store.runs_interrupted() == before + 1
    finished = [
        json.loads(line)
        for line in store.worker.log().splitlines()
        if line.startswith("{") and handle.id in line and '"finished"' in line
    ]
    assert [f["outcome"] for f in finished] == ["interrupted"]
    assert finished[0]["level"] == "INFO"


def test_resume_with_a_plain_value_continues_as_in_process(store: Store) -> None:
    config, local_config = _thread(), _thread()
    local = build_approval(InMemorySaver())
    remote = store.remote(APPROVAL)
    remote.invoke({"draft": "d"}, config)
    local.invoke({"draft": "d"}, local_config)

    handle = remote.submit(Command(resume="yes"), config)
    output = handle.result(timeout=60)

    assert output == local.invoke(Command(resume="yes"), local_config)
    assert "__interrupt__" not in output
    assert handle.status().state == "succeeded"
    assert store.pending_ids(build_approval, config) == []


def test_resume_maps_keyed_by_interrupt_id_answer_two_pending_interrupts(store: Store) -> None:
    config, local_config = _thread(), _thread()
    local = build_two_reviews(InMemorySaver())
    remote = store.remote(TWO_REVIEWS)
    first = remote.invoke({}, config)
    local_first = local.invoke({}, local_config)
    ids = _same_as_in_process(first, local_first)
    assert sorted(ids) == sorted(store.pending_ids(build_two_reviews, config))

    def answers(output: dict[str, Any]) -> dict[str, Any]:
        return {i.id: f"ok: {i.value['question']}" for i in _interrupts_of(output)}

    resumed = remote.invoke(Command(resume=answers(first)), config)
    expected = local.invoke(Command(resume=answers(local_first)), local_config)
    assert resumed == expected
    assert len(resumed["answers"]) == 2


def test_command_update_and_goto_travel_as_input(store: Store) -> None:
    config, local_config = _thread(), _thread()
    local = build_approval(InMemorySaver())
    remote = store.remote(APPROVAL)
    remote.invoke({}, config)
    local.invoke({}, local_config)
    command = Command(update={"draft": "edited"}, goto="publish")

    output = remote.invoke(command, config)

    _same_as_in_process(output, local.invoke(command, local_config))
    assert output["draft"] == "edited"
    # Send(node, arg) travels too: the graph runs `publish` with the given state.
    sends = Command(goto=[Send("publish", {"draft": "sent"})], resume="fine")
    _same_as_in_process(
        remote.invoke(sends, config),
        local.invoke(sends, local_config),
    )


async def _collect(chunks: Any) -> list[Any]:
    return [chunk async for chunk in chunks]


@pytest.mark.parametrize("mode", ["updates", "values"])
def test_streams_carry_the_interrupt_update_as_in_process_astream(store: Store, mode: str) -> None:
    remote = store.remote(APPROVAL)
    config, local_config = _thread(), _thread()
    local = build_approval(InMemorySaver())

    chunks = list(remote.stream({"draft": "s"}, config, stream_mode=mode))

    expected = asyncio.run(_collect(local.astream({"draft": "s"}, local_config, stream_mode=mode)))
    ids = _same_as_in_process(chunks, expected)
    assert isinstance(chunks[-1]["__interrupt__"], tuple)  # as in-process: not a list
    assert ids == store.pending_ids(build_approval, config)
    resume = Command(resume="ok")
    assert asyncio.run(_collect(remote.astream(resume, config, stream_mode=mode))) == asyncio.run(
        _collect(local.astream(resume, local_config, stream_mode=mode))
    )


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(settings, *args, check=False)  # the test reads each exit code itself


def test_cli_shows_an_interrupted_run_and_resumes_it(store: Store) -> None:
    thread = uuid.uuid4().hex
    local, local_config = build_approval(InMemorySaver()), _thread()
    expected = local.invoke({"draft": "cli"}, local_config)
    settings = store.settings

    submitted = _cli(
        settings, "submit", APPROVAL, "--ref", "--thread", thread, "--input", '{"draft": "cli"}'
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    result = _cli(settings, "result", run_id, "--timeout", "60")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    config = {"configurable": {"thread_id": thread}}
    (pending,) = store.pending_ids(build_approval, config)
    assert shown["__interrupt__"] == [{"value": expected["__interrupt__"][0].value, "id": pending}]
    assert {k: v for k, v in shown.items() if k != "__interrupt__"} == {
        k: v for k, v in expected.items() if k != "__interrupt__"
    }
    status = _cli(settings, "status", run_id, "--json")
    assert json.loads(status.stdout)["state"] == "interrupted"

    answer = {"approved": True, "note": "looks good"}
    resumed = _cli(
        settings, "submit", APPROVAL, "--ref", "--thread", thread, "--resume", json.dumps(answer)
    )
    assert resumed.returncode == 0, resumed.stderr
    final = _cli(settings, "result", resumed.stdout.strip(), "--timeout", "60")
    assert json.loads(final.stdout) == local.invoke(Command(resume=answer), local_config)
    both = _cli(settings, "submit", APPROVAL, "--ref", "--input", "{}", "--resume", "1")
    assert both.returncode == 2
    assert "exactly one of --input and --resume" in both.stderr


def test_resume_on_a_thread_without_a_pending_interrupt_behaves_as_in_process(
    store: Store,
) -> None:
    remote = store.remote(APPROVAL)
    local = build_approval(InMemorySaver())
    # A finished thread, and a thread never seen.
    config, local_config = _thread(), _thread()
    remote.invoke({}, config)
    local.invoke({}, local_config)
    remote.invoke(Command(resume="yes"), config)
    local.invoke(Command(resume="yes"), local_config)
    for cfg, local_cfg in ((config, local_config), (_thread(), _thread())):
        _same_as_in_process(
            remote.invoke(Command(resume="again"), cfg),
            local.invoke(Command(resume="again"), local_cfg),
        )


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (Command(resume=datetime.datetime(2026, 1, 1)), "resume"),
        (Command(resume={"some-id": {"at": datetime.date(2026, 1, 1)}}), "resume.some-id.at"),
        (Command(update={"draft": b"bytes"}), "update.draft"),
        (Command(goto=[Send("publish", {"when": datetime.time(1)})]), "goto[0].arg.when"),
    ],
)
def test_a_command_that_cannot_travel_is_refused_naming_its_field(
    store: Store, command: Command[Any], field: str
) -> None:
    with pytest.raises(SerializationRefused, match=rf"input contains \S+ at {re.escape(field)}, "):
        store.remote(APPROVAL).invoke(command, _thread())


def test_a_goto_or_graph_that_cannot_travel_is_refused(store: Store) -> None:
    remote = store.remote(APPROVAL)
    with pytest.raises(SerializationRefused, match=r"Command\.goto may name nodes"):
        remote.invoke(Command(goto=[object()]), _thread())
    with pytest.raises(SerializationRefused, match=r"Command\.graph must be None or"):
        remote.invoke(Command(graph="other", resume=1), _thread())


def test_a_thread_id_that_is_not_a_string_is_refused(store: Store) -> None:
    remote = store.remote(APPROVAL)
    for thread_id in (7, uuid.uuid4(), None):
        with pytest.raises(ConfigurationError, match=r"thread_id'\] must be a string"):
            remote.invoke({}, {"configurable": {"thread_id": thread_id}})


def test_an_interrupted_run_is_a_succeeded_celery_task(store: Store) -> None:
    events = TaskEvents(store.settings.require_redis_url())
    try:
        replies = events.app.control.enable_events(
            destination=[store.worker.hostname], reply=True, timeout=5
        )
        assert "enabled" in str(replies)
        remote = store.remote(APPROVAL)
        # The receiver subscribes on its first poll: submit until it sees a run's final event.
        for _ in range(10):
            handle = remote.submit({}, _thread())
            handle.result(timeout=60)
            time.sleep(0.5)
            if finals_of(events, handle.id):
                break
        else:
            raise AssertionError("the event receiver never saw a task event")
        assert handle.status().state == "interrupted"
        final = terminal(events, handle.id)
        assert final["type"] == "task-succeeded", final
    finally:
        events.close()
