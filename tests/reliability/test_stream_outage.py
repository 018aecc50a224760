"""Redis going away while streamed runs publish chunks is the worker's problem, never the
run's: no run fails for it, no chunk is lost or sent twice (even when Redis applied an XADD
whose reply was lost), and a reader that was following a stream through the outage sees it
whole. A runnable's own Redis errors still fail its run."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from runnable_k8s import RemoteError, RemoteRun, RunnableK8s
from runnable_k8s.protocol import rejection, stream
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.reliability.conftest import (
    DurableRedis,
    outcomes,
    read_across_outage,
    started_count,
    wait_until,
)
from tests.support.models import SlowModel
from tests.support.workers import WorkerProcess

RUNS = 24
CHUNKS = 30
TEXT = "".join(f"part{i} " for i in range(CHUNKS))


@pytest.mark.timeout(180)
def test_redis_restart_mid_stream_fails_no_streamed_run(
    durable_redis: DurableRedis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(durable_redis.url, time_limit=60.0, wait_timeout=90.0)
    for name in ("stream-a", "stream-b"):
        worker = WorkerProcess(settings, logs_dir, concurrency=RUNS, name=name)
        workers.append(worker)
        worker.wait_ready()
    # 30 chunks, 0.1 s apart: every run is mid-stream while Redis is away.
    remote = RunnableK8s(bound=SlowModel(delay=0.1, chunks=CHUNKS), settings=settings)
    runs = [remote.submit(f"r{i}", stream=True) for i in range(RUNS)]
    client = redis.Redis.from_url(durable_redis.url)
    try:
        wait_until(
            lambda: all(client.xlen(keys.events(r.id)) >= 2 for r in runs),
            30,
            "every run streaming",
        )
    finally:
        client.close()

    # A reader following one stream across the outage (it reconnects from its cursor).
    followed = read_across_outage(durable_redis, lambda: runs[0].stream(timeout=90))
    # (A chat model's stream ends with an empty chunk.)
    assert [c.content for c in followed if c.content] == [f"part{i} " for i in range(CHUNKS)]

    client = redis.Redis.from_url(durable_redis.url)
    protocol = Protocol(settings)
    try:
        for run in runs:
            # The result, and a fresh reader from the stream's start: every chunk once, in
            # order (the reader refuses a missing position, and skips an exact replay: so the
            # stream itself is counted too, no entry appended twice).
            assert run.result(timeout=60).content == TEXT
            chunks = list(RemoteRun(run.id, settings).stream(timeout=10))
            assert "".join(c.content for c in chunks) == TEXT
            assert run.status().state == "succeeded"
            assert outcomes(client, run.id) == 1
            items = [
                len(protocol.open_batch(fields[b"m"], run.id))
                for _, fields in client.xrange(keys.events(run.id))
                if fields[b"k"] in stream.BATCH_KINDS
            ]
            assert sum(items) == len(chunks)
    finally:
        client.close()
    logs = "".join(w.log() for w in workers)
    # The outage did reach runs mid-stream, and the workers rode it out.
    assert "Redis unavailable while streaming" in logs
    assert "state=failed" not in logs
    assert remote.invoke("after").content == "echo: after"


class ReplyDropper:
    """A TCP proxy in front of Redis that lets chosen commands (by default XADDs) through to the
    server and then cuts the connection before their replies come back: the command is applied,
    and the worker never learns it was (a reply lost when Redis or the network goes away)."""

    def __init__(
        self, target: int, drop: set[int], command: bytes = b"XADD", naming: bytes = b""
    ) -> None:
        self._target = target
        self._drop = drop  # which of those commands (1st, 2nd, ...) to cut off
        self._command = b"\r\n" + command + b"\r\n"
        self.naming = naming  # only commands whose packet holds these bytes count
        self._seen = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            muted = threading.Event()
            threading.Thread(target=self._up, args=(client, server, muted), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, muted), daemon=True).start()

    def _cut(self, data: bytes) -> bool:
        with self._lock:
            if self.naming not in data:
                return False
            for _ in range(data.count(self._command)):
                self._seen += 1
                if self._seen in self._drop:
                    self.dropped += 1
                    return True
        return False

    def _up(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                cut = self._cut(data)
                if cut:
                    muted.set()  # the reply is not passed on
                server.sendall(data)
                if cut:
                    time.sleep(0.3)  # the server applies it
                    break
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _down(self, server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not muted.is_set():
                    client.sendall(data)

    def close(self) -> None:
        self._listener.close()


@pytest.mark.timeout(90)
def test_stream_entry_whose_reply_was_lost_is_not_sent_twice(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    settings = make_settings(own_redis_url)
    port = urlsplit(own_redis_url).port
    assert port is not None
    # Entries carry several chunks when a write was slow (a retried one is): plenty of
    # chunks, so that a 6th XADD comes after the retry of the 3rd.
    proxy = ReplyDropper(port, drop={3, 6})
    try:
        behind = settings.replace(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        worker = WorkerProcess(behind, logs_dir, name="lost-replies")
        workers.append(worker)
        worker.wait_ready()
        remote = RunnableK8s(bound=SlowModel(delay=0.05, chunks=20), settings=settings)
        run = remote.submit("x", stream=True)
        expected = "".join(f"part{i} " for i in range(20))
        assert run.result(timeout=30).content == expected
        assert proxy.dropped == 2
        # Each chunk once: read whole, and counted in the stream itself (a reader skips an
        # exact replay, so only the count tells an entry appended twice).
        chunks = list(RemoteRun(run.id, settings).stream(timeout=10))
        assert "".join(c.content for c in chunks) == expected
        client = redis.Redis.from_url(own_redis_url)
        protocol = Protocol(settings)
        try:
            entries = client.xrange(keys.events(run.id))
            items = [
                len(protocol.open_batch(fields[b"m"], run.id))
                for _, fields in entries
                if fields[b"k"] in stream.BATCH_KINDS
            ]
            assert sum(items) == len(chunks)
            assert len(entries) == len(items) + 1  # and one outcome
        finally:
            client.close()
        assert "Redis unavailable while streaming" in worker.log()
    finally:
        proxy.close()


class CuttableProxy:
    """A TCP proxy in front of Redis that can cut every connection and refuse new ones for a
    while: what a client sees while its master dies and a replica takes over."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._refusing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._refusing:
                    client.close()
                    continue
                server = socket.create_connection(("127.0.0.1", self._target))
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def resume(self) -> None:
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.mark.timeout(120)
def test_stream_entries_a_failover_lost_are_appended_again_and_readers_see_the_stream_whole(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # Redis replicates asynchronously: the master can acknowledge stream entries and die
    # before its replica has them. Here the worker's connections are cut (the master died),
    # the stream's last two entries deleted (they never reached the replica), and the
    # connections allowed again (the replica took over). A reader that had those entries,
    # and one that starts after, must both see every chunk once, in order.
    settings = make_settings(own_redis_url, wait_timeout=90.0)
    port = urlsplit(own_redis_url).port
    assert port is not None
    proxy = CuttableProxy(port)
    try:
        behind = settings.replace(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        worker = WorkerProcess(behind, logs_dir, concurrency=2, name="failover-loss")
        workers.append(worker)
        worker.wait_ready()
        chunks = 16
        remote = RunnableK8s(bound=SlowModel(delay=0.2, chunks=chunks), settings=settings)
        run = remote.submit("lossy", stream=True)
        followed: list[str] = []
        follower = threading.Thread(
            target=lambda: followed.extend(c.content for c in run.stream(timeout=90))
        )
        follower.start()
        key = keys.events(run.id)
        wait_until(lambda: own_redis.xlen(key) >= 5, 30, "five entries streamed")
        proxy.cut()
        time.sleep(0.5)  # the worker's next entry fails meanwhile (a chunk every 0.2 s)
        signed = [e for e, f in own_redis.xrange(key) if f[b"k"] in stream.BATCH_KINDS]
        wait_until(lambda: len(followed) >= len(signed), 10, "the reader has every entry")
        own_redis.xdel(key, *signed[-2:])
        proxy.resume()
        follower.join(90)
        assert not follower.is_alive()
        text = [f"part{i} " for i in range(chunks)]
        assert [c for c in followed if c] == text  # (a chat model's stream ends with "")
        assert "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=10)) == (
            "".join(text)
        )
        assert run.result(timeout=30).content == "".join(text)
        assert outcomes(own_redis, run.id) == 1
        assert "appended again 2 stream entries" in worker.log()
    finally:
        proxy.close()


@pytest.mark.parametrize("stream", [False, True])
def test_runnable_that_raises_a_redis_error_of_its_own_fails_its_run(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess], stream: bool
) -> None:
    # Only the worker's own Redis commands are retried: the application's are its business.
    settings = make_settings(own_redis_url)
    worker = WorkerProcess(settings, logs_dir, name="app-redis")
    workers.append(worker)
    worker.wait_ready()
    run = RunnableK8s(ref="tests.support.refs:own_redis_down", settings=settings).submit(
        "x", stream=stream
    )
    with pytest.raises(RemoteError) as caught:
        run.result(timeout=30)
    assert caught.value.remote_type == "redis.exceptions.ConnectionError"
    assert run.status().state == "failed"


