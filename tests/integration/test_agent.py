"""A LangChain 1.x agent end to end on a real worker: `create_agent` with
`HumanInTheLoopMiddleware` and a SQLite checkpointer, run by reference. A chat streams until
the agent's tool call is interrupted for approval; the caller reads the pending request with
`get_state` (as an agent UI does), then approves, edits or rejects it by resuming, streaming
again. Two messages sent at once on one thread are answered one after the other. Every step
is compared with the same agent run in-process on a store of its own (ids masked: message and
interrupt ids are random per run). Two workers share the store."""

from __future__ import annotations

import asyncio
import datetime
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command, Interrupt

from runnable_k8s import RemoteError, RunnableK8s, SerializationRefused, Settings
from tests.conftest import make_settings
from tests.support.agent import Agent, build_agent
from tests.support.workers import WorkerProcess

AGENT = "tests.support.agent:assistant"
MODES = ["messages", "updates"]
_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


@dataclass
class Agents:
    settings: Settings
    conn: sqlite3.Connection

    def remote(self) -> RunnableK8s[Any, Any]:
        return RunnableK8s(ref=AGENT, settings=self.settings)

    def here(self) -> Agent:
        """The same agent in this process, on the worker's store."""
        return build_agent(SqliteSaver(self.conn))


@pytest.fixture(scope="module")
def agents(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agents]:
    db = tmp_path_factory.mktemp("agent") / "checkpoints.sqlite"
    settings = make_settings(redis_url, allowed_refs=("tests.support.agent:",))
    # Two workers on one store, as in production: a thread's runs may land on either.
    env = {"RK8S_TEST_SQLITE_DB": str(db)}
    workers = [WorkerProcess(settings, logs_dir, name=f"agent-{i}", env=env) for i in range(2)]
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        for worker in workers:
            worker.wait_ready(timeout=120)
        yield Agents(settings, conn)
    finally:
        conn.close()
        for worker in workers:
            worker.stop()


def norm(value: Any) -> Any:
    """`value` with random ids masked; containers keep their exact types."""
    if isinstance(value, BaseMessage):
        return norm({"class": type(value).__name__, **value.model_dump()})
    if isinstance(value, Interrupt):
        return ("Interrupt", norm(value.value), norm(value.id))
    if isinstance(value, str):
        return _VOLATILE.sub("<id>", value)
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(norm(v) for v in value)
    return value


def _thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


@dataclass
class Chat:
    """One conversation, remote and in-process side by side."""

    agents: Agents
    config: dict[str, Any]
    local: Agent
    local_config: dict[str, Any]

    def both(self, payload: Any) -> list[Any]:
        """Stream `payload` on both sides; assert the same stream; return the remote one."""
        remote = list(self.agents.remote().stream(payload, self.config, stream_mode=MODES))

        async def collect() -> list[Any]:
            chunks = self.local.astream(payload, self.local_config, stream_mode=MODES)
            return [c async for c in chunks]

        assert norm(remote) == norm(asyncio.run(collect()))
        return remote


@pytest.fixture
def chat(agents: Agents) -> Chat:
    return Chat(agents, _thread(), build_agent(InMemorySaver()), _thread())


def _ask(chat: Chat) -> Interrupt:
    """Ask for an email: the stream stops at the tool call, waiting for a decision."""
    streamed = chat.both({"messages": [{"role": "user", "content": "tell Ash hello"}]})
    tokens = [p for mode, p in streamed if mode == "messages"]
    assert tokens and all(type(t) is tuple for t in tokens)
    mode, last = streamed[-1]
    assert mode == "updates" and isinstance(last["__interrupt__"], tuple)
    (pending,) = last["__interrupt__"]
    (request,) = pending.value["action_requests"]
    assert request["name"] == "send_email"
    assert request["args"] == {"to": "ash@example.com", "body": "tell Ash hello"}
    # What an approval screen reads: the thread's state, equal to the store's own answer.
    state = chat.agents.remote().get_state(chat.config)
    assert state == chat.agents.here().get_state(chat.config)
    assert state.interrupts == (pending,)
    assert norm(state.values) == norm(chat.local.get_state(chat.local_config).values)
    return pending


def _messages(chat: Chat) -> list[BaseMessage]:
    values = chat.agents.remote().get_state(chat.config).values
    assert values == chat.agents.here().get_state(chat.config).values
    return list(values["messages"])


def test_two_messages_sent_at_once_on_one_thread_are_both_answered_in_order(chat: Chat) -> None:
    # Both submitted before either is answered, the first slow to answer, two workers free:
    # only the thread's line (enqueue, the default) keeps the second run from starting on the
    # same checkpoint, answering as if it came first, and overwriting the first exchange.
    questions = ["Slowly: what is a thread?", "And a run?"]
    remote = chat.agents.remote()
    runs = [
        remote.submit({"messages": [{"role": "user", "content": q}]}, chat.config)
        for q in questions
    ]
    first, second = (run.result(timeout=120) for run in runs)

    assert [m.content for m in first["messages"]] == [questions[0], f"Answer 1: {questions[0]}"]
    assert second["messages"][:2] == first["messages"]
    assert [m.content for m in second["messages"][2:]] == [
        questions[1],
        f"Answer 2: {questions[1]}",
    ]
    # Nothing lost: the thread holds both questions, in order, each followed by its answer,
    # as the same two messages sent one after the other in-process leave it.
    messages = _messages(chat)
    assert [(type(m), m.content) for m in messages] == [
        (HumanMessage, questions[0]),
        (AIMessage, f"Answer 1: {questions[0]}"),
        (HumanMessage, questions[1]),
        (AIMessage, f"Answer 2: {questions[1]}"),
    ]
    for question in questions:
        chat.local.invoke({"messages": [{"role": "user", "content": question}]}, chat.local_config)
    assert norm(messages) == norm(chat.local.get_state(chat.local_config).values["messages"])


