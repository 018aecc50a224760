"""The worker's kombu transport records and forgets an unacknowledged message with two plain
commands each (no MULTI/EXEC), index before hash when recording and hash before index when
forgetting, on a real Redis-protocol server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.worker.transport import TRANSPORT


@pytest.fixture
def server() -> Iterator[str]:
    with EmbeddedRedis() as url:
        yield url


def test_a_delivery_and_its_ack_cost_four_commands_in_a_safe_order(server: str) -> None:
    client = redis.Redis.from_url(server)
    queue = Queue("acks", Exchange("acks", type="direct"), routing_key="acks")
    with Connection(server, transport=TRANSPORT) as connection:
        with connection.Producer() as producer:
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="acks", declare=[queue])
        simple = connection.SimpleQueue(queue)
        client.execute_command("CONFIG", "RESETSTAT")
        seen, watching = _watch(server)
        message = simple.get(timeout=5)
        assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
        message.ack()
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        simple.close()
    stats = client.info("commandstats")
    client.set("monitor-stop", b"1")
    watching.join(10)
    client.close()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    assert "multi" not in calls and "exec" not in calls
    assert (calls["zadd"], calls["hset"], calls["hdel"], calls["zrem"]) == (1, 1, 1, 1)
    # Redis dying between the two commands of a pair leaves an index entry without a hash entry
    # (kombu's restore drops it), never a hash entry that nothing would restore.
    order = [c for c in seen if c in ("ZADD", "HSET", "HDEL", "ZREM")]
    assert order == ["ZADD", "HSET", "HDEL", "ZREM"]


def _watch(url: str) -> tuple[list[str], threading.Thread]:
    """The command names the server executes, in order, until a SET of `monitor-stop`."""
    seen: list[str] = []
    started = threading.Event()

    def run() -> None:
        monitoring = redis.Redis.from_url(url)
        with monitoring.monitor() as monitor:
            started.set()
            for command in monitor.listen():
                words = str(command["command"]).split()
                seen.append(words[0].upper() if words else "")
                if words[:2] == ["SET", "monitor-stop"]:
                    break
        monitoring.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    return seen, thread
