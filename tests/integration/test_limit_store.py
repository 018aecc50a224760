"""The flow-control scripts against a real Redis-protocol server: what they grant, how long they
say to wait, and what an end of call gives back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from runnable_k8s.limits import Limit, Rate
from runnable_k8s.settings import Settings
from runnable_k8s.store.limits import LimitStore, limit_key
from runnable_k8s.worker.flow import FlowControl, _Call
from runnable_k8s.worker.metrics import WorkerMetrics


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[LimitStore]:
    client = aredis.Redis.from_url(redis_url)
    yield LimitStore(client, lease=5.0, margin=0.0, poll=0.1)
    await client.aclose()


def key() -> str:
    return f"openai:gpt-store-{uuid.uuid4().hex[:6]}"


async def test_a_request_window_grants_n_then_says_when_the_oldest_leaves(
    store: LimitStore,
) -> None:
    k = key()
    rule = [(k, Limit(k, requests=Rate(3, 10.0)))]
    for n in range(3):
        assert (await store.acquire(f"c{n}", rule)).wait == 0
    refused = await store.acquire("c3", rule)
    assert (refused.reason, refused.key) == ("requests", k)
    assert 9.0 < refused.wait <= 10.01
    assert await store.waiting() >= 1  # KEDA's count of calls waiting on limits


async def test_all_or_nothing_a_call_refused_by_one_rule_takes_no_share_of_another(
    store: LimitStore, redis_url: str
) -> None:
    model, tenant = key(), f"tenant:{uuid.uuid4().hex[:6]}"
    full = Limit(tenant, concurrency=1)
    rules = [(model, Limit(model, concurrency=5)), (tenant, full)]
    assert (await store.acquire("first", rules)).wait == 0
    assert (await store.acquire("second", rules)).reason == "concurrency"
    assert await store.holders(model) == 1
    await store.release("first", [model, tenant], tokens=None)
    assert await store.holders(model) == 0 and await store.holders(tenant) == 0
    assert (await store.acquire("second", rules)).wait == 0


async def test_tokens_probe_with_one_call_then_admit_on_the_settled_average(
    store: LimitStore,
) -> None:
    k = key()
    rule = [(k, Limit(k, tokens=Rate(100, 10.0)))]
    assert (await store.acquire("probe", rule)).wait == 0
    # Unsettled, the probe counts as the whole budget; a short poll, not the window.
    waiting = await store.acquire("next", rule)
    assert (waiting.reason, waiting.wait) == ("tokens", 0.1)
    await store.release("probe", [k], tokens=30)
    assert (await store.acquire("a", rule)).wait == 0  # 30 used + 30 estimated
    assert (await store.acquire("b", rule)).wait == 0  # 60 + 30
    assert (await store.acquire("c", rule)).reason == "tokens"  # 90 + 30 > 100


async def test_a_pause_holds_every_call_and_is_never_shortened(store: LimitStore) -> None:
    k = key()
    rule = [(k, Limit(k, requests=Rate(100, 60.0)))]
    await store.pause(k, 5.0)
    await store.pause(k, 1.0)
    paused = await store.acquire("c", rule)
    assert paused.reason == "paused" and 4.0 < paused.wait <= 5.0


async def test_leases_lapse_unless_renewed(store: LimitStore, redis_url: str) -> None:
    k = key()
    client = aredis.Redis.from_url(redis_url)
    rule = [(k, Limit(k, concurrency=1))]
    assert (await store.acquire("held", rule)).wait == 0
    score = await client.zscore(limit_key(k, "conc"), "held")
    await store.renew([("held", k)])
    assert (await client.zscore(limit_key(k, "conc"), "held")) >= (score or 0)
    # A holder whose lease is in the past (its worker died) is dropped by the next acquire.
    await client.zadd(limit_key(k, "conc"), {"held": 1})
    assert (await store.acquire("other", rule)).wait == 0
    await client.aclose()


def test_rules_pick_the_exact_key_over_a_pattern_and_cover_model_provider_and_tenant() -> None:
    limits = (
        Limit("openai", requests=Rate(500, 60.0)),
        Limit("openai:gpt-4o-mini", concurrency=5),
        Limit("tenant:*", concurrency=2),
        Limit("tenant:acme", concurrency=9),
    )
    flow = FlowControl(Settings(limits=limits), lambda: None, WorkerMetrics(), None)  # type: ignore[arg-type]
    found = flow.rules(_Call("run", "acme"), ("openai", "openai:gpt-4o-mini"))
    assert found == [
        ("openai", limits[0]),
        ("openai:gpt-4o-mini", limits[1]),
        ("tenant:acme", limits[3]),
    ]
    other = flow.rules(_Call("run", "zeta"), ("anthropic", "anthropic:claude"))
    assert other == [("tenant:zeta", limits[2])]


async def test_a_call_is_estimated_by_its_input_size_at_the_settled_tokens_per_character(
    store: LimitStore,
) -> None:
    k = key()
    rule = [(k, Limit(k, tokens=Rate(100, 10.0)))]
    assert (await store.acquire("probe", rule, size=10)).wait == 0
    await store.release("probe", [k], tokens=30, size=10)  # 3 tokens per character
    assert (await store.acquire("small", rule, size=5)).wait == 0  # 30 + 15
    assert (await store.acquire("large", rule, size=20)).reason == "tokens"  # 45 + 60 > 100
    assert (await store.acquire("fits", rule, size=18)).wait == 0  # 45 + 54
