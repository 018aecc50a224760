"""A Redis that stops answering while a caller waits for a run (SIGSTOP: the kernel still
accepts and buffers, nothing replies, as with a hung server or a network partition that drops
no connection): the wait ends at its own timeout with `WaitTimeout`, not after the connection's
read timeout (40 s, above the longest XREAD block)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from runnable_k8s import RunnableK8s, WaitTimeout
from runnable_k8s.embedded import EmbeddedRedis
from tests.conftest import make_settings
from tests.support.models import SlowModel

# No worker runs: every run stays queued, so a wait can only end by its timeout.
WAIT = 3.0
# Generous beside WAIT, well below the read timeout a frozen server used to cost.
HANG = 25.0


class Frozen:
    """One server of the test's own, frozen on demand once a caller blocks in XREAD."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._probe = redis.Redis.from_url(url)
        self._pid = int(self._probe.info("server")["process_id"])
        self.frozen = False

    def freeze_once_waiting(self, waiters: int = 1) -> None:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            clients = self._probe.client_list()
            if sum(1 for c in clients if c.get("cmd") == "xread") >= waiters:
                os.kill(self._pid, signal.SIGSTOP)
                self.frozen = True
                return
            time.sleep(0.02)
        raise AssertionError("the caller never blocked in XREAD")

    def thaw(self) -> None:
        if self.frozen:
            os.kill(self._pid, signal.SIGCONT)
            self.frozen = False
        self._probe.close()


@pytest.fixture
def server() -> Iterator[Frozen]:
    with EmbeddedRedis() as url:
        frozen = Frozen(url)
        try:
            yield frozen
        finally:
            frozen.thaw()


def _remote(server: Frozen) -> RunnableK8s:
    return RunnableK8s(bound=SlowModel(), settings=make_settings(server.url))


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # the test looks at what was raised
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, raised


@pytest.mark.timeout(90)
async def test_an_awaited_wait_ends_at_its_timeout_when_redis_freezes(server: Frozen) -> None:
    run = await _remote(server).asubmit("queued for good")
    waiting = asyncio.create_task(run.aresult(timeout=WAIT))
    await asyncio.to_thread(server.freeze_once_waiting)
    with pytest.raises(WaitTimeout):
        await asyncio.wait_for(waiting, HANG)


@pytest.mark.timeout(90)
def test_a_blocking_wait_ends_at_its_timeout_when_redis_freezes(server: Frozen) -> None:
    run = _remote(server).submit("queued for good")
    thread, raised = _in_thread(lambda: run.result(timeout=WAIT))
    server.freeze_once_waiting()
    thread.join(HANG)
    assert not thread.is_alive(), f"result(timeout={WAIT}) still waiting after {HANG} s"
    assert len(raised) == 1 and isinstance(raised[0], WaitTimeout), raised
