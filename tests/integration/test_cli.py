"""The run verbs from a shell: submit, status, result, cancel, stream, batch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from runnable_k8s import Settings
from tests.support.chains import chain
from tests.support.workers import REPO, WorkerProcess, worker_env

PIKACHU = {"input": "What does Pikachu evolve from?"}


def cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runnable_k8s", *args],
        env=worker_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=check,
    )


def test_submit_status_result(settings: Settings, worker: WorkerProcess) -> None:
    run_id = cli(settings, "submit", "tests.support.chains:chain", "--input", json.dumps(PIKACHU))
    run_id_text = run_id.stdout.strip()
    assert len(run_id_text) == 32
    output = cli(settings, "result", run_id_text, "--timeout", "60")
    assert "Pichu" in json.loads(output.stdout)
    status = json.loads(cli(settings, "status", run_id_text).stdout)
    assert status["state"] == "succeeded"
    assert status["id"] == run_id_text
    assert status["attempt"] == 1


def test_stream_prints_text_as_it_arrives(settings: Settings, worker: WorkerProcess) -> None:
    run_id = cli(
        settings, "submit", "tests.support.chains:chain", "--input", json.dumps(PIKACHU), "--stream"
    ).stdout.strip()
    streamed = cli(settings, "stream", run_id, "--timeout", "60").stdout
    expected = chain.invoke(PIKACHU)  # run here: not only one CLI verb against another
    assert streamed.strip() == json.loads(cli(settings, "result", run_id).stdout) == expected


def test_cancel_and_errors_exit_non_zero(settings: Settings, worker: WorkerProcess) -> None:
    run_id = cli(
        settings, "submit", "tests.support.chains:slow", "--input", '"wait"'
    ).stdout.strip()
    deadline = time.monotonic() + 30
    while json.loads(cli(settings, "status", run_id).stdout)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "cancel requested" in cli(settings, "cancel", run_id).stdout
    failed = cli(settings, "result", run_id, "--timeout", "30", check=False)
    assert failed.returncode == 1
    assert "RunCancelled" in failed.stderr
    unknown = cli(settings, "status", "no-such-run", check=False)
    assert unknown.returncode == 1
    assert "RunNotFound" in unknown.stderr


def test_batch_writes_one_line_per_input_in_order(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    inputs = [
        {"input": "Pikachu?"},
        {"wrong_key": "no input variable"},
        {"input": "Eevee?"},
        {"input": "Bulbasaur?"},
    ]
    in_file = tmp_path / "in.jsonl"
    out_file = tmp_path / "out.jsonl"
    in_file.write_text("".join(json.dumps(i) + "\n" for i in inputs))
    done = cli(
        settings,
        "batch",
        "tests.support.chains:chain",
        "--input-file",
        str(in_file),
        "--output-file",
        str(out_file),
    )
    assert "4 runs, 1 failed" in done.stderr
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert [line["ok"] for line in lines] == [True, False, True, True]
    assert "Pichu" in lines[0]["output"]
    assert "Eevee" in lines[2]["output"]
    assert lines[1]["error"]["type"] == "KeyError"
