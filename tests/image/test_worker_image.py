"""The worker image, built from `docker/Dockerfile` and run as `k8s/base/deployment.yaml` runs
it: it serves runs, its probes tell the truth, it starts from valid bytecode, it installs the
pinned versions, and SIGTERM lets the run in flight finish."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from packaging.utils import canonicalize_name

from runnable_k8s import RunnableK8s
from runnable_k8s.embedded import EmbeddedRedis
from runnable_k8s.models import DemoChatModel, answer
from tests.image.conftest import MEASURED, StartWorker, pod_secrets
from tests.image.containers import (
    REPO,
    BuiltImage,
    Container,
    Storage,
    run_worker,
    ulimits,
    wait_for_probe,
)
from tests.image.pod import pod_env, probe

# Building the image (minutes on a cold cache) happens in the first test's setup.
pytestmark = pytest.mark.timeout(1500)

STARTUP, LIVENESS, READINESS = (
    probe("startupProbe"),
    probe("livenessProbe"),
    probe("readinessProbe"),
)
QUESTION = "What does Pikachu evolve from?"


def _ready(container: Container, timeout: float = 90) -> float:
    wait_for_probe(container, STARTUP, ok=True, timeout=timeout)
    return wait_for_probe(container, READINESS, ok=True, timeout=timeout)


def test_worker_container_serves_a_run_and_passes_its_probes(
    start_worker: StartWorker, redis_url: str
) -> None:
    container, settings = start_worker(redis_url)
    MEASURED["start-to-ready (podman run to readiness probe)"] = _ready(container)
    # CPU seconds the worker spent getting ready: unlike wall time, barely load-dependent.
    stat = container.exec(["cat", "/proc/1/stat"]).stdout.rsplit(")", 1)[1].split()
    MEASURED["worker CPU to ready"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    for command in (STARTUP, LIVENESS, READINESS):
        done = container.exec(command)
        assert done.returncode == 0, done.stdout + done.stderr

    # What the pod spec asks for holds inside: uid 10001, no capabilities, no new
    # privileges, a read-only root and a writable /tmp.
    status = container.exec(["cat", "/proc/1/status"]).stdout
    assert re.search(r"^Uid:\s+10001\s", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    assert container.exec(["touch", "/opt/venv/written"]).returncode != 0
    assert container.exec(["touch", "/tmp/written"]).returncode == 0

    remote = RunnableK8s(bound=DemoChatModel(), settings=settings)
    assert remote.invoke(QUESTION).content == answer(QUESTION)

    port = container.exec(["printenv", "RUNNABLE_K8S_METRICS_PORT"]).stdout.strip()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert b"runnable_k8s" in reply.read()


@pytest.fixture(scope="module")
def defaults_worker(
    worker_image: BuiltImage,
    image_storage: Storage,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Container, str]]:
    """A worker whose ConfigMap does not set RUNNABLE_K8S_HEARTBEAT_FILE (the image's own
    default must do), run with PYTHONVERBOSE so its log shows where each module's code came
    from. Returns the container and its log up to readiness."""
    env = pod_env(redis_url, pod_secrets("k" * 48, redis_url))
    env.pop("RUNNABLE_K8S_HEARTBEAT_FILE")
    env.update(
        PYTHONVERBOSE="1", RUNNABLE_K8S_METRICS_PORT="0", RUNNABLE_K8S_QUEUE="image-defaults"
    )
    folder = tmp_path_factory.mktemp("defaults")
    container = run_worker(image_storage, worker_image.tag, env, "worker-defaults", folder)
    try:
        # Readiness is written only after the worker has imported all it serves with.
        deadline = time.monotonic() + 90
        while container.exec(["sh", "-c", "test -e /tmp/runnable-k8s-heartbeat.ready"]).returncode:
            assert time.monotonic() < deadline, container.logs()[-4000:]
            time.sleep(0.2)
        yield container, container.logs()
    finally:
        container.remove()


def test_probes_pass_on_the_images_own_heartbeat_default(
    defaults_worker: tuple[Container, str],
) -> None:
    container, _ = defaults_worker
    for command in (STARTUP, LIVENESS, READINESS):
        done = container.exec(command)
        assert done.returncode == 0, f"{command[-1]}: {done.stdout}{done.stderr}"


def test_no_module_is_compiled_from_source_at_start(defaults_worker: tuple[Container, str]) -> None:
    """On the read-only root nothing can be cached: a stale or missing .pyc is recompiled at
    every start. `python -v` says `code object from <file>.py` for each such module."""
    _, log = defaults_worker
    from_bytecode = re.findall(r"^# code object from '(/\S+\.pyc)'$", log, re.M)
    from_source = re.findall(r"^# code object from '?(/\S+\.py)'?$", log, re.M)
    # Proof that the log holds the imports at all (the worker imports ~1,200 modules).
    assert len(from_bytecode) > 500, log[-2000:]
    assert from_source == [], f"{len(from_source)} modules compiled at start: {from_source[:20]}"


def test_image_installs_exactly_the_pinned_versions(
    worker_image: BuiltImage, image_storage: Storage
) -> None:
    done = image_storage.podman(
        "run",
        "--rm",
        "--network",
        "none",
        *ulimits(),
        "--entrypoint",
        "pip",
        worker_image.tag,
        "freeze",
        "--all",
        timeout=120,
    )
    installed = {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in done.stdout.splitlines())
        if version
    }
    pinned = {
        canonicalize_name(name): version
        for name, _, version in (
            line.split("#")[0].strip().partition("==")
            for line in (REPO / "docker" / "constraints.txt").read_text().splitlines()
        )
        if version
    }
    ours = {canonicalize_name("runnable-k8s"), "pip", "setuptools", "wheel"}
    # Every distribution in the image is pinned, at that version. (A pin may go unused: some
    # are needed only on older Pythons, by environment markers.)
    unpinned = {k: v for k, v in installed.items() if k not in ours and pinned.get(k) != v}
    assert unpinned == {}, f"installed but not pinned at that version: {unpinned}"
    assert len(installed) > 20, done.stdout


def test_readiness_fails_while_redis_is_frozen_and_liveness_holds(
    start_worker: StartWorker,
) -> None:
    # A private server: freezing the session's would stall every other test.
    password = "pw-" + os.urandom(8).hex()
    with EmbeddedRedis(password=password) as url:
        container, _ = start_worker(url)
        _ready(container)
        pid = int(redis.Redis.from_url(url).info("server")["process_id"])
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for_probe(container, READINESS, ok=False, timeout=90)
            done = container.exec(LIVENESS)
            assert done.returncode == 0, "a frozen Redis must not restart the pod: " + done.stderr
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for_probe(container, READINESS, ok=True, timeout=60)


def test_sigterm_lets_the_run_in_flight_finish_then_exits_0(
    start_worker: StartWorker, redis_url: str
) -> None:
    container, settings = start_worker(redis_url)
    _ready(container)
    question = "Tell me about Eevee"
    model = DemoChatModel(chunk_delay=0.5)
    chunks: list[str] = []
    errors: list[BaseException] = []
    first = threading.Event()

    def read() -> None:
        try:
            for chunk in RunnableK8s(bound=model, settings=settings).stream(question):
                chunks.append(str(chunk.content))
                first.set()
        except BaseException as exc:
            errors.append(exc)
            first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(60), container.logs()[-4000:]
    container.signal("TERM")
    in_flight = len(chunks)
    reader.join(60)
    assert not reader.is_alive()
    assert errors == []
    # The signal came mid-run, and the rest of the run still arrived.
    assert 0 < in_flight < len(answer(question).split(" "))
    assert "".join(chunks) == answer(question)
    assert container.wait(timeout=120) == 0, container.logs()[-4000:]
