"""The producer's one Redis-error translator (producer/redis_errors.py), against real servers:
one stopped for good (connection refused), one frozen with SIGSTOP (commands time out), one
alive that answers a command with an error, and sentinels that are not there."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
import redis.exceptions as rexc
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.sentinel import MasterNotFoundError

from runnable_k8s import connections
from runnable_k8s.connections import REDIS_ERRORS
from runnable_k8s.embedded import EmbeddedRedis, free_port
from runnable_k8s.errors import (
    BrokerError,
    BrokerUnavailable,
    RunNotFound,
    SentinelUnavailable,
)
from runnable_k8s.producer.aclient import AsyncClient
from runnable_k8s.producer.client import Client
from runnable_k8s.producer.redis_errors import translate, translated
from runnable_k8s.store import keys, threads
from tests.conftest import make_settings

DOING = "cannot test on Redis"


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    with EmbeddedRedis() as url:
        yield url


@pytest.fixture(scope="module")
def stopped_url() -> str:
    """A server that ran on this port and was stopped: connections are refused."""
    server = EmbeddedRedis()
    url = server.start()
    server.close()
    return url


@pytest.fixture
def frozen_url() -> Iterator[str]:
    """A server stopped with SIGSTOP: it accepts connections (the kernel does) and never answers."""
    with EmbeddedRedis() as url:
        probe = redis.Redis.from_url(url)
        pid = int(probe.info("server")["process_id"])
        probe.close()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield url
        finally:
            os.kill(pid, signal.SIGCONT)


def _no_sentinel_url() -> str:
    return f"sentinel://127.0.0.1:{free_port()}/0?master_name=mymaster"


def _sync_error(url: str, command: Any, **kwargs: Any) -> BaseException:
    client = connections.sync_client(url, **kwargs)
    try:
        with pytest.raises(BrokerError) as caught, translated(DOING):
            command(client)
    finally:
        client.close()
    return caught.value


def _async_error(url: str, command: Any, **kwargs: Any) -> BaseException:
    async def run() -> BaseException:
        client = connections.async_client(url, **kwargs)
        try:
            with pytest.raises(BrokerError) as caught, translated(DOING):
                await command(client)
        finally:
            await client.aclose()
        return caught.value

    return asyncio.run(run())


def _wrongtype(client: Any) -> Any:
    # The key is a string: LPUSH is refused, as when someone else's data sits at our key.
    result = client.set("translator:string", "x")
    if inspect.isawaitable(result):

        async def both() -> Any:
            await result
            return await client.lpush("translator:string", "y")

        return both()
    return client.lpush("translator:string", "y")


CASES = [
    ("stopped", lambda c: c.get("k"), {}, BrokerUnavailable, rexc.ConnectionError),
    ("frozen", lambda c: c.get("k"), {"socket_timeout": 0.3}, BrokerUnavailable, rexc.TimeoutError),
    (
        "no_sentinel",
        lambda c: c.get("k"),
        {},
        SentinelUnavailable,
        (MasterNotFoundError, AsyncMasterNotFoundError),
    ),
    ("live", _wrongtype, {}, BrokerError, rexc.ResponseError),
]


def _url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "no_sentinel":
        return _no_sentinel_url()
    return str(request.getfixturevalue(f"{kind}_url"))


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_sync_commands_raise_the_documented_error(
    request: pytest.FixtureRequest, case: tuple[Any, ...]
) -> None:
    kind, command, options, ours, theirs = case
    error = _sync_error(_url(kind, request), command, **options)
    assert type(error) is ours
    assert isinstance(error.__cause__, theirs)
    assert str(error).startswith(f"{DOING}: ")


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_awaited_commands_raise_the_documented_error(
    request: pytest.FixtureRequest, case: tuple[Any, ...]
) -> None:
    kind, command, options, ours, theirs = case
    error = _async_error(_url(kind, request), command, **options)
    assert type(error) is ours
    assert isinstance(error.__cause__, theirs)
    assert str(error).startswith(f"{DOING}: ")


def test_a_refused_command_says_what_redis_answered(live_url: str) -> None:
    error = _sync_error(live_url, _wrongtype)
    assert "Redis refused: WRONGTYPE" in str(error)


def test_decorated_functions_and_coroutines_translate(stopped_url: str) -> None:
    client = redis.Redis.from_url(stopped_url)
    aclient = aredis.Redis.from_url(stopped_url)

    @translated(DOING)
    def read() -> Any:
        return client.get("k")

    @translated(DOING)
    async def aread() -> Any:
        return await aclient.get("k")

    with pytest.raises(BrokerUnavailable, match=DOING):
        read()
    with pytest.raises(BrokerUnavailable, match=DOING):
        asyncio.run(aread())
    assert read.__name__ == "read" and inspect.iscoroutinefunction(aread)


def test_generators_are_refused_as_they_would_escape_the_wrapper() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> Any:
        yield 1

    for func in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            translated(DOING)(func)


def test_other_errors_pass_through_untouched() -> None:
    for error in (ValueError("v"), RunNotFound("gone"), BrokerUnavailable("already ours")):
        with pytest.raises(type(error)) as caught, translated(DOING):
            raise error
        assert caught.value is error


@pytest.mark.parametrize(
    "kind",
    [k for k in vars(rexc).values() if isinstance(k, type) and issubclass(k, rexc.RedisError)],
)
def test_every_redis_error_class_is_one_of_ours(kind: type[rexc.RedisError]) -> None:
    """The classes no server above raises (a server loading its data, a full connection pool,
    ...): unreachable ones are BrokerUnavailable, the rest BrokerError, none passes raw."""
    # Built without its own constructor: a few (MovedError, AskError) parse a cluster reply.
    exc = kind.__new__(kind)
    Exception.__init__(exc, "x")
    mapped = translate(DOING, exc)
    expected = BrokerUnavailable if isinstance(exc, REDIS_ERRORS) else BrokerError
    assert type(mapped) is expected
    assert isinstance(exc, REDIS_ERRORS) == issubclass(
        kind, (rexc.ConnectionError, rexc.TimeoutError)
    )


def test_the_builtin_socket_errors_redis_py_lets_through_are_unreachable() -> None:
    for exc in (ConnectionResetError("reset"), TimeoutError("slow")):
        assert type(translate(DOING, exc)) is BrokerUnavailable
    assert translate(DOING, OSError("disk full")) is None


def test_the_client_raises_ours_for_every_call_on_a_stopped_server(stopped_url: str) -> None:
    client = Client(make_settings(stopped_url))
    try:
        for call in (client.status, client.cancel, client.webhook, client.thread_position):
            with pytest.raises(BrokerUnavailable):
                call("0" * 32)
    finally:
        client.close()

    async def run() -> None:
        aclient = AsyncClient(client.settings, client.protocol)
        try:
            for acall in (aclient.status, aclient.cancel):
                with pytest.raises(BrokerUnavailable):
                    await acall("0" * 32)
        finally:
            await aclient.aclose()

    asyncio.run(run())


def test_reads_that_let_wrongtype_through_now_raise_broker_error(live_url: str) -> None:
    """Someone else's list at a run's webhook or thread-link key: these two reads once
    raised a bare `redis.ResponseError`."""
    client = Client(make_settings(live_url))
    run_id = uuid.uuid4().hex
    raw = redis.Redis.from_url(live_url)
    try:
        raw.rpush(keys.webhook(run_id), "not a record")
        raw.rpush(threads.link_key(run_id), "not a thread")
        for call in (client.webhook, client.thread_position):
            with pytest.raises(BrokerError, match="Redis refused: WRONGTYPE") as caught:
                call(run_id)
            assert type(caught.value) is BrokerError
    finally:
        raw.close()
        client.close()