@pytest.mark.timeout(90)
def test_stream_cut_short_by_a_lost_worker_ends_interrupted_after_its_chunks(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # A stream cannot be replayed without showing its chunks twice: the delivery after a
    # killed worker ends the run after the chunks readers already have, instead of appending
    # a second copy of them.
    settings = make_settings(own_redis_url, time_limit=8.0, lease=2.0)
    short = {"RUNNABLE_K8S_VISIBILITY_TIMEOUT": "9"}
    first = WorkerProcess(settings, logs_dir, concurrency=2, env=short, name="doomed")
    workers.append(first)
    first.wait_ready()
    remote = RunnableK8s(bound=SlowModel(delay=0.2, chunks=30), settings=settings)
    run = remote.submit("cut", stream=True)
    client = redis.Redis.from_url(own_redis_url)
    try:
        wait_until(lambda: client.xlen(keys.events(run.id)) >= 3, 20, "run streaming")
        first.kill()
        sent = client.xlen(keys.events(run.id))
    finally:
        client.close()
    second = WorkerProcess(settings, logs_dir, concurrency=2, env=short, name="replacement")
    workers.append(second)
    second.wait_ready()
    reader = RemoteRun(run.id, settings).stream(timeout=60)
    chunks = [next(reader) for _ in range(sent)]
    assert [c.content for c in chunks] == [f"part{i} " for i in range(sent)]
    with pytest.raises(RemoteError, match="interrupted"):
        next(reader)
    status = run.status()
    assert (status.state, status.reason) == ("failed", "interrupted")


@pytest.mark.timeout(60)
def test_unsigned_notices_in_a_stream_do_not_cut_it_short(
    own_redis_url: str, own_redis: redis.Redis, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # Rejection notices are the one unsigned kind of entry, written by a worker that could not
    # verify a message claiming the run's id (anyone can push one): before the run starts and
    # while it streams, they change nothing of the run's own stream.
    settings = make_settings(own_redis_url)
    remote = RunnableK8s(bound=SlowModel(delay=0.1, chunks=10), settings=settings)
    run = remote.submit("noticed", stream=True)
    stream = keys.events(run.id)
    notice = {b"k": rejection.NOTICE, b"d": b"0" * 64, b"r": b"bad_signature"}
    own_redis.xadd(stream, notice)
    worker = WorkerProcess(settings, logs_dir, name="noticed")
    workers.append(worker)
    worker.wait_ready()
    wait_until(lambda: own_redis.xlen(stream) >= 3, 20, "run streaming")
    own_redis.xadd(stream, notice)
    expected = "".join(f"part{i} " for i in range(10))
    assert run.result(timeout=30).content == expected
    assert "".join(c.content for c in RemoteRun(run.id, settings).stream(timeout=10)) == expected


@pytest.mark.timeout(90)
def test_retry_status_write_whose_reply_was_lost_does_not_redeliver_the_run(
    own_redis_url: str, logs_dir: Path, workers: list[WorkerProcess]
) -> None:
    # Between two attempts the worker writes "retrying" then "running": a blip there is ridden
    # out in place, not turned into a redelivery that starts the run over.
    settings = make_settings(own_redis_url)
    port = urlsplit(own_redis_url).port
    assert port is not None
    proxy = ReplyDropper(port, drop={1}, command=b"SET", naming=b"never")
    try:
        behind = settings.replace(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        run = RunnableK8s(ref="tests.support.refs:flaky", settings=settings).submit("x")
        proxy.naming = keys.status(run.id).encode()
        worker = WorkerProcess(behind, logs_dir, name="lost-status-reply")
        workers.append(worker)
        worker.wait_ready()
        assert run.result(timeout=30) == "x after retries"
        assert proxy.dropped == 1
        status = run.status()
        assert (status.state, status.attempt) == ("succeeded", 3)
        assert started_count([worker.log()], run.id) == 1
        assert "Redis unavailable while retrying" in worker.log()
    finally:
        proxy.close()
