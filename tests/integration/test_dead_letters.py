"""Dead letters: failed, refused and expired runs are kept, shown, retried and purged; the
index is hostile (forged entries and tampered requests are refused)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from runnable_k8s import ExecutionTimeout, RemoteError, RunnableK8s, RunRejected, Settings
from runnable_k8s.producer.dead_letters import DeadLetters
from runnable_k8s.protocol import task_message
from runnable_k8s.store import keys
from tests.conftest import make_settings
from tests.support.workers import WorkerProcess, cli


@pytest.fixture(scope="module")
def dl_settings(redis_url: str) -> Settings:
    return make_settings(redis_url, max_attempts=2, time_limit=3.0, dead_letter_ttl=600.0)


@pytest.fixture(scope="module")
def dl_worker(dl_settings: Settings, logs_dir: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(dl_settings, logs_dir, concurrency=8, name="dead-letters")
    process.wait_ready()
    yield process
    process.stop()


def _listed(settings: Settings) -> dict[str, dict[str, Any]]:
    out = cli(settings, "failed", "list", "--json").stdout
    return {row["id"]: row for row in map(json.loads, out.splitlines())}


def _failing_run(settings: Settings, counter: Path, fail: int) -> str:
    remote = RunnableK8s(ref="tests.support.refs:fails_first", settings=settings)
    run = remote.submit({"counter": str(counter), "fail": fail})
    with pytest.raises(RemoteError, match="provider unavailable"):
        run.result(timeout=30)
    return run.id


@pytest.mark.timeout(120)
def test_failed_timed_out_and_refused_runs_are_listed_and_others_are_not(
    dl_settings: Settings, dl_worker: WorkerProcess, tmp_path: Path
) -> None:
    failed = _failing_run(dl_settings, tmp_path / "calls", fail=99)
    slow = RunnableK8s(ref="tests.support.refs:slow", settings=dl_settings)
    timed_out = slow.submit(30)
    with pytest.raises(ExecutionTimeout):
        timed_out.result(timeout=30)
    refused = RunnableK8s(ref="os:getcwd", settings=dl_settings).submit(None)
    with pytest.raises(RunRejected):
        refused.result(timeout=30)
    succeeded = slow.submit(0.01)
    assert succeeded.result(timeout=30) == "slept 0.01"
    cancelled = slow.submit(30)
    deadline = time.monotonic() + 20
    while cancelled.status().state != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled.cancel()
    while not cancelled.status().done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled.status().state == "cancelled"

    listed = _listed(dl_settings)
    assert {failed, timed_out.id, refused.id} <= set(listed)
    assert succeeded.id not in listed
    assert cancelled.id not in listed
    assert listed[failed]["attempt"] == 2
    assert listed[timed_out.id]["reason"] == "timeout"
    assert listed[refused.id]["reason"].startswith("rejected")

    shown = cli(dl_settings, "failed", "show", failed).stdout
    assert "TransientError: provider unavailable (call 2)" in shown
    assert "state:       failed" in shown
    shown = json.loads(cli(dl_settings, "failed", "show", refused.id, "--json").stdout)
    assert shown["error"] is None
    assert "os:getcwd" in shown["reason"], shown


@pytest.mark.timeout(120)
def test_retry_runs_the_same_request_again_linked_to_the_dead_letter(
    dl_settings: Settings, dl_worker: WorkerProcess, tmp_path: Path
) -> None:
    # Fails on both attempts of the first run; the third call, the retry's, succeeds.
    old = _failing_run(dl_settings, tmp_path / "calls", fail=2)
    new = cli(dl_settings, "failed", "retry", old).stdout.strip()
    assert new and new != old
    result = cli(dl_settings, "result", new, "--timeout", "30").stdout
    assert json.loads(result) == "succeeded on call 3"
    status = json.loads(cli(dl_settings, "status", new, "--json").stdout)
    assert status["state"] == "succeeded"
    assert status["retry_of"] == old
    assert "retry_of:    " + old in cli(dl_settings, "status", new).stdout
    # The retried run stays a dead letter; the retry, which succeeded, is none.
    listed = _listed(dl_settings)
    assert old in listed
    assert new not in listed


@pytest.mark.timeout(120)
def test_retry_of_a_large_request_uses_its_kept_body(
    dl_settings: Settings, dl_worker: WorkerProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Over the inline limit: the body travels beside the message and is kept beside it.
    remote = RunnableK8s(ref="tests.support.refs:fails_first", settings=dl_settings)
    job = {"counter": str(tmp_path / "calls"), "fail": 2, "pad": "x" * 40_000}
    run = remote.submit(job)
    with pytest.raises(RemoteError, match="provider unavailable"):
        run.result(timeout=30)
    assert len(redis_client.get(keys.kept_body(run.id)) or b"") > 40_000
    assert not redis_client.exists(keys.body(run.id))
    new = cli(dl_settings, "failed", "retry", run.id).stdout.strip()
    result = cli(dl_settings, "result", new, "--timeout", "30").stdout
    assert json.loads(result) == "succeeded on call 3"


@pytest.mark.timeout(120)
def test_forged_index_entries_are_refused_or_dropped(
    dl_settings: Settings, dl_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    index = keys.dead_letters(dl_settings.queue)
    good = RunnableK8s(ref="tests.support.refs:slow", settings=dl_settings).submit(0.01)
    assert good.result(timeout=30) == "slept 0.01"
    forged_status = "f" * 32
    redis_client.set(keys.status(forged_status), b"not a signed record")
    vanished = "e" * 32
    redis_client.zadd(index, {good.id: time.time(), forged_status: time.time(), vanished: 1e10})

    shown = cli(dl_settings, "failed", "show", good.id, check=False)
    assert shown.returncode == 1
    assert "signed status says succeeded (the index entry is forged)" in shown.stderr
    retried = cli(dl_settings, "failed", "retry", good.id, check=False)
    assert retried.returncode == 1
    assert "forged" in retried.stderr
    shown = cli(dl_settings, "failed", "show", forged_status, check=False)
    assert shown.returncode == 1
    assert "SignatureRejected" in shown.stderr
    assert "status record is not signed" in shown.stderr

    listing = cli(dl_settings, "failed", "list")
    assert good.id not in listing.stdout
    assert forged_status not in listing.stdout
    assert "2 index entries refused" in listing.stderr
    # An entry whose run has no records left is removed by `list`.
    assert redis_client.zscore(index, vanished) is None
    assert redis_client.zscore(index, good.id) is not None


@pytest.mark.timeout(120)
def test_tampered_or_swapped_stored_request_is_refused_by_retry(
    dl_settings: Settings, dl_worker: WorkerProcess, redis_client: redis.Redis, tmp_path: Path
) -> None:
    first = _failing_run(dl_settings, tmp_path / "first", fail=99)
    second = _failing_run(dl_settings, tmp_path / "second", fail=99)
    copy = redis_client.get(keys.kept_request(first))
    assert isinstance(copy, bytes)
    found = task_message.argument_of(copy)
    assert found is not None
    wire = found[0]
    assert '"fail": 99' in wire
    tampered = task_message.build(
        wire.replace('"fail": 99', '"fail": 0'),
        run_id=first,
        queue=dl_settings.queue,
        description="tampered",
    )
    redis_client.set(keys.kept_request(first), tampered.encode())
    before = set(redis_client.scan_iter(match="rk8s:{*}:status", count=1000))
    retried = cli(dl_settings, "failed", "retry", first, check=False)
    assert retried.returncode == 1
    assert "stored request fails verification" in retried.stderr

    # Another dead letter's genuine request, copied into this run's key.
    redis_client.set(keys.kept_request(first), redis_client.get(keys.kept_request(second)) or b"")
    retried = cli(dl_settings, "failed", "retry", first, check=False)
    assert retried.returncode == 1
    assert f"its stored request is run {second}'s" in retried.stderr
    # Neither refusal submitted anything.
    assert set(redis_client.scan_iter(match="rk8s:{*}:status", count=1000)) == before


@pytest.mark.timeout(120)
def test_purge_removes_entries_and_their_requests_and_prints_the_count(
    redis_url: str, logs_dir: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, max_attempts=1, dead_letter_ttl=600.0)
    process = WorkerProcess(settings, logs_dir, concurrency=4, name="purge")
    process.wait_ready()
    try:
        runs = [_failing_run(settings, tmp_path / f"calls-{i}", fail=1) for i in range(3)]
    finally:
        process.stop()
    assert set(_listed(settings)) == set(runs)
    assert cli(settings, "failed", "purge", "--older-than", "3600").stdout.strip() == "purged 0"
    assert cli(settings, "failed", "purge").stdout.strip() == "purged 3"
    assert _listed(settings) == {}
    assert not any(redis_client.exists(keys.kept_request(r)) for r in runs)


@pytest.mark.timeout(150)
def test_expired_runs_are_dead_letters_and_entries_vanish_after_their_ttl(
    redis_url: str, logs_dir: Path, redis_client: redis.Redis
) -> None:
    # Long enough for a loaded machine to see the entry first, short enough to wait out.
    settings = make_settings(redis_url, run_expiry=1.0, dead_letter_ttl=15.0)
    run = RunnableK8s(ref="tests.support.refs:slow", settings=settings).submit(0.01)
    time.sleep(1.5)  # expires in the queue: no worker yet
    process = WorkerProcess(settings, logs_dir, concurrency=4, name="expiry")
    process.wait_ready()
    letters = DeadLetters(settings)
    try:
        deadline = time.monotonic() + 30
        while not run.status().done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.status().state == "expired"
        listed = letters.listing().letters
        assert [letter.status.run_id for letter in listed] == [run.id]
        assert listed[0].status.state == "expired"
        assert redis_client.exists(keys.kept_request(run.id))
        deadline = time.monotonic() + 60
        while letters.listing().letters and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        letters.close()
        process.stop()
    assert run.id not in _listed(settings)
    assert redis_client.zscore(keys.dead_letters(settings.queue), run.id) is None
    assert not redis_client.exists(keys.kept_request(run.id))


@pytest.mark.timeout(120)
def test_a_key_of_another_type_in_the_index_place_does_not_lose_the_outcome(
    redis_url: str, logs_dir: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, max_attempts=1)
    redis_client.set(keys.dead_letters(settings.queue), b"not a sorted set")
    process = WorkerProcess(settings, logs_dir, concurrency=4, name="index-type")
    process.wait_ready()
    try:
        run_id = _failing_run(settings, tmp_path / "calls", fail=1)
        status = RunnableK8s(ref="tests.support.refs:slow", settings=settings).invoke(0.01)
    finally:
        process.stop()
    assert status == "slept 0.01"
    shown = cli(settings, "status", run_id, "--json").stdout
    assert json.loads(shown)["state"] == "failed"
    # The finish script ran to its end: no Redis error escaped into the task.
    assert "ResponseError" not in process.log_path.read_text()
