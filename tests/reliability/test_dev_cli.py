"""`runnable-k8s dev` as a user runs it: workers appear for a burst, the live view reports it,
and Ctrl-C stops everything without losing a queued run."""

from __future__ import annotations

import os
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
from runnable_k8s.store import keys
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
    assert "metric: high (" in output and " + queued (" in output and " + low (" in output
    assert "pending (rk8s:pending:" in output
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


def _children(pid: int) -> dict[int, str]:
    """Live processes whose parent is `pid`, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(pid):
            found[int(entry.name)] = cmdline
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a reaped or zombie process runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "ending", ["ctrl-c-with-tee", "reader-gone-then-ctrl-c", "hangup", "sigkill"]
)
def test_dev_leaves_no_worker_or_server_behind_whatever_happens_to_it(
    redis_url: str, tmp_path: Path, ending: str
) -> None:
    """`dev 2>&1 | tee dev.log` as a user runs it (with its embedded server), then the ways it
    can end: Ctrl-C to the terminal's process group (tee dies too), its reader gone before
    Ctrl-C, the terminal closed (SIGHUP to the group), and dev killed outright."""
    settings = make_settings(redis_url)
    env = worker_env(settings)
    for name in ("RUNNABLE_K8S_REDIS_URL", "RUNNABLE_K8S_SIGNING_KEY"):
        env.pop(name)  # dev starts its embedded server and makes a key, as for a new user
    log_dir = tmp_path / "logs"
    tee = subprocess.Popen(
        ["tee", str(tmp_path / "dev.log")],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, process_group=0,
    )  # fmt: skip
    assert tee.stdin is not None
    group = tee.pid  # the pipeline's process group, as a shell makes one per job
    dev = subprocess.Popen(
        [
            sys.executable, "-m", "runnable_k8s", "dev",
            "--polling-interval", "0.5", "--min-replicas", "2", "--max-replicas", "2",
            "--target", "1", "--log-dir", str(log_dir),
        ],
        env=env, cwd=REPO, stdout=tee.stdin, stderr=subprocess.STDOUT, process_group=group,
    )  # fmt: skip
    tee.stdin.close()  # dev holds the only writing end: when tee goes, dev's writes fail
    tracked: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not all((log_dir / f"worker-{n}.heartbeat.ready").exists() for n in (1, 2)):
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()
            assert time.monotonic() < deadline, "dev's workers never became ready"
            time.sleep(0.2)
        tracked = _children(dev.pid)
        workers = [pid for pid, cmd in tracked.items() if "runnable_k8s worker" in cmd]
        servers = [pid for pid, cmd in tracked.items() if "server" in cmd]
        assert len(workers) == 2 and len(servers) == 1, tracked

        if ending == "ctrl-c-with-tee":
            os.killpg(group, signal.SIGINT)
        elif ending == "reader-gone-then-ctrl-c":
            tee.kill()
            tee.wait(10)
            dev.send_signal(signal.SIGINT)
        elif ending == "hangup":
            os.killpg(group, signal.SIGHUP)
        else:
            dev.kill()

        deadline = time.monotonic() + 120
        while [pid for pid in tracked if _running(pid)]:
            assert time.monotonic() < deadline, (
                f"still running after dev ended ({ending}): "
                f"{ {pid: tracked[pid] for pid in tracked if _running(pid)} }"
            )
            time.sleep(0.2)
        code = dev.wait(60)
        if ending != "sigkill":
            assert code == 0, (tmp_path / "dev.log").read_text()
    finally:
        for pid in [dev.pid, tee.pid, *tracked]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        dev.wait(10)
        tee.wait(10)


@pytest.mark.timeout(180)
def test_dev_whose_control_loop_crashes_stops_its_workers_and_exits(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    env = worker_env(settings)
    for name in ("RUNNABLE_K8S_REDIS_URL", "RUNNABLE_K8S_SIGNING_KEY"):
        env.pop(name)
    log_dir = tmp_path / "logs"
    dev = subprocess.Popen(
        [
            sys.executable, "-m", "runnable_k8s", "dev",
            "--polling-interval", "0.5", "--min-replicas", "2", "--max-replicas", "2",
            "--target", "1", "--restart-backoff", "0.5", "--log-dir", str(log_dir),
        ],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    tracked: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        # Ready, and beating: a worker creates the folder of its heartbeat file once, when its
        # heartbeat starts, which can come after its consumer made it ready. Removed before
        # that, the folder came back, and the restart below succeeded (seen in CI).
        files = [f"worker-{n}.heartbeat{end}" for n in (1, 2) for end in ("", ".ready")]
        while not all((log_dir / name).exists() for name in files):
            assert dev.poll() is None
            assert time.monotonic() < deadline, "dev's workers never became ready"
            time.sleep(0.2)
        tracked = _children(dev.pid)
        workers = [pid for pid, cmd in tracked.items() if "runnable_k8s worker" in cmd]
        assert len(workers) == 2, tracked
        # Restarting a crashed worker needs its log folder: without it the control loop fails.
        # A file takes its place, so that nothing can make the folder again.
        for path in log_dir.iterdir():
            path.unlink()
        log_dir.rmdir()
        log_dir.write_text("not a folder")
        os.kill(workers[0], signal.SIGKILL)
        try:
            output, _ = dev.communicate(timeout=120)
        except subprocess.TimeoutExpired as exc:
            # Say what `dev` was doing (seen once in CI, not reproduced): its own output.
            running = {pid: cmd for pid, cmd in tracked.items() if _running(pid)}
            shown = exc.output.decode() if isinstance(exc.output, bytes) else str(exc.output)
            pytest.fail(f"dev did not exit; still running {running}; its output:\n{shown[-4000:]}")
        assert dev.returncode != 0, output
        assert "the dev control loop failed" in output
        assert [pid for pid in tracked if _running(pid)] == [], output
    finally:
        for pid in [dev.pid, *tracked]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        dev.wait(10)
        if dev.stdout is not None:  # else collected later, a ResourceWarning in another test
            dev.stdout.close()
