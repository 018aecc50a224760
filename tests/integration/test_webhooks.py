"""Completion webhooks against a real HTTP server on loopback: signed deliveries, retries
while the receiver is down, and URLs off the worker's allowlist never called."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from runnable_k8s import RunnableK8s, Settings, SignatureRejected, WebhookRefused, verify_webhook
from runnable_k8s.protocol import priority
from runnable_k8s.protocol.webhook import SIGNATURE_HEADER
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.support.workers import WorkerProcess, cli

SLOW = "tests.support.refs:slow"
SECRET = "webhook-secret-for-tests-0123456789abcdef"


class Receiver:
    """An HTTP server on loopback that records every connection and every POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((self.path, dict(self.headers.items()), body))
                if self.path.endswith("/redirect"):
                    self.send_response(307)  # 307 keeps the method and body if followed
                    self.send_header("Location", "/elsewhere")
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                receiver.connections += 1
                return True

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_posts(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.posts) >= count, self.posts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def hooked(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def hook_worker(hooked: Settings, port: int, logs_dir: Path) -> Iterator[WorkerProcess]:
    env = {
        "RUNNABLE_K8S_WEBHOOK_ALLOW": f"http://127.0.0.1:{port}/hooks/",
        "RUNNABLE_K8S_WEBHOOK_SECRET": SECRET,
        "RUNNABLE_K8S_WEBHOOK_BACKOFF": "0.5",
        "RUNNABLE_K8S_WEBHOOK_ATTEMPTS": "10",
    }
    worker = WorkerProcess(hooked, logs_dir, concurrency=4, env=env, name="webhooks")
    worker.wait_ready()
    yield worker
    worker.stop()


def _settled(run: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hook = run.webhook()
        if hook is not None and hook.state != "pending":
            return hook
        time.sleep(0.1)
    raise AssertionError(f"webhook still pending: {run.webhook()}")


def test_delivery_is_signed_and_verifies(
    hooked: Settings, port: int, hook_worker: WorkerProcess
) -> None:
    receiver = Receiver(port)
    receiver.start()
    try:
        run = RunnableK8s(ref=SLOW, settings=hooked).submit(
            0, webhook=f"http://127.0.0.1:{port}/hooks/a"
        )
        assert run.result(timeout=60) == "slept 0"
        receiver.wait_posts(1, timeout=30)
    finally:
        receiver.stop()
    path, headers, body = receiver.posts[0]
    assert path == "/hooks/a"
    verify_webhook(SECRET, body, headers[SIGNATURE_HEADER])
    sent = json.loads(body)
    assert (sent["run_id"], sent["state"], sent["output"]) == (run.id, "succeeded", "slept 0")
    with pytest.raises(SignatureRejected):
        verify_webhook(SECRET, body.replace(b"succeeded", b"failed"), headers[SIGNATURE_HEADER])
    with pytest.raises(SignatureRejected):
        verify_webhook("another-secret", body, headers[SIGNATURE_HEADER])
    hook = _settled(run)
    assert (hook.state, hook.attempts, hook.error) == ("delivered", 1, "")
    assert len(receiver.posts) == 1
    shown = cli(hooked, "status", run.id).stdout
    assert f"webhook:     delivered after 1 attempt(s): http://127.0.0.1:{port}/hooks/a" in shown


def test_a_receiver_down_for_ten_seconds_still_gets_it(
    hooked: Settings, port: int, hook_worker: WorkerProcess
) -> None:
    run = RunnableK8s(ref=SLOW, settings=hooked).submit(
        0, webhook=f"http://127.0.0.1:{port}/hooks/late"
    )
    assert run.result(timeout=60) == "slept 0"
    time.sleep(10)  # nothing listens on the port meanwhile: every attempt is refused
    down = run.webhook()
    assert down is not None and down.state == "pending" and down.attempts >= 2, down
    assert "ConnectError" in down.error
    receiver = Receiver(port)
    receiver.start()
    try:
        hook = _settled(run, timeout=60)
    finally:
        receiver.stop()
    assert hook.state == "delivered" and hook.attempts > down.attempts
    assert len(receiver.posts) == 1
    verify_webhook(SECRET, receiver.posts[0][2], receiver.posts[0][1][SIGNATURE_HEADER])


def test_a_url_off_the_workers_allowlist_never_receives_a_byte(
    hooked: Settings, port: int, hook_worker: WorkerProcess
) -> None:
    receiver = Receiver(port)
    receiver.start()
    try:
        # The producer has no allowlist here, so only the worker can tell.
        remote = RunnableK8s(ref=SLOW, settings=hooked)
        off = [
            f"http://127.0.0.1:{port}/elsewhere",
            f"http://127.0.0.1:{port}/hooksx",
            f"http://127.0.0.1:{port}@127.0.0.1:{port}/hooks/",
        ]
        runs = []
        for url in off[:2]:
            runs.append(remote.submit(0, webhook=url))
        for run in runs:
            assert run.result(timeout=60) == "slept 0"
            hook = _settled(run)
            assert hook.state == "refused" and "is not allowed" in hook.error, hook
        with pytest.raises(WebhookRefused, match="user info"):
            remote.submit(0, webhook=off[2])
        time.sleep(1.0)
    finally:
        receiver.stop()
    assert receiver.connections == 0 and receiver.posts == []
    hook_worker.wait_for_log(f"refused webhook of run={runs[0].id}")


def test_the_producers_allowlist_refuses_at_submit(
    redis_url: str, redis_client: redis.Redis
) -> None:
    strict = make_settings(redis_url, webhook_allow=("https://hooks.example.com/in",))
    remote = RunnableK8s(ref=SLOW, settings=strict)
    for url in (
        "https://hooks.example.com.evil.net/in",
        "https://hooks.example.com/inx",
        "http://hooks.example.com/in",
        "file:///etc/passwd",
    ):
        with pytest.raises(WebhookRefused):
            remote.submit(0, webhook=url)
    assert sum(redis_client.llen(n) for n in priority.lists(strict.queue).values()) == 0
    assert redis_client.zcard(keys.webhooks(strict.queue)) == 0
    remote.submit(0, webhook="https://hooks.example.com/in/x?y=1")
    assert redis_client.zcard(keys.webhooks(strict.queue)) == 1


def test_redirects_are_not_followed(
    hooked: Settings, port: int, hook_worker: WorkerProcess
) -> None:
    receiver = Receiver(port)
    receiver.start()
    try:
        url = f"http://127.0.0.1:{port}/hooks/redirect"
        run = RunnableK8s(ref=SLOW, settings=hooked).submit(0, webhook=url)
        assert run.result(timeout=60) == "slept 0"
        receiver.wait_posts(1, timeout=30)
        time.sleep(1.0)  # the next retry is 0.5 s later: long enough to see one follow
    finally:
        receiver.stop()
    hook = run.webhook()
    assert hook is not None and "HTTP 307 (redirects are not followed)" in hook.error, hook
    assert [path for path, _, _ in receiver.posts if not path.endswith("/redirect")] == []


def _orphaned_delivery(hooked: Settings, port: int, logs_dir: Path) -> tuple[Any, dict[str, str]]:
    """A finished run whose webhook is left due by a worker killed after attempt 1 (nothing
    listened on the port then), and the environment of workers that may deliver it."""
    env = {
        "RUNNABLE_K8S_WEBHOOK_ALLOW": f"http://127.0.0.1:{port}/hooks/",
        "RUNNABLE_K8S_WEBHOOK_SECRET": SECRET,
        "RUNNABLE_K8S_WEBHOOK_BACKOFF": "2",
    }
    first = WorkerProcess(hooked, logs_dir, concurrency=2, env=env, name="hooks-first")
    try:
        first.wait_ready()
        run = RunnableK8s(ref=SLOW, settings=hooked).submit(
            0, webhook=f"http://127.0.0.1:{port}/hooks/orphan"
        )
        assert run.result(timeout=60) == "slept 0"
        first.wait_for_log(f"webhook of run={run.id} attempt=1", timeout=30)
    finally:
        first.kill()  # SIGKILL: nothing of it runs after this
    return run, env


def test_a_delivery_survives_the_worker_that_finished_the_run(
    hooked: Settings, port: int, logs_dir: Path
) -> None:
    run, env = _orphaned_delivery(hooked, port, logs_dir)
    receiver = Receiver(port)
    receiver.start()
    second = WorkerProcess(hooked, logs_dir, concurrency=2, env=env, name="hooks-second")
    try:
        second.wait_ready()
        hook = _settled(run, timeout=60)
    finally:
        second.stop()
        receiver.stop()
    # The first worker was gone before anything listened: only the second could deliver.
    assert hook.state == "delivered" and hook.attempts >= 2
    assert [path for path, _, _ in receiver.posts] == ["/hooks/orphan"]


def test_a_delivery_made_as_the_worker_starts_is_in_its_log(
    hooked: Settings, port: int, logs_dir: Path
) -> None:
    # The deliverer's first turn is the first thing a starting worker's loops do. They once
    # started before Celery set up logging, so this INFO line went nowhere.
    run, env = _orphaned_delivery(hooked, port, logs_dir)
    time.sleep(2.5)  # past the retry's backoff: the delivery is due when the next worker starts
    receiver = Receiver(port)
    receiver.start()
    second = WorkerProcess(hooked, logs_dir, concurrency=2, env=env, name="hooks-starting")
    try:
        second.wait_ready()
        hook = _settled(run, timeout=60)
        assert hook.state == "delivered", hook
        second.wait_for_log(f"delivered webhook of run={run.id} attempt={hook.attempts}")
    finally:
        second.stop()
        receiver.stop()
