"""`runnable-k8s dev` as a user runs it: workers appear for a burst, the live view reports it,
and Ctrl-C stops everything without losing a queued run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from runnable_k8s import RunnableK8s
from runnable_k8s.models import DemoChatModel
from runnable_k8s.protocol import keys
from tests.conftest import make_settings
from tests.support.models import SlowModel
from tests.support.workers import REPO, WorkerProcess, worker_env


@pytest.mark.timeout(180)
def test_dev_serves_a_burst_and_ctrl_c_keeps_queued_runs(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    env = worker_env(settings, {"RUNNABLE_K8S_HEARTBEAT_FILE": str(tmp_path / "hb")})
    dev = subprocess.Popen(
        [
            sys.executable, "-m", "runnable_k8s", "dev",
            "--polling-interval", "0.5", "--cooldown", "30", "--max-replicas", "2",
            "--target", "2", "--log-dir", str(tmp_path / "logs"),
        ],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        quick = RunnableK8s(bound=DemoChatModel(), settings=settings)
        burst = [quick.submit(f"Pikachu {i}?") for i in range(6)]
        assert all("Pichu" in run.result(timeout=90).content for run in burst)
        # Two slow runs occupy both workers' slots; more wait in the queue.
        slow = RunnableK8s(bound=SlowModel(delay=20.0), settings=settings)
        busy = [slow.submit("busy") for _ in range(4)]
        queued = [quick.submit("Eevee?") for _ in range(3)]
        deadline = time.monotonic() + 30
        while sum(run.status().state == "running" for run in busy) < 2:
            assert time.monotonic() < deadline, "the slow runs never started"
            time.sleep(0.2)
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=120)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert dev.returncode == 0, output
    # The live view reported its state and its decisions (the banner alone says "replicas").
    assert re.search(r"^\d\d:\d\d:\d\d  replicas \d \(\d ready", output, re.M), output
    assert re.search(r"^scale \d -> 2: metric ", output, re.M), output  # up to max-replicas
    # A 30 s cooldown is shorter than the default rescue window (60 s + a 15 s sweep + the
    # polling interval), but the manifests' pending-set trigger keeps a worker up for a lost
    # run: nothing to warn about.
    assert "metric: queued (" in output and "pending (rk8s:pending:" in output
    assert "warning: cooldownPeriod" not in output
    # With the user's own Redis, Ctrl-C leaves unstarted runs where they are.
    waiting = [run for run in busy + queued if not run.status().done]
    assert waiting, "nothing was left queued: the test did not exercise the shutdown"
    for run in waiting:
        assert redis_client.zscore(keys.pending(settings.queue), run.id) is not None or (
            run.status().state == "running"
        )
    # Nothing was lost: a worker started later finishes every run.
    worker = WorkerProcess(settings, tmp_path, name="after-dev")
    try:
        worker.wait_ready()
        for run in busy:
            assert run.result(timeout=120).content.startswith("echo")
        for run in queued:
            assert "Eevee" in run.result(timeout=60).content
    finally:
        worker.stop()
