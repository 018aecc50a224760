"""The worker image's own code failing in ways a runnable's error handling does not see (a
module that raises at import, a runnable whose own inner task is cancelled): the run still
ends with a recorded failure that names the error, never `running` until the caller gives
up."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runnable_k8s import RemoteError, RunnableK8s, RunRejected, Settings
from tests.conftest import make_settings
from tests.support.workers import REPO, WorkerProcess

_APP = {
    "__init__.py": "",
    # A worker-image module that reads its configuration at import (very common).
    "graphs.py": """
        import os
        from langchain_core.runnables import RunnableLambda
        DATABASE_URL = os.environ["WORKER_APP_DATABASE_URL"]   # KeyError when not configured
        agent = RunnableLambda(lambda x: x)
        """,
    # A runnable whose own code ends with CancelledError (an inner task it awaited was
    # cancelled), without any cancellation of the run.
    "tasks.py": """
        import asyncio
        from langchain_core.runnables import RunnableLambda

        async def _work(x):
            inner = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_later(0.05, inner.cancel)
            return await inner

        job = RunnableLambda(_work)
        """,
}


@pytest.fixture(scope="module")
def app_worker(
    redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, WorkerProcess]]:
    root = tmp_path_factory.mktemp("worker-app")
    package = root / "worker_app"
    package.mkdir()
    for name, source in _APP.items():
        (package / name).write_text(textwrap.dedent(source))
    settings = make_settings(redis_url, allowed_refs=("worker_app.",))
    process = WorkerProcess(
        settings, logs_dir, name="worker-app", env={"PYTHONPATH": f"{REPO}:{root}"}
    )
    process.wait_ready()
    yield settings, process
    process.kill()


def test_a_ref_module_failing_at_import_fails_the_run_with_its_error(
    app_worker: tuple[Settings, WorkerProcess],
) -> None:
    settings, _ = app_worker
    remote = RunnableK8s(ref="worker_app.graphs:agent", settings=settings, timeout=8)
    run = remote.submit("hi")
    # Refused with the import's own error (not a WaitTimeout: that would be no outcome).
    with pytest.raises(RunRejected) as info:
        run.result(timeout=8)
    assert "cannot import reference 'worker_app.graphs:agent'" in str(info.value)
    assert "KeyError: 'WORKER_APP_DATABASE_URL'" in str(info.value)
    assert run.status().state == "failed"


def test_a_runnable_ending_with_its_own_cancelled_error_is_failed_not_cancelled(
    app_worker: tuple[Settings, WorkerProcess],
) -> None:
    settings, _ = app_worker
    run = RunnableK8s(ref="worker_app.tasks:job", settings=settings, timeout=8).submit("hi")
    # Nobody cancelled the run: RunCancelled (or a WaitTimeout) would misreport it.
    with pytest.raises(RemoteError) as info:
        run.result(timeout=8)
    assert info.value.remote_type.endswith("CancelledError")
    assert run.status().state == "failed"
