"""LangSmith trace propagation: caller headers -> sanitized -> worker runs nest under the step.

The caller runs in this process; the "worker" is a separate Python process with its own
LangSmith environment. Both post to one fake LangSmith API (tests/support/langsmith_recorder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks.manager import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tracers.langchain import wait_for_all_tracers
from langsmith import run_trees as ls_run_trees
from langsmith import utils as ls_utils
from langsmith.run_helpers import get_current_run_tree, get_tracing_context

from runnable_k8s.models import DemoChatModel
from runnable_k8s.protocol.tracing import (
    BAGGAGE_HEADER,
    MAX_HEADER_CHARS,
    TRACE_HEADER,
    remote_parent,
    sanitize,
    trace_headers,
)
from tests.support.langsmith_recorder import LangSmithRecorder

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------
# Fixtures: one LangSmith environment for this process, restored afterwards


def _clear_langsmith_caches() -> None:
    # langsmith caches env lookups (lru_cache) and one global client per process.
    ls_utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    ls_utils.get_tracer_project.cache_clear()


class LangSmithEnv:
    """Sets this process's LangSmith env (as a worker/caller process would have it)."""

    def __init__(self) -> None:
        self._saved_env = dict(os.environ)
        self._saved_client = ls_run_trees._CLIENT

    def apply(self, env: dict[str, str]) -> None:
        self._drop_client()
        for key in list(os.environ):
            if key.startswith(("LANGSMITH_", "LANGCHAIN_")):
                del os.environ[key]
        os.environ.update(env)
        _clear_langsmith_caches()

    def _drop_client(self) -> None:
        client = ls_run_trees._CLIENT
        if client is not None and client is not self._saved_client:
            client.close(timeout=10)
        ls_run_trees._CLIENT = None

    def restore(self) -> None:
        self._drop_client()
        ls_run_trees._CLIENT = self._saved_client
        os.environ.clear()
        os.environ.update(self._saved_env)
        _clear_langsmith_caches()


@pytest.fixture
def recorder() -> Iterator[LangSmithRecorder]:
    with LangSmithRecorder() as server:
        yield server


@pytest.fixture
def ls_env(recorder: LangSmithRecorder) -> Iterator[LangSmithEnv]:
    # Depends on `recorder` so the server outlives the client's final flush on restore.
    env = LangSmithEnv()
    env.apply({})  # tracing off unless a test turns it on
    try:
        yield env
    finally:
        env.restore()


@pytest.fixture
def traced(ls_env: LangSmithEnv, recorder: LangSmithRecorder) -> LangSmithRecorder:
    """Tracing on in this process, posting to the recorder, project "caller-project"."""
    ls_env.apply(recorder.env(LANGSMITH_PROJECT="caller-project"))
    return recorder


# --------------------------------------------------------------------------------------
# A caller-side step shaped like RunnableK8s: LangChain opens its run, we read the headers


class Step(RunnableSerializable[Any, Any]):
    """Calls `remote(headers)` inside its own LangChain run, as RunnableK8s ships the task."""

    remote: Any = None

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._run, input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._arun, input, config)

    def _run(self, input: Any, run_manager: CallbackManagerForChainRun) -> Any:
        headers = trace_headers(run_manager)
        remote = self.remote or (lambda headers: None)
        return {"headers": headers, "run_id": str(run_manager.run_id), "remote": remote(headers)}

    async def _arun(self, input: Any, run_manager: AsyncCallbackManagerForChainRun) -> Any:
        return {"headers": trace_headers(run_manager), "run_id": str(run_manager.run_id)}


WORKER_SNIPPET = textwrap.dedent(
    """
    import asyncio, json, sys

    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tracers.langchain import wait_for_all_tracers

    from runnable_k8s.models import DemoChatModel
    from runnable_k8s.protocol.tracing import remote_parent, sanitize

    raw = json.loads(sys.argv[1])  # as it would come out of the task payload
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | DemoChatModel()

    async def main():
        with remote_parent(sanitize(raw)):
            out = await chain.ainvoke({"q": "hi"}, {"run_name": "remote-invoke"})
            chunks = [c.content async for c in chain.astream(
                {"q": "hi"}, {"run_name": "remote-stream"})]
            many = await chain.abatch(
                [{"q": "a"}, {"q": "b"}], {"run_name": "remote-batch"})
        return {"invoke": out.content, "stream": "".join(chunks), "batch": len(many)}

    result = asyncio.run(main())
    wait_for_all_tracers()  # post everything before the process exits
    print(json.dumps(result))
    """
)


