"""A refused input or output gets advice about data, not the advice meant for runnables (widen
the class allowlist, run by reference): a run by reference sends its input all the same."""

from __future__ import annotations

import datetime

import pytest

from runnable_k8s import RemoteError, RunnableK8s, SerializationRefused, Settings
from tests.support.chains import chain
from tests.support.workers import WorkerProcess

RUNNABLE_ADVICE = ("RUNNABLE_K8S_ALLOWED_CLASSES", "by reference", "ref=", "ALLOWED_REFS")
WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize("by_reference", [True, False], ids=["by-reference", "shipped"])
def test_datetime_input_is_refused_with_what_to_send_instead(
    settings: Settings, by_reference: bool
) -> None:
    remote = (
        RunnableK8s(ref="tests.support.refs:lambda_chain", settings=settings)
        if by_reference
        else RunnableK8s(bound=chain, settings=settings)
    )
    with pytest.raises(SerializationRefused) as caught:
        remote.invoke({"input": "Pikachu?", "asked_at": WHEN})
    text = str(caught.value)
    assert "input contains datetime.datetime at asked_at" in text
    assert "Send an ISO 8601 string (value.isoformat()" in text
    assert [advice for advice in RUNNABLE_ADVICE if advice in text] == []


def test_output_refused_on_the_worker_says_the_runnable_returned_it(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(ref="tests.support.refs:returns_datetime", settings=settings)
    with pytest.raises(RemoteError) as caught:
        remote.invoke("when?")
    error = caught.value
    assert error.remote_type.endswith("SerializationRefused")
    text = error.remote_message
    assert text.startswith("output contains datetime.datetime at the top"), text
    assert "The runnable returned it on the worker" in text
    assert "Make the runnable return an ISO 8601 string" in text
    assert [advice for advice in RUNNABLE_ADVICE if advice in text] == []


def test_streamed_chunk_refused_on_the_worker_says_the_runnable_streamed_it(
    settings: Settings, worker: WorkerProcess
) -> None:
    remote = RunnableK8s(ref="tests.support.refs:returns_datetime", settings=settings)
    with pytest.raises(RemoteError) as caught:
        list(remote.stream("when?"))
    text = caught.value.remote_message
    assert text.startswith("stream chunk contains datetime.datetime at the top"), text
    assert "The runnable streamed it on the worker" in text
    assert [advice for advice in RUNNABLE_ADVICE if advice in text] == []
