"""LangSmith: a real worker's run nests under the caller's RunnableK8s step in one trace."""

from __future__ import annotations

from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.langchain import LangChainTracer
from langsmith import Client

from runnable_k8s import RunnableK8s
from runnable_k8s.models import DemoChatModel
from tests.conftest import make_settings
from tests.support.langsmith_recorder import LangSmithRecorder
from tests.support.workers import WorkerProcess


def test_worker_runs_nest_under_the_callers_step(redis_url: str, logs_dir: Path) -> None:
    with LangSmithRecorder() as recorder:
        settings = make_settings(redis_url)
        # Tracing is configured by the worker's own environment; the payload carries only
        # the parent's trace position.
        worker = WorkerProcess(
            settings, logs_dir, name="traced", env=recorder.env(LANGSMITH_PROJECT="shared")
        )
        try:
            worker.wait_ready()
            client = Client(api_url=recorder.url, api_key="fake")
            tracer = LangChainTracer(project_name="shared", client=client)
            chain = ChatPromptTemplate.from_messages([("human", "{input}")]) | DemoChatModel()
            remote = RunnableK8s(bound=chain, settings=settings, name="remote-step")
            answer = remote.invoke({"input": "Pikachu?"}, config={"callbacks": [tracer]})
            assert "Pichu" in answer.content
            tracer.wait_for_futures()
            client.flush()

            def nested(r: LangSmithRecorder) -> bool:
                steps = r.named("remote-step")
                return bool(steps) and any(run.parent_run_id == steps[0].id for run in r.runs)

            recorder.wait_for(nested, timeout=30)
            step = recorder.named("remote-step")[0]
            assert step.parent_run_id is None
            worker_root = next(run for run in recorder.runs if run.parent_run_id == step.id)
            assert worker_root.name == "RunnableSequence"
            assert worker_root.trace_id == step.trace_id == step.id
            assert worker_root.dotted_order and step.dotted_order
            assert worker_root.dotted_order.startswith(step.dotted_order + ".")
            recorder.wait_for(
                lambda r: (
                    {run.name for run in r.runs if run.parent_run_id == worker_root.id}
                    == {"ChatPromptTemplate", "DemoChatModel"}
                ),
                timeout=30,
            )
        finally:
            worker.stop()
