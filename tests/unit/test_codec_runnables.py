"""The runnable codec: what may travel, what is refused on the producer, and what a worker
refuses to construct from a (signed but hostile or hand-edited) payload."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
)
from pydantic import BaseModel

from runnable_k8s.errors import DisallowedObject, SerializationRefused
from runnable_k8s.models import DemoChatModel, answer
from runnable_k8s.protocol.codec import Codec, runnable_codec

openai = pytest.importorskip("langchain_openai")
ChatOpenAI = openai.ChatOpenAI

PLACEHOLDER = "sk-placeholder-never-travels-1234"
CHAT_OPENAI_ID = ["langchain", "chat_models", "openai", "ChatOpenAI"]


@pytest.fixture
def codec() -> Codec:
    return runnable_codec()


@pytest.fixture
def worker_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The worker's own OpenAI key, read by ChatOpenAI from its environment."""
    key = "sk-worker-own-key-5678"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return key


def chat_openai_json(**kwargs: Any) -> bytes:
    tree = {
        "lc": 1,
        "type": "constructor",
        "id": CHAT_OPENAI_ID,
        "kwargs": {
            "model_name": "gpt-4o-mini",
            "openai_api_key": {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]},
            **kwargs,
        },
    }
    return json.dumps(tree).encode()


def prompt() -> PromptTemplate:
    return PromptTemplate.from_template("Tell me about {topic}")


# -- round trips ------------------------------------------------------------------------------


def test_demo_chain_round_trips_and_runs(codec: Codec) -> None:
    chain = (
        ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
        | DemoChatModel(chunk_delay=0.25)
        | StrOutputParser()
    )
    restored = codec.decode_runnable(codec.encode_runnable(chain))
    assert isinstance(restored, RunnableSequence)
    model = restored.steps[1]
    assert isinstance(model, DemoChatModel) and model.chunk_delay == 0.25
    question = {"q": "How does pikachu evolve?"}
    assert restored.invoke(question) == chain.invoke(question) == answer("pikachu")


def test_demo_model_alone_round_trips(codec: Codec) -> None:
    raw = codec.encode_runnable(DemoChatModel())
    assert json.loads(raw)["id"] == ["runnable_k8s", "models", "DemoChatModel"]
    restored = codec.decode_runnable(raw)
    assert isinstance(restored, DemoChatModel)
    assert restored.invoke("eevee?").content == answer("eevee")


def test_bind_with_config_and_parallel_round_trip(codec: Codec) -> None:
    chain = RunnableParallel(
        a=prompt() | DemoChatModel().bind(stop=["x"]) | StrOutputParser(),
        b=RunnablePassthrough(),
    ).with_config(tags=["t1"], run_name="par")
    restored = codec.decode_runnable(codec.encode_runnable(chain))
    out = restored.invoke({"topic": "charizard"})
    assert out == {"a": answer("charizard"), "b": {"topic": "charizard"}}
    assert restored.config is not None and restored.config.get("tags") == ["t1"]  # type: ignore[attr-defined]


def test_chat_openai_round_trips_with_the_workers_key(codec: Codec, worker_key: str) -> None:
    raw = codec.encode_runnable(ChatOpenAI(api_key=PLACEHOLDER, model="gpt-4o-mini", temperature=0))
    restored = codec.decode_runnable(raw)
    assert isinstance(restored, ChatOpenAI)
    assert restored.model_name == "gpt-4o-mini"
    assert restored.openai_api_key is not None
    assert restored.openai_api_key.get_secret_value() == worker_key
    assert restored.openai_api_base is None


# -- secrets ----------------------------------------------------------------------------------


def test_chat_openai_key_never_in_encoded_bytes(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-producer-env-9999")
    for llm in (ChatOpenAI(api_key=PLACEHOLDER, model="m"), ChatOpenAI(model="m")):
        raw = codec.encode_runnable(prompt() | llm)
        assert PLACEHOLDER.encode() not in raw
        assert b"sk-from-producer-env-9999" not in raw
        assert b'{"lc":1,"type":"secret","id":["OPENAI_API_KEY"]}' in raw


def test_secret_reference_to_another_env_var_decodes_to_none(
    codec: Codec, worker_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/home/should-not-leak")
    raw = chat_openai_json(openai_api_key={"lc": 1, "type": "secret", "id": ["HOME"]})
    restored = codec.decode_runnable(raw)
    assert isinstance(restored, ChatOpenAI)
    # The reference resolved to None, so ChatOpenAI fell back to the worker's own key.
    assert restored.openai_api_key is not None
    assert restored.openai_api_key.get_secret_value() == worker_key


# -- refused on the producer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: RunnableLambda(lambda x: x), "RunnableLambda"),
        (lambda: prompt() | RunnableLambda(str.upper), "RunnableLambda"),
        (lambda: RunnablePassthrough.assign(x=lambda d: len(d) * 2), "RunnableLambda"),
        (lambda: prompt().map(), "RunnableEach"),
    ],
)
def test_unserializable_runnables_refused_naming_the_class(
    codec: Codec, make: Any, named: str
) -> None:
    with pytest.raises(SerializationRefused, match=named) as caught:
        codec.encode_runnable(make())
    assert "RUNNABLE_K8S_ALLOWED_CLASSES" in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: prompt().with_retry(),
        lambda: prompt().with_fallbacks([prompt()]),
        lambda: DemoChatModel().with_retry(stop_after_attempt=2),
    ],
)
def test_retry_and_fallbacks_refused(codec: Codec, make: Any) -> None:
    with pytest.raises(SerializationRefused):
        codec.encode_runnable(make())


