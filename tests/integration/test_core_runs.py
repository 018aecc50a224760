"""invoke / ainvoke / batch / abatch through real workers give what running locally gives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from runnable_k8s import RemoteError, RunnableK8s, Settings
from runnable_k8s.models import DemoChatModel
from tests.support.models import ConfigProbe, FailingModel
from tests.support.workers import WorkerProcess

QUESTIONS = [
    {"input": "What does Pikachu evolve from?"},
    {"input": "Tell me about Eevee"},
    {"input": "Who is Mewtwo?"},
]


def prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages(
        [("system", "You are a Pokemon expert."), ("human", "{input}")]
    )


@pytest.fixture
def remote_chain(settings: Settings, worker: WorkerProcess) -> Any:
    return RunnableK8s(bound=prompt() | DemoChatModel() | StrOutputParser(), settings=settings)


def local_chain() -> Any:
    return prompt() | DemoChatModel() | StrOutputParser()


def test_invoke_equals_local(remote_chain: Any) -> None:
    for question in QUESTIONS:
        assert remote_chain.invoke(question) == local_chain().invoke(question)
    assert "Pichu" in remote_chain.invoke(QUESTIONS[0])


async def test_ainvoke_equals_local(remote_chain: Any) -> None:
    for question in QUESTIONS:
        assert await remote_chain.ainvoke(question) == local_chain().invoke(question)


def test_batch_in_order_equals_local(remote_chain: Any, settings: Settings) -> None:
    inputs = [
        {"input": f"Question {i} about {'Pikachu' if i % 3 else 'Eevee'}"} for i in range(150)
    ]
    # 150 inputs over chunks of 64: three tasks, results stitched back in input order.
    assert remote_chain.batch(inputs) == local_chain().batch(inputs)


async def test_abatch_in_order_equals_local(remote_chain: Any) -> None:
    inputs = [{"input": f"#{i} Bulbasaur?"} for i in range(70)] + QUESTIONS
    assert await remote_chain.abatch(inputs) == local_chain().batch(inputs)


def test_model_in_the_middle_of_a_local_chain(settings: Settings, worker: WorkerProcess) -> None:
    chain = prompt() | RunnableK8s(bound=DemoChatModel(), settings=settings) | StrOutputParser()
    assert chain.invoke(QUESTIONS[0]) == local_chain().invoke(QUESTIONS[0])
    message = RunnableK8s(bound=prompt() | DemoChatModel(), settings=settings).invoke(QUESTIONS[0])
    assert isinstance(message, AIMessage)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0


def test_batch_max_concurrency_and_return_exceptions(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=ConfigProbe(), settings=settings)
    inputs = list(range(10))
    out = remote.batch(inputs, config={"max_concurrency": 3})
    assert [o["input"] for o in out] == inputs
    # The limit reaches the worker's own batch too.
    assert {o["max_concurrency"] for o in out} == {3}

    failing = RunnableK8s(bound=prompt() | FailingModel(message="nope"), settings=settings)
    results = failing.batch(QUESTIONS, return_exceptions=True)
    assert len(results) == 3
    assert all(isinstance(r, RemoteError) and r.remote_type == "ValueError" for r in results)
    with pytest.raises(RemoteError):
        failing.batch(QUESTIONS)


def test_config_travels_and_applies_on_the_worker(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=ConfigProbe(), settings=settings)
    config = {
        "tags": ["caller-tag"],
        "metadata": {"tenant": "acme", "not_json": object()},
        "run_name": "probe-run",
        "configurable": {"user_id": "u1", "__pregel_private": "x"},
        "recursion_limit": 7,
        "max_concurrency": 2,
    }
    seen = remote.invoke("hello", config=config)  # type: ignore[arg-type]
    assert seen["input"] == "hello"
    assert "caller-tag" in seen["tags"]
    assert seen["metadata"]["tenant"] == "acme"
    assert "not_json" not in seen["metadata"]
    assert seen["run_name"] == "probe-run"
    assert seen["configurable"] == {"user_id": "u1"}
    assert seen["recursion_limit"] == 7
    assert seen["max_concurrency"] == 2


def test_remote_exception_type_message_and_traceback(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(bound=prompt() | FailingModel(message="quota exceeded"), settings=settings)
    with pytest.raises(RemoteError) as caught:
        remote.invoke(QUESTIONS[0])
    error = caught.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "quota exceeded"
    assert "_explode" in error.remote_traceback  # the remote frame, not ours
    assert "Traceback (most recent call last)" in error.remote_traceback
    assert error.run_id and error.run_id in str(error)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[str] = []
        self.ends: list[Any] = []
        self.errors: list[BaseException] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
        self.starts.append(kw.get("name") or "")

    def on_chain_end(self, outputs: Any, **kw: Any) -> None:
        self.ends.append(outputs)

    def on_chain_error(self, error: BaseException, **kw: Any) -> None:
        self.errors.append(error)


def test_callers_callbacks_see_the_remote_step(settings: Settings, worker: WorkerProcess) -> None:
    recorder = Recorder()
    remote = RunnableK8s(bound=DemoChatModel(), settings=settings, name="remote-model")
    chain = prompt() | remote | StrOutputParser()
    chain.invoke(QUESTIONS[0], config={"callbacks": [recorder]})
    assert "remote-model" in recorder.starts
    recorder2 = Recorder()
    remote.batch(["a", "b"], config={"callbacks": [recorder2]})
    assert recorder2.starts.count("remote-model") == 2
    failing = RunnableK8s(bound=FailingModel(), settings=settings)
    recorder3 = Recorder()
    with pytest.raises(RemoteError):
        failing.invoke("x", config={"callbacks": [recorder3]})
    assert any(isinstance(e, RemoteError) for e in recorder3.errors)


def test_astream_with_and_without_callbacks_yields_the_same_chunks(
    settings: Settings, worker: WorkerProcess
) -> None:
    """`astream` takes a lighter path when nothing observes the call; with a handler it is
    LangChain's own (a run started and ended with the whole output, or its error)."""
    remote = RunnableK8s(bound=prompt() | DemoChatModel() | StrOutputParser(), settings=settings)
    local = local_chain()

    async def chunks(runnable: Any, config: Any = None) -> list[str]:
        return [chunk async for chunk in runnable.astream(QUESTIONS[1], config=config)]

    plain = asyncio.run(chunks(remote))
    recorder = Recorder()
    observed = asyncio.run(chunks(remote, {"callbacks": [recorder], "run_name": "streamed"}))
    want = asyncio.run(chunks(local))
    assert plain == observed == want
    assert len(want) > 1  # a stream, not one chunk
    assert recorder.starts == ["streamed"]
    assert recorder.ends == ["".join(want)]

    failing = RunnableK8s(bound=FailingModel(), settings=settings)
    errors = Recorder()
    with pytest.raises(RemoteError):
        asyncio.run(chunks(failing))
    with pytest.raises(RemoteError):
        asyncio.run(chunks(failing, {"callbacks": [errors]}))
    assert [type(e) for e in errors.errors] == [RemoteError]


