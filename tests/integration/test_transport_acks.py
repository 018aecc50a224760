"""The worker's kombu transport records an unacknowledged message with one HSET (its delivery
time inside the entry, no `unacked_index`) and forgets it with one HDEL, and still hands back
messages older than the visibility timeout, on a real Redis-protocol server."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from runnable_k8s import RunnableK8s
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.worker.transport import TRANSPORT, handbacks
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

QUEUE = Queue("acks", Exchange("acks", type="direct"), routing_key="acks")


@pytest.fixture
def server() -> Iterator[str]:
    with EmbeddedRedis() as url:
        yield url


def _publish(connection: Connection, body: object) -> None:
    with connection.Producer() as producer:
        producer.publish(body, exchange=QUEUE.exchange, routing_key="acks", declare=[QUEUE])


def test_a_delivery_and_its_ack_cost_two_commands(server: str) -> None:
    client = redis.Redis.from_url(server)
    with Connection(server, transport=TRANSPORT) as connection:
        _publish(connection, {"n": 1})
        simple = connection.SimpleQueue(QUEUE)
        client.execute_command("CONFIG", "RESETSTAT")
        seen, watching = _watch(server)
        before = time.time()
        message = simple.get(timeout=5)
        assert client.hlen("unacked") == 1 and client.exists("unacked_index") == 0
        (entry,) = client.hvals("unacked")
        raw, exchange, routing_key, delivered_at = json.loads(entry)
        assert raw["headers"] == message.headers and (exchange, routing_key) == ("acks", "acks")
        assert before <= delivered_at <= time.time()
        message.ack()
        assert client.hlen("unacked") == 0
        simple.close()
    stats = client.info("commandstats")
    client.set("monitor-stop", b"1")
    watching.join(10)
    client.close()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    assert "multi" not in calls and "exec" not in calls
    assert "zadd" not in calls and "zrem" not in calls
    assert (calls["hset"], calls["hdel"]) == (1, 1)
    assert [c for c in seen if c in ("ZADD", "HSET", "HDEL", "ZREM")] == ["HSET", "HDEL"]


def test_an_entry_past_the_visibility_timeout_is_handed_back_and_a_young_one_is_not(
    server: str,
) -> None:
    client = redis.Redis.from_url(server)
    options = {"visibility_timeout": 30}
    with Connection(server, transport=TRANSPORT, transport_options=options) as connection:
        _publish(connection, {"n": "old"})
        _publish(connection, {"n": "young"})
        simple = connection.SimpleQueue(QUEUE)
        old, young = simple.get(timeout=5), simple.get(timeout=5)
        assert client.llen("acks") == 0 and client.hlen("unacked") == 2
        # As if the old one had been delivered 60 s ago to a worker that then died.
        tag = old.delivery_tag
        entry = json.loads(client.hget("unacked", tag))
        entry[3] -= 60
        client.hset("unacked", tag, json.dumps(entry))
        # An entry of kombu's own format (no time) with an old index score, and a hostile one.
        client.hset("unacked", "kombu-format", json.dumps([entry[0], "acks", "acks"]))
        client.zadd("unacked_index", {"kombu-format": time.time() - 60})
        client.hset("unacked", "hostile", b"not json")
        connection.default_channel.qos.restore_visible(num=0, interval=1)
        assert client.hkeys("unacked") == [young.delivery_tag.encode()]
        assert client.zcard("unacked_index") == 0
        assert sorted(json.loads(m)["body"] for m in client.lrange("acks", 0, -1)) == sorted(
            [entry[0]["body"]] * 2
        )
        simple.close()
    client.close()


def test_the_cluster_scans_the_unacked_hash_once_per_restore_interval(server: str) -> None:
    # (Besides each worker's first restore, at its start, which always scans.)
    client = redis.Redis.from_url(server)
    options = {"visibility_timeout": 30, "unacked_restore_interval": 60}
    with (
        Connection(server, transport=TRANSPORT, transport_options=options) as one,
        Connection(server, transport=TRANSPORT, transport_options=options) as other,
    ):
        client.execute_command("CONFIG", "RESETSTAT")
        one.default_channel.qos.restore_visible(num=0, interval=1)  # its start-up scan
        other.default_channel.qos.restore_visible(num=0, interval=1)  # another's, at its start
        client.execute_command("CONFIG", "RESETSTAT")
        one.default_channel.qos.restore_visible(num=0, interval=1)  # periodic: within the
        other.default_channel.qos.restore_visible(num=0, interval=1)  # interval, no scan
        stats = client.info("commandstats")
        assert 50 <= client.pttl("unacked_mutex:scanned:30") / 1000 <= 60
    client.close()
    assert "cmdstat_hscan" not in stats


def test_a_rejected_message_goes_back_to_the_front_of_the_queue(server: str) -> None:
    client = redis.Redis.from_url(server)
    with Connection(server, transport=TRANSPORT) as connection:
        _publish(connection, {"n": 1})
        _publish(connection, {"n": 2})
        simple = connection.SimpleQueue(QUEUE)
        first = simple.get(timeout=5)
        first.requeue()
        assert client.hlen("unacked") == 0
        assert simple.get(timeout=5).payload == {"n": 1}  # still next, not behind n=2
        simple.close()
    client.close()


@pytest.mark.parametrize("made_at", ["next restore", "channel close"])
def test_a_hand_back_redis_was_away_for_is_made_once_redis_is_back(made_at: str) -> None:
    # A worker hands back a run it could not start because Redis went away; the hand-back
    # needs Redis too. It is kept, not left to the visibility timeout (here an hour): the
    # next restore of any channel of the process that reaches Redis makes it, or the
    # channel's close (a stopping worker) if Redis is back by then.
    handbacks.take()  # nothing left over from another test of this process
    server = EmbeddedRedis(durable=True)  # the unacked entry outlives the restart
    options = {"visibility_timeout": 3600}
    try:
        url = server.start()
        client = redis.Redis.from_url(url)
        with Connection(url, transport=TRANSPORT, transport_options=options) as first:
            _publish(first, {"n": 1})
            simple = first.SimpleQueue(QUEUE)
            message = simple.get(timeout=5)
            assert client.hlen("unacked") == 1 and client.llen("acks") == 0
            server.kill()
            message.requeue()  # Redis is away: no error, the hand-back is kept
            if made_at == "channel close":
                server.start()
            with contextlib.suppress(Exception):
                simple.close()
        if made_at == "next restore":
            server.start()
            with Connection(url, transport=TRANSPORT, transport_options=options) as second:
                second.default_channel.qos.restore_visible(num=0, interval=1)
        assert client.hlen("unacked") == 0 and client.llen("acks") == 1
        with Connection(url, transport=TRANSPORT, transport_options=options) as third:
            again = third.SimpleQueue(QUEUE).get(timeout=5)
            assert again.payload == {"n": 1} and again.delivery_tag == message.delivery_tag
            again.ack()
        assert handbacks.take() == []
        client.close()
    finally:
        server.close()


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


@pytest.mark.timeout(120)
def test_entries_with_times_no_clock_reads_neither_stop_a_worker_nor_stay_in_flight(
    server: str, tmp_path: Path
) -> None:
    # Anyone who can write to Redis can write the unacked hash. An integer too large for a
    # float stopped every worker at start ("Unrecoverable error: OverflowError"); NaN and the
    # infinities compare as never old, so nothing restored them and they counted in flight
    # (KEDA's trigger) for good.
    client = redis.Redis.from_url(server)
    times = {"huge": "1" + "0" * 400, "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}
    for tag, when in times.items():
        client.hset("unacked", tag, f'[{{"body": "x"}}, "", "nowhere", {when}]')
    settings = make_settings(server, time_limit=2.0)
    worker = WorkerProcess(
        settings, tmp_path, concurrency=2, env={"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "3"}
    )
    try:
        worker.wait_ready()
        remote = RunnableK8s(bound=SlowModel(delay=0.01), settings=settings)
        assert remote.invoke("still serving").content == "echo: still serving"
        deadline = time.monotonic() + 30
        while client.hexists("unacked", "nan") and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {k.decode() for k in client.hkeys("unacked")} & set(times)
        assert not left, f"hostile entries still counted in flight: {left}"
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        worker.stop()
        client.close()