def run_worker(headers: object, env: dict[str, str]) -> dict[str, Any]:
    """The worker side, in its own process with its own LangSmith env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", WORKER_SNIPPET, json.dumps(headers)],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------
# End to end: caller step -> headers -> worker process -> runs nest under the step


def test_worker_runs_nest_under_the_callers_step(traced: LangSmithRecorder) -> None:
    recorder = traced
    worker_env = recorder.env(LANGSMITH_PROJECT="caller-project")
    outcome = Step(remote=lambda headers: run_worker(headers, worker_env)).invoke(
        "question", {"run_name": "k8s-step"}
    )
    wait_for_all_tracers()
    step_id = outcome["run_id"]
    remote = outcome["remote"]
    assert remote["invoke"] and remote["stream"] == remote["invoke"] and remote["batch"] == 2

    remote_roots = ("remote-invoke", "remote-stream", "remote-batch")
    recorder.wait_for(
        lambda r: (
            r.run(step_id) is not None
            and r.run(step_id).ended  # type: ignore[union-attr]
            and all(r.named(name) for name in remote_roots)
            and len(r.named("remote-batch")) == 2
        )
    )
    step = recorder.run(step_id)
    assert step is not None and step.name == "k8s-step" and step.parent_run_id is None
    assert step.dotted_order == outcome["headers"][TRACE_HEADER]

    roots = [run for name in remote_roots for run in recorder.named(name)]
    assert len(roots) == 4
    for root in roots:
        # The worker's top-level runs are children of the caller's step, in its trace.
        assert root.parent_run_id == step_id
        assert root.trace_id == step.trace_id == step_id
        assert root.dotted_order is not None and step.dotted_order is not None
        assert root.dotted_order.startswith(step.dotted_order + ".")
        assert root.dotted_order.endswith(root.id)
        assert root.session_name == "caller-project"
    # ... and their own children (prompt, model) hang below them, still in the same trace.
    worker_ids = {root.id for root in roots}
    children = [run for run in recorder.runs if run.parent_run_id in worker_ids]
    assert {run.name for run in children} == {"ChatPromptTemplate", "DemoChatModel"}
    assert all(run.trace_id == step_id for run in children)
    assert not recorder.errors


def test_worker_env_decides_project_not_the_payload(traced: LangSmithRecorder) -> None:
    recorder = traced
    headers = Step().invoke("q")["headers"]
    # A tampered payload naming another project/replica and carrying junk.
    tampered = {
        **headers,
        BAGGAGE_HEADER: "langsmith-project=evil,langsmith-replicas="
        + urllib.parse.quote(json.dumps([{"project_name": "evil2", "api_url": "http://x"}])),
        "x-api-key": "stolen",
    }
    result = run_worker(tampered, recorder.env(LANGSMITH_PROJECT="worker-project"))
    assert result["batch"] == 2
    wait_for_all_tracers()
    recorder.wait_for(
        lambda r: len(r.named("remote-batch")) == 2 and bool(r.named("remote-invoke"))
    )
    root = recorder.named("remote-invoke")[0]
    step_id = headers[TRACE_HEADER].rsplit("Z", 1)[1]
    assert root.parent_run_id == step_id
    worker_runs = [run for run in recorder.runs if run.trace_id == step_id and run.id != step_id]
    assert worker_runs
    assert {run.session_name for run in worker_runs} == {"worker-project"}


# --------------------------------------------------------------------------------------
# Caller side


def test_trace_headers_of_the_sync_and_async_step(traced: LangSmithRecorder) -> None:
    import asyncio

    for outcome in (
        Step().invoke("q", {"tags": ["t1"], "metadata": {"user": "u", "ls_model_name": "x"}}),
        asyncio.run(Step().ainvoke("q", {"tags": ["t1"], "metadata": {"user": "u"}})),
    ):
        headers = outcome["headers"]
        assert headers is not None and set(headers) == {TRACE_HEADER, BAGGAGE_HEADER}
        # A root step: its dotted order is one segment ending with its own id.
        assert headers[TRACE_HEADER].endswith("Z" + outcome["run_id"])
        baggage = dict(item.split("=", 1) for item in headers[BAGGAGE_HEADER].split(","))
        assert set(baggage) == {"langsmith-tags", "langsmith-metadata"}
        assert urllib.parse.unquote(baggage["langsmith-tags"]) == "t1"
        assert json.loads(urllib.parse.unquote(baggage["langsmith-metadata"])) == {"user": "u"}
        # Nothing that names a destination or carries a credential.
        text = json.dumps(headers)
        for secret in ("caller-project", "fake", traced.url, "127.0.0.1", "project"):
            assert secret not in text


def test_trace_headers_of_a_nested_step(traced: LangSmithRecorder) -> None:
    from langchain_core.runnables import RunnableLambda

    outcome = (RunnableLambda(lambda x: x) | Step()).invoke("q")
    segments = outcome["headers"][TRACE_HEADER].split(".")
    assert len(segments) == 2 and segments[-1].endswith(outcome["run_id"])


def test_trace_headers_none_when_tracing_is_off(ls_env: LangSmithEnv) -> None:
    outcome = Step().invoke("q")
    assert outcome["headers"] is None


@pytest.mark.parametrize("junk", [None, object(), "run", 42, {"run_id": uuid.uuid4()}])
def test_trace_headers_never_raises(junk: object) -> None:
    assert trace_headers(junk) is None


def test_trace_headers_swallow_errors() -> None:
    class Exploding:
        run_id = uuid.uuid4()

        @property
        def handlers(self) -> list[object]:
            raise RuntimeError("boom")

    assert trace_headers(Exploding()) is None


# --------------------------------------------------------------------------------------
# Worker side: sanitize

SEGMENT = "20250101T120000123456Z" + "0193f2a1-0000-7000-8000-000000000001"
CHILD = "20250101T120001000000Z" + "0193f2a1-0000-7000-8000-000000000002"
DOTTED = f"{SEGMENT}.{CHILD}"


def test_sanitize_keeps_valid_headers() -> None:
    baggage = "langsmith-tags=a%2Cb,langsmith-metadata=" + urllib.parse.quote('{"k":"v","n":1}')
    clean = sanitize({TRACE_HEADER: DOTTED, BAGGAGE_HEADER: baggage})
    assert clean is not None
    assert clean[TRACE_HEADER] == DOTTED
    items = dict(item.split("=", 1) for item in clean[BAGGAGE_HEADER].split(","))
    assert urllib.parse.unquote(items["langsmith-tags"]) == "a,b"
    assert json.loads(urllib.parse.unquote(items["langsmith-metadata"])) == {"k": "v", "n": 1}
    assert sanitize(clean) == clean  # idempotent


def test_sanitize_drops_unknown_keys_and_destination_baggage() -> None:
    raw = {
        TRACE_HEADER: SEGMENT,
        BAGGAGE_HEADER: ",".join(
            [
                "langsmith-project=evil",
                "langsmith-address=" + urllib.parse.quote("lrn:agent:x"),
                "langsmith-replicas=" + urllib.parse.quote('[{"api_url":"http://x"}]'),
                "otel-key=1",
                "langsmith-metadata=" + urllib.parse.quote('{"ls_provider":"x","__p":1,"ok":2}'),
            ]
        ),
        "langsmith-project": "evil",
        "x-api-key": "k",
        "LANGSMITH_ENDPOINT": "http://evil",
    }
    clean = sanitize(raw)
    assert clean is not None and set(clean) == {TRACE_HEADER, BAGGAGE_HEADER}
    assert clean[BAGGAGE_HEADER] == "langsmith-metadata=" + urllib.parse.quote('{"ok":2}')


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "langsmith-trace",
        [(TRACE_HEADER, SEGMENT)],
        {},
        {BAGGAGE_HEADER: "langsmith-tags=a"},
        {TRACE_HEADER: 123},
        {TRACE_HEADER: b"x"},
        {TRACE_HEADER: ""},
        {TRACE_HEADER: "not-a-dotted-order"},
        {TRACE_HEADER: SEGMENT + "."},
        {TRACE_HEADER: SEGMENT.upper()},
        {TRACE_HEADER: "20251341T120000123456Z0193f2a1-0000-7000-8000-000000000001"},
        {TRACE_HEADER: ".".join([SEGMENT] * (MAX_HEADER_CHARS // len(SEGMENT) + 1))},
        {TRACE_HEADER: SEGMENT + "\n" + SEGMENT},
    ],
)
def test_sanitize_rejects_junk(raw: object) -> None:
    assert sanitize(raw) is None


@pytest.mark.parametrize(
    "baggage",
    [
        123,
        "x" * (MAX_HEADER_CHARS + 1),
        "langsmith-metadata=" + "%7B" * 10,
        "langsmith-metadata=" + urllib.parse.quote("[1,2]"),
        "langsmith-metadata=" + urllib.parse.quote('{"nested":{"a":1}}'),
        "langsmith-tags=",
        "garbage",
    ],
)
def test_sanitize_drops_bad_or_oversized_baggage(baggage: object) -> None:
    assert sanitize({TRACE_HEADER: SEGMENT, BAGGAGE_HEADER: baggage}) == {TRACE_HEADER: SEGMENT}


# --------------------------------------------------------------------------------------
# Worker side: remote_parent (in-process checks of the context it sets)


def test_remote_parent_none_is_a_no_op(traced: LangSmithRecorder) -> None:
    before = get_tracing_context()
    with remote_parent(None):
        assert get_tracing_context() == before
    assert get_tracing_context() == before


def test_remote_parent_sets_and_restores_the_parent(
    ls_env: LangSmithEnv, recorder: LangSmithRecorder
) -> None:
    ls_env.apply(recorder.env(LANGSMITH_PROJECT="worker-project"))
    before = get_tracing_context()
    headers = {TRACE_HEADER: DOTTED, BAGGAGE_HEADER: "langsmith-project=evil,langsmith-tags=t"}
    with remote_parent(headers):
        parent = get_current_run_tree()
        assert parent is not None
        assert str(parent.id) == CHILD[-36:]
        assert str(parent.trace_id) == SEGMENT[-36:]
        assert parent.session_name == "worker-project"  # env, not the payload
        assert not parent.replicas
    assert get_tracing_context() == before
    assert get_current_run_tree() is None


def test_remote_parent_is_a_no_op_when_the_worker_does_not_trace(
    ls_env: LangSmithEnv, recorder: LangSmithRecorder
) -> None:
    # The endpoint is configured but tracing is off: the payload must not switch it on.
    env = recorder.env()
    env.pop("LANGSMITH_TRACING")
    ls_env.apply(env)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | DemoChatModel()
    with remote_parent({TRACE_HEADER: SEGMENT}):
        assert get_current_run_tree() is None
        chain.invoke({"q": "hi"})
    wait_for_all_tracers()
    assert recorder.runs == []
    assert not recorder.errors
    # Control: with tracing on, the same call does reach this recorder, so the silence above
    # is the no-op and not a recorder that hears nothing.
    ls_env.apply(recorder.env())
    with remote_parent({TRACE_HEADER: SEGMENT}):
        chain.invoke({"q": "hi"})
    wait_for_all_tracers()
    recorder.wait_for(lambda r: bool(r.named("DemoChatModel")), timeout=30)


def test_remote_parent_propagates_exceptions_and_ignores_bad_headers(
    traced: LangSmithRecorder,
) -> None:
    with pytest.raises(KeyError, match="from the body"), remote_parent({TRACE_HEADER: SEGMENT}):
        raise KeyError("from the body")
    assert get_current_run_tree() is None
    with remote_parent({TRACE_HEADER: "junk"}):
        assert get_current_run_tree() is None