def test_bind_and_with_config_keep_options(settings: Settings, worker: WorkerProcess) -> None:
    remote = RunnableK8s(bound=ConfigProbe(), settings=settings, timeout=33)
    tagged = remote.with_config(tags=["from-with-config"])
    seen = tagged.invoke("x")
    assert "from-with-config" in seen["tags"]
    assert tagged.bound.timeout == 33  # type: ignore[attr-defined]
    model = RunnableK8s(bound=DemoChatModel(), settings=settings)
    bound = model.bind(stop=["never"])
    assert isinstance(bound.invoke("Pikachu?"), AIMessage)
    # The bound arguments reach the runnable on the worker (DemoChatModel ignores `stop`).
    probe = RunnableK8s(bound=ConfigProbe(), settings=settings).bind(stop=["never"])
    assert probe.invoke("x")["kwargs"] == {"stop": ["never"]}
    assert remote.invoke("x")["kwargs"] == {}


def test_schemas_and_graph_pass_through(settings: Settings) -> None:
    chain = prompt() | DemoChatModel() | StrOutputParser()
    remote = RunnableK8s(bound=chain, settings=settings)
    assert (
        remote.get_input_schema().model_json_schema()
        == chain.get_input_schema().model_json_schema()
    )
    assert (
        remote.get_output_schema().model_json_schema()
        == chain.get_output_schema().model_json_schema()
    )
    assert remote.InputType == chain.InputType
    assert remote.OutputType == chain.OutputType
    assert len(remote.get_graph().nodes) == len(chain.get_graph().nodes)
    assert remote.config_specs == chain.config_specs