# The refusal names RunnableRetry / RunnableWithFallbacks, the object the user wrote, not
# builtins.Exception (a constructor argument of the wrapper).
@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: prompt().with_retry(), "RunnableRetry"),
        (lambda: prompt().with_fallbacks([prompt()]), "RunnableWithFallbacks"),
    ],
)
def test_retry_and_fallbacks_refusal_names_the_wrapper(codec: Codec, make: Any, named: str) -> None:
    with pytest.raises(SerializationRefused, match=named):
        codec.encode_runnable(make())


def test_structured_output_refused(codec: Codec) -> None:
    class Answer(BaseModel):
        text: str

    with pytest.raises(NotImplementedError):
        DemoChatModel().with_structured_output(Answer)  # no tool calling: cannot even build it
    structured = ChatOpenAI(api_key=PLACEHOLDER, model="m").with_structured_output(Answer)
    with pytest.raises(SerializationRefused, match="Answer"):
        codec.encode_runnable(structured)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"base_url": "http://attacker.example/v1"}, "openai_api_base"),
        ({"openai_api_base": "http://attacker.example/v1"}, "openai_api_base"),
        ({"default_headers": {"X-Forward": "1"}}, "default_headers"),
        ({"default_query": {"k": "v"}}, "default_query"),
        ({"openai_proxy": "http://proxy.example:3128"}, "openai_proxy"),
        ({"model_kwargs": {"extra": {"base_url": "http://attacker.example"}}}, "base_url"),
    ],
)
def test_chat_openai_redirecting_kwargs_refused_at_encode(
    codec: Codec, kwargs: dict[str, Any], named: str
) -> None:
    llm = ChatOpenAI(api_key=PLACEHOLDER, model="m", **kwargs)
    with pytest.raises(SerializationRefused, match=named) as caught:
        codec.encode_runnable(prompt() | llm)
    assert "OPENAI_BASE_URL" in str(caught.value)
    assert PLACEHOLDER not in str(caught.value)


# dumpd leaves http_client out: a caller's HTTP client (its proxy/TLS/base settings) is
# refused, never silently dropped.
@pytest.mark.parametrize("field", ["http_client", "http_async_client"])
def test_chat_openai_http_client_refused_at_encode(codec: Codec, field: str) -> None:
    import httpx

    client_type = httpx.Client if field == "http_client" else httpx.AsyncClient
    client = client_type()
    try:
        llm = ChatOpenAI(api_key=PLACEHOLDER, model="m", **{field: client})
        with pytest.raises(SerializationRefused):
            codec.encode_runnable(llm)
    finally:
        if isinstance(client, httpx.Client):
            client.close()
        else:
            import asyncio

            asyncio.run(client.aclose())


def test_jinja2_prompt_refused_at_encode(codec: Codec) -> None:
    # model_construct: jinja2 itself need not be installed to build the object being refused.
    jinja = PromptTemplate.model_construct(
        template="{{ x }}", input_variables=["x"], template_format="jinja2"
    )
    with pytest.raises(SerializationRefused, match=r"(?i)jinja2"):
        codec.encode_runnable(jinja)


def test_extra_allowed_class_can_be_encoded() -> None:
    from langchain_core.output_parsers import CommaSeparatedListOutputParser

    assert runnable_codec() is runnable_codec()  # cached
    codec = runnable_codec(("langchain_core.prompts:FewShotPromptTemplate",))
    assert codec is not runnable_codec()
    restored = codec.decode_runnable(codec.encode_runnable(CommaSeparatedListOutputParser()))
    assert restored.invoke("a, b") == ["a", "b"]


# -- refused on the worker --------------------------------------------------------------------


def test_hand_edited_base_url_refused_at_decode(codec: Codec, worker_key: str) -> None:
    with pytest.raises(DisallowedObject, match="openai_api_base"):
        codec.decode_runnable(chat_openai_json(openai_api_base="http://attacker.example/v1"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_headers": {"Authorization": "x"}},
        {"http_client": None},
        {"model_kwargs": {"extra_headers": {"x": "y"}}},
        {"model_kwargs": {"__lc_escaped__": {"extra_headers": {"x": "y"}}}},
    ],
)
def test_other_hand_edited_kwargs_refused_at_decode(
    codec: Codec, worker_key: str, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(DisallowedObject, match="may not come from a payload"):
        codec.decode_runnable(chat_openai_json(**kwargs))


# Constructor kwargs that themselves carry lc=1 and a 'type' key still go through the
# forbidden-kwarg check: otherwise a payload builds ChatOpenAI with a foreign base URL and the
# worker's real key.
def test_lookalike_kwargs_cannot_smuggle_a_base_url(codec: Codec, worker_key: str) -> None:
    raw = chat_openai_json(lc=1, type="x", openai_api_base="http://attacker.example/v1")
    with warnings.catch_warnings():
        # ChatOpenAI warns while moving the unknown 'lc'/'type' into model_kwargs; in
        # production the warning is not an error and the object is built.
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DisallowedObject):
            codec.decode_runnable(raw)


