"""A process started with a lifeline stops when its parent is gone, with or without the kernel's
parent-death signal, and hard if its warm stop hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.support.workers import REPO, worker_env

# The grandchild: a lifeline on its parent (the middle process), then it waits to be stopped.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from runnable_k8s import lifeline
    if sys.argv[1] == "watchdog-only":  # as on a system without PR_SET_PDEATHSIG
        lifeline.set_parent_death_signal = lambda signum: False
    if sys.argv[2] == "ignore-sigterm":  # a warm stop that never finishes
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    assert lifeline.exit_with_parent(os.getppid(), grace=1.0, poll=0.1)
    print(os.getpid(), flush=True)
    time.sleep(300)
    """
)
# The middle process: starts the grandchild, reports its pid, then waits to be killed.
_MIDDLE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], stdout=sys.stdout)
    time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mechanism", ["parent-death-signal", "watchdog-only"])
@pytest.mark.parametrize("stop", ["warm", "ignore-sigterm"])
def test_child_stops_when_its_parent_is_killed(mechanism: str, stop: str) -> None:
    middle = subprocess.Popen(
        [sys.executable, "-c", _MIDDLE, _CHILD, mechanism, stop],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    try:
        time.sleep(0.5)
        assert _alive(child), "the lifeline stopped a child whose parent is alive"
        middle.kill()
        middle.wait(10)
        deadline = time.monotonic() + 30
        while _alive(child):
            assert time.monotonic() < deadline, f"child {child} outlived its parent"
            time.sleep(0.1)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        if middle.poll() is None:
            middle.kill()
            middle.wait(10)
        middle.stdout.close()


def test_worker_whose_parent_is_already_gone_does_not_start(redis_url: str) -> None:
    settings = make_settings(redis_url)
    not_my_parent = os.getpid() + 1 if os.getpid() + 1 != os.getppid() else os.getpid() + 2
    done = subprocess.run(
        [sys.executable, "-m", "runnable_k8s", "worker", f"--parent-pid={not_my_parent}"],
        env=worker_env(settings), cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"process {not_my_parent} that started this worker is gone" in done.stderr
    assert "celery@" not in done.stdout + done.stderr  # Celery never started
