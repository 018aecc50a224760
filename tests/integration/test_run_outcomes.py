"""Every way a run can end gets an outcome, and the worker keeps serving after it."""

from __future__ import annotations

import pytest

from runnable_k8s import RemoteError, RunnableK8s, Settings
from tests.support.workers import WorkerProcess

ESCAPES = ["SystemExit", "KeyboardInterrupt", "tests.support.refs.OutsideException"]


def _served_after(settings: Settings) -> None:
    after = RunnableK8s(ref="tests.support.refs:slow", settings=settings)
    assert after.invoke(0.01) == "slept 0.01"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ESCAPES)
@pytest.mark.parametrize(
    ("ref", "stream"),
    [
        ("tests.support.refs:escapes", False),
        ("tests.support.refs:escapes", True),
        ("tests.support.refs:escapes_in_child_task", False),
        ("tests.support.refs:escapes_mid_stream", True),
    ],
)
def test_base_exception_from_the_runnable_fails_the_run_and_the_worker_serves_on(
    settings: Settings, worker: WorkerProcess, kind: str, ref: str, stream: bool
) -> None:
    remote = RunnableK8s(ref=ref, settings=settings)
    run = remote.submit(kind.rsplit(".", 1)[-1], stream=stream)
    with pytest.raises(RemoteError) as caught:
        run.result(timeout=30)
    assert caught.value.remote_type == kind
    status = run.status()
    assert status.state == "failed"
    assert status.reason == kind
    if ref.endswith("mid_stream"):
        # The chunk sent before the escape stays in the stream; the reader then gets the error.
        reader = run.stream(timeout=5)
        assert next(reader) == f"before {kind.rsplit('.', 1)[-1]}"
        with pytest.raises(RemoteError):
            next(reader)
    _served_after(settings)
    assert worker.process.poll() is None


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_base_exception_in_a_batch_fails_the_batch_run(
    settings: Settings, worker: WorkerProcess, kind: str
) -> None:
    # In-process, `batch(..., return_exceptions=True)` lets a BaseException through: the
    # remote batch run fails with it, and each input gets that error.
    remote = RunnableK8s(ref="tests.support.refs:escapes", settings=settings)
    results = remote.batch([kind, kind], return_exceptions=True)
    assert [getattr(r, "remote_type", r) for r in results] == [kind, kind]
    _served_after(settings)