def test_approve_runs_the_tool_and_answers(chat: Chat) -> None:
    _ask(chat)
    streamed = chat.both(Command(resume={"decisions": [{"type": "approve"}]}))

    assert any(mode == "messages" and p[0].content == "Done." for mode, p in streamed)
    *_, tool, answer = _messages(chat)
    assert (
        isinstance(tool, ToolMessage) and tool.content == "sent to ash@example.com: tell Ash hello"
    )
    assert isinstance(answer, AIMessage) and answer.content.startswith("Done. The tool said: sent")
    assert chat.agents.remote().get_state(chat.config).next == ()


def test_edit_runs_the_tool_with_the_reviewers_arguments(chat: Chat) -> None:
    _ask(chat)
    edited = {"name": "send_email", "args": {"to": "misty@example.com", "body": "hi Misty"}}
    chat.both(Command(resume={"decisions": [{"type": "edit", "edited_action": edited}]}))

    *_, tool, answer = _messages(chat)
    assert isinstance(tool, ToolMessage) and "sent to misty@example.com: hi Misty" in tool.content
    assert "misty@example.com" in answer.content


def test_reject_answers_without_running_the_tool(chat: Chat) -> None:
    pending = _ask(chat)
    # Resume keyed by the interrupt's id, as a UI that read it from get_state would.
    decision = {"decisions": [{"type": "reject", "message": "no emails today"}]}
    remote = list(
        chat.agents.remote().stream(
            Command(resume={pending.id: decision}), chat.config, stream_mode=MODES
        )
    )
    local_id = chat.local.get_state(chat.local_config).interrupts[0].id

    async def collect() -> list[Any]:
        chunks = chat.local.astream(
            Command(resume={local_id: decision}), chat.local_config, stream_mode=MODES
        )
        return [c async for c in chunks]

    assert norm(remote) == norm(asyncio.run(collect()))
    *_, tool, answer = _messages(chat)
    assert isinstance(tool, ToolMessage) and tool.status == "error"
    assert tool.content.endswith("no emails today")
    assert answer.content == f"Done. The tool said: {tool.content}"
    assert not any("sent to" in str(m.content) for m in _messages(chat))


def test_a_decision_the_tool_does_not_allow_fails_as_in_process(chat: Chat) -> None:
    _ask(chat)
    decision = Command(resume={"decisions": [{"type": "respond", "message": "meh"}]})
    with pytest.raises(ValueError, match="is not allowed") as in_process:
        chat.local.invoke(decision, chat.local_config)

    with pytest.raises(RemoteError) as remote:
        chat.agents.remote().invoke(decision, chat.config)

    assert remote.value.remote_type.endswith("ValueError")
    assert norm(remote.value.remote_message) == norm(str(in_process.value))
    # Nothing was lost: the request is still pending, on both sides.
    state = chat.agents.remote().get_state(chat.config)
    assert state == chat.agents.here().get_state(chat.config)
    assert norm(state.interrupts) == norm(chat.local.get_state(chat.local_config).interrupts)
    # LangGraph keeps the first answer it was given for that interrupt, in-process too: a
    # second resume fails the same way on both sides.
    approve = Command(resume={"decisions": [{"type": "approve"}]})
    with pytest.raises(ValueError, match="is not allowed"):
        chat.local.invoke(approve, chat.local_config)
    with pytest.raises(RemoteError, match="is not allowed"):
        chat.agents.remote().invoke(approve, chat.config)


def test_resume_on_a_thread_with_nothing_pending_does_what_langgraph_does(chat: Chat) -> None:
    # LangGraph runs the agent from the start with no input (its model then answers the
    # system prompt): odd, but what in-process does, so what the remote agent does.
    streamed = chat.both(Command(resume={"decisions": [{"type": "approve"}]}))
    assert streamed[-1][0] == "updates" and "__interrupt__" in streamed[-1][1]


def test_a_decision_that_cannot_travel_is_refused_naming_its_field(chat: Chat) -> None:
    _ask(chat)
    edited = {
        "name": "send_email",
        "args": {"to": "misty@example.com", "at": datetime.date.today()},
    }
    decision = {"decisions": [{"type": "edit", "edited_action": edited}]}
    field = "resume.decisions[0].edited_action.args.at"
    with pytest.raises(
        SerializationRefused, match=rf"input contains datetime.date at {re.escape(field)}"
    ):
        chat.agents.remote().invoke(Command(resume=decision), chat.config)
    # Refused before sending: the request is still pending, and a valid decision goes through.
    assert len(chat.agents.remote().get_state(chat.config).interrupts) == 1
    chat.both(Command(resume={"decisions": [{"type": "approve"}]}))
