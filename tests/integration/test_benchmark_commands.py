"""The benchmark's Redis command count (INFO commandstats) on a private real server: the
commands a Lua script runs count beside the EVALSHA that ran it, INFO itself is left out, and
another client's steady polling is subtracted."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from benchmarks.commands import Counting
from runnable_k8s.embedded import EmbeddedRedis

SCRIPT = "redis.call('SET', KEYS[1], 'x'); redis.call('INCR', KEYS[2]); return 1"


@pytest.fixture
def server() -> Iterator[str]:
    with EmbeddedRedis() as url:
        yield url


def test_counts_every_command_a_script_runs(server: str) -> None:
    client = redis.Redis.from_url(server)
    script = client.register_script(SCRIPT)
    script(keys=["warm", "n"])  # loads it: the counted calls are one EVALSHA each
    counting = Counting(client, quiet=0.2, settle=0.0)

    def job() -> None:
        for i in range(10):
            script(keys=[f"k{i}", "n"])
            client.get(f"k{i}")

    total, mix = counting.per_item(10, job)
    assert mix == {"evalsha": 1.0, "set": 1.0, "incr": 1.0, "get": 1.0}
    assert total == 4.0
    client.close()


def test_another_clients_steady_polling_is_subtracted(server: str) -> None:
    stop = threading.Event()

    def poll() -> None:  # as idle workers poll: about 100 PINGs a second throughout
        other = redis.Redis.from_url(server)
        while not stop.wait(0.01):
            other.ping()
        other.close()

    poller = threading.Thread(target=poll)
    poller.start()
    client = redis.Redis.from_url(server)
    try:
        counting = Counting(client, quiet=1.0, settle=0.0)

        def job() -> None:  # 20 GETs over about 0.6 s: some 60 PINGs happen meanwhile
            for i in range(20):
                client.get(f"k{i}")
                stop.wait(0.03)

        total, mix = counting.per_item(20, job)
    finally:
        stop.set()
        poller.join()
        client.close()
    assert counting.idle["ping"] > 20
    assert mix["get"] == 1.0
    # Unsubtracted, the PINGs would add about 3 per item; what is left is timing jitter.
    assert abs(total - 1.0) < 1.0, mix
