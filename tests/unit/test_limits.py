"""The limit spec (RUNNABLE_K8S_LIMITS) and the 429 headers the limiter reads."""

from __future__ import annotations

import email.utils

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableParallel
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from runnable_k8s.errors import ConfigurationError
from runnable_k8s.limits import Limit, Rate, parse_limits
from runnable_k8s.worker.model_calls import chat_models, tenant_of, tokens_of
from runnable_k8s.worker.ratelimit_headers import DEFAULT_PAUSE, pause_seconds


def test_rules_per_line_or_semicolon_with_comments_and_every_limit_kind() -> None:
    spec = """
    # the provider's key, then one model, then every tenant on its own budget
    openai requests=500/1m
    openai:gpt-4o-mini rpm=120 tpm=40000 concurrency=5  # per model
    tenant:* tokens=2000/500ms; tenant:acme concurrency=2
    """
    assert parse_limits(spec) == (
        Limit("openai", requests=Rate(500, 60.0)),
        Limit("openai:gpt-4o-mini", Rate(120, 60.0), Rate(40000, 60.0), 5),
        Limit("tenant:*", tokens=Rate(2000, 0.5)),
        Limit("tenant:acme", concurrency=2),
    )


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("openai rpm=10\nopenai:gpt-4o rpm=ten", "rule 2 ('openai:gpt-4o rpm=ten')"),
        ("openai", "no limit given"),
        ("openai rpm=0", "at least 1"),
        ("openai burst=3", "unknown limit 'burst'"),
        ("openai requests=10", "N/PERIOD"),
        ("openai requests=10/fortnight", "period 'fortnight'"),
        ("openai rpm=1 requests=5/1s", "more than one request rate"),
        ("openai rpm=1; openai tpm=5", "appears twice"),
        ("b@d rpm=1", "not a key"),
        ("openai rpm", "not name=value"),
    ],
)
def test_a_malformed_rule_is_refused_naming_it(spec: str, fault: str) -> None:
    with pytest.raises(ConfigurationError, match="RUNNABLE_K8S_LIMITS rule") as caught:
        parse_limits(spec)
    assert fault in str(caught.value)


def test_a_pattern_gives_each_value_its_own_budget_and_matches_nothing_else() -> None:
    tenants = Limit("tenant:*", concurrency=1)
    assert tenants.matches("tenant:acme")
    assert not tenants.matches("tenant:")
    assert not tenants.matches("openai:gpt-4o-mini")
    assert Limit("openai", concurrency=1).matches("openai")
    assert not Limit("openai", concurrency=1).matches("openai:gpt-4o-mini")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"Retry-After": "soon"}, DEFAULT_PAUSE),
        ({"x-ratelimit-reset-requests": "later"}, DEFAULT_PAUSE),
        ({}, DEFAULT_PAUSE),
    ],
)
def test_pause_from_the_providers_headers(headers: dict[str, str], seconds: float) -> None:
    assert pause_seconds(headers) == pytest.approx(seconds)


def test_pause_from_an_http_date() -> None:
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert pause_seconds({"Retry-After": date}, now=1_000_000) == pytest.approx(30.0)


def test_the_limiter_finds_every_chat_model_of_a_runnable() -> None:
    first = ChatOpenAI(model="gpt-a", api_key=SecretStr("sk-x"))
    second = ChatOpenAI(model="gpt-b", api_key=SecretStr("sk-x"))
    chain = RunnableParallel(a=first | StrOutputParser(), b=second.bind(stop=["."]))
    assert {id(m) for m in chat_models(chain | StrOutputParser())} == {id(first), id(second)}


def test_tokens_come_from_usage_metadata_and_tenants_are_safe_key_parts() -> None:
    message = AIMessage(
        "hi", usage_metadata={"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    )
    assert tokens_of(LLMResult(generations=[[ChatGeneration(message=message)]])) == 12
    assert tokens_of(LLMResult(generations=[[ChatGeneration(message=AIMessage("hi"))]])) is None
    assert tenant_of("acme-1") == "acme-1"
    assert tenant_of("a b\r\n") == "_invalid"
    assert tenant_of(7) is None
