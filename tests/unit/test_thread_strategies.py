"""Multitask strategies and thread key names, without Redis."""

from __future__ import annotations

import pytest

from runnable_k8s import ConfigurationError, RunnableK8s, Settings, UnknownMultitaskStrategy
from runnable_k8s.settings import SigningKey
from runnable_k8s.store import threads


def settings() -> Settings:
    return Settings(signing_key=SigningKey(b"k" * 48), redis_url="redis://127.0.0.1:1/0")


@pytest.mark.parametrize("name", ["enqueue", "reject", "interrupt", "rollback"])
def test_langgraphs_four_strategies_are_accepted(name: str) -> None:
    assert threads.check_strategy(name) == name
    assert (
        RunnableK8s(ref="m:g", settings=settings(), multitask_strategy=name).multitask_strategy
        == name
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["queue", "", None, "ENQUEUE", 1])
def test_any_other_strategy_is_a_configuration_error_naming_the_four(name: object) -> None:
    with pytest.raises(UnknownMultitaskStrategy, match="enqueue, reject, interrupt, rollback"):
        threads.check_strategy(name)
    assert issubclass(UnknownMultitaskStrategy, ConfigurationError)


def test_the_default_strategy_is_enqueue() -> None:
    assert RunnableK8s(ref="m:g", settings=settings()).multitask_strategy == "enqueue"


def test_thread_of_reads_configurable_thread_id_only() -> None:
    assert threads.thread_of({"configurable": {"thread_id": "t1"}}) == "t1"
    assert threads.thread_of({"configurable": {}}) is None
    assert threads.thread_of({"metadata": {"thread_id": "t1"}}) is None
    assert threads.thread_of(None) is None


def test_thread_keys_are_per_queue_and_any_string_makes_a_short_key() -> None:
    odd = "a thread id with spaces, {braces} and ünïcode " * 20
    key = threads.thread_key("q1", odd)
    assert key.startswith("rk8s:thread:q1:") and len(key) < 80
    assert key == threads.thread_key("q1", odd)
    assert key != threads.thread_key("q2", odd)
    assert threads.waiting_key("q1", odd) == f"{key}:waiting"


def test_a_hold_outlives_the_runs_whole_possible_life() -> None:
    s = settings()
    life = s.run_expiry + s.time_limit + s.effective_visibility_timeout + s.lease
    assert threads.hold_ttl(s) > life