def test_jinja2_template_refused_at_decode(codec: Codec) -> None:
    tree = {
        "lc": 1,
        "type": "constructor",
        "id": ["langchain", "prompts", "prompt", "PromptTemplate"],
        "kwargs": {
            "template": "{{ ''.__class__.__mro__ }}",
            "input_variables": [],
            "template_format": "jinja2",
        },
    }
    with pytest.raises(DisallowedObject, match=r"(?i)jinja2"):
        codec.decode_runnable(json.dumps(tree).encode())


@pytest.mark.parametrize(
    "class_id",
    [
        ["langchain", "prompts", "few_shot", "FewShotPromptTemplate"],
        ["langchain_core", "prompts", "few_shot", "FewShotPromptTemplate"],
        ["langchain", "schema", "runnable", "RunnableEach"],
        ["langchain_core", "made_up", "Exploit"],
        ["os", "system"],
        ["subprocess", "Popen"],
        ["runnable_k8s", "settings", "Settings"],
    ],
)
def test_class_outside_allowlist_refused_at_decode(codec: Codec, class_id: list[str]) -> None:
    tree = {"lc": 1, "type": "constructor", "id": class_id, "kwargs": {}}
    with pytest.raises(DisallowedObject, match="not allowed"):
        codec.decode_runnable(json.dumps(tree).encode())


def test_disallowed_class_nested_in_an_allowed_one(codec: Codec) -> None:
    tree = json.loads(codec.encode_runnable(prompt() | StrOutputParser()))
    tree["kwargs"]["last"]["id"] = ["langchain_core", "made_up", "Exploit"]
    with pytest.raises(DisallowedObject):
        codec.decode_runnable(json.dumps(tree).encode())


def test_payload_that_is_not_a_runnable(codec: Codec) -> None:
    message = {
        "lc": 1,
        "type": "constructor",
        "id": ["langchain", "schema", "messages", "AIMessage"],
        "kwargs": {"content": "hi"},
    }
    for raw in (json.dumps(message).encode(), b"[]", b'{"a": 1}', b"null"):
        with pytest.raises(DisallowedObject, match="not a Runnable"):
            codec.decode_runnable(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"lc": 1, "type": "constructor"'])
def test_malformed_runnable_bytes(codec: Codec, raw: bytes) -> None:
    with pytest.raises(DisallowedObject):
        codec.decode_runnable(raw)


@pytest.mark.parametrize(
    "tree",
    [
        {"lc": 1, "type": "constructor", "id": [], "kwargs": {}},
        {"lc": 1, "type": "constructor", "id": "langchain", "kwargs": {}},
        {"lc": 1, "type": "constructor", "id": [["x"]], "kwargs": {}},
        {"lc": 1, "type": "secret", "id": ["A", "B"]},
        {"lc": 1, "type": "not_implemented", "id": ["x"], "repr": "x"},
        {
            "lc": 1,
            "type": "constructor",
            "id": ["langchain", "prompts", "prompt", "PromptTemplate"],
            "kwargs": {"no_such_field": 1},
        },
    ],
)
def test_malformed_nodes_are_disallowed_not_crashes(codec: Codec, tree: dict[str, Any]) -> None:
    with pytest.raises(DisallowedObject):
        codec.decode_runnable(json.dumps(tree).encode())


def test_chat_openai_without_a_key_on_the_worker(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(DisallowedObject, match="cannot construct"):
        codec.decode_runnable(chat_openai_json())


def test_deeply_nested_runnable_payload_refused(codec: Codec) -> None:
    inner: Any = {"lc": 1, "type": "secret", "id": ["X"]}
    for _ in range(250):
        inner = [inner]
    tree = json.loads(codec.encode_runnable(prompt()))
    tree["kwargs"]["metadata"] = {"deep": inner}
    with pytest.raises(DisallowedObject, match="200"):
        codec.decode_runnable(json.dumps(tree).encode())


# json.loads raises RecursionError (not ValueError) on a very deeply nested document: still
# a DisallowedObject.
def test_pathologically_nested_json_is_disallowed(codec: Codec) -> None:
    with pytest.raises(DisallowedObject):
        codec.decode_runnable(b"[" * 100_000 + b"]" * 100_000)


def test_decoded_runnable_is_a_runnable(codec: Codec) -> None:
    assert isinstance(codec.decode_runnable(codec.encode_runnable(prompt())), Runnable)
