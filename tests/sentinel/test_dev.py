"""`runnable-k8s dev` through a `sentinel://` URL: it reads the queue through the sentinels,
starts a worker from zero that serves the runs, and stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runnable_k8s import RunnableK8s
from runnable_k8s.models import DemoChatModel
from tests.conftest import make_settings
from tests.support.sentinel import SentinelGroup
from tests.support.workers import REPO, worker_env


@pytest.mark.timeout(180)
def test_dev_scales_from_zero_and_serves_runs_through_the_sentinels(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    settings = make_settings(sentinel_group.url)
    env = worker_env(settings, {"RUNNABLE_K8S_HEARTBEAT_FILE": str(tmp_path / "hb")})
    assert env["RUNNABLE_K8S_REDIS_URL"].startswith("sentinel://")
    dev = subprocess.Popen(
        [
            sys.executable, "-m", "runnable_k8s", "dev",
            "--polling-interval", "0.5", "--cooldown", "30", "--max-replicas", "1",
            "--log-dir", str(tmp_path / "logs"),
        ],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
        runs = [remote.submit(f"Pikachu {i}?") for i in range(3)]
        assert all("Pichu" in run.result(timeout=90).content for run in runs)
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=120)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert dev.returncode == 0, output
    # The runs were counted through the sentinels: dev started a worker from zero for them
    # (it starts none for an empty queue), and that worker served all three.
    assert re.search(r"^worker-1: started \(pid \d+\)$", output, re.M), output
    assert "stopped: 3 done, 0 failed, 0 worker crash(es)" in output, output
    assert "RUNNABLE_K8S_REDIS_URL=sentinel://" in output, output
