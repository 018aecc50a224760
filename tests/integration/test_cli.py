"""The run verbs from a shell: submit, status, result, cancel, stream, batch."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from runnable_k8s import Settings
from tests.support.chains import chain
from tests.support.workers import REPO, WorkerProcess, cli, worker_env

PIKACHU = {"input": "What does Pikachu evolve from?"}


def test_submit_status_result(settings: Settings, worker: WorkerProcess) -> None:
    run_id = cli(settings, "submit", "tests.support.chains:chain", "--input", json.dumps(PIKACHU))
    run_id_text = run_id.stdout.strip()
    assert len(run_id_text) == 32
    output = cli(settings, "result", run_id_text, "--timeout", "60")
    assert "Pichu" in json.loads(output.stdout)
    status = json.loads(cli(settings, "status", run_id_text, "--json").stdout)
    assert status["state"] == "succeeded"
    assert status["id"] == run_id_text
    assert status["attempt"] == 1


def test_status_prints_iso_utc_times_and_json_keeps_epoch_numbers(
    settings: Settings, worker: WorkerProcess
) -> None:
    before = time.time()
    run_id = cli(
        settings, "submit", "tests.support.chains:chain", "--input", json.dumps(PIKACHU)
    ).stdout.strip()
    cli(settings, "result", run_id, "--timeout", "60")
    numbers = json.loads(cli(settings, "status", run_id, "--json").stdout)
    for key in ("created_at", "started_at", "finished_at"):
        assert isinstance(numbers[key], float)
        assert before - 5 < numbers[key] < time.time() + 5
    text = cli(settings, "status", run_id).stdout
    shown = dict(line.split(":", 1) for line in text.splitlines())
    assert shown["id"].strip() == run_id
    assert shown["state"].strip() == "succeeded"
    for key in ("created_at", "started_at", "finished_at"):
        value = shown[key].strip()
        assert value.endswith("Z"), text
        parsed = datetime.datetime.fromisoformat(value)
        assert parsed.utcoffset() == datetime.timedelta(0)
        assert abs(parsed.timestamp() - numbers[key]) < 0.001
    assert str(numbers["created_at"]) not in text  # no epoch floats in the text form


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
    while json.loads(cli(settings, "status", run_id, "--json").stdout)["state"] != "running":
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
        check=False,
    )
    assert done.returncode == 1, done.stderr  # a line failed
    # stderr is not a terminal here: the summary only, no progress bar or its label.
    assert done.stderr == f"4 runs, 1 failed -> {out_file}\n"
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert [line["ok"] for line in lines] == [True, False, True, True]
    assert "Pichu" in lines[0]["output"]
    assert "Eevee" in lines[2]["output"]
    assert lines[1]["error"]["type"] == "KeyError"


def test_batch_exits_zero_only_when_every_line_succeeded(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    in_file = tmp_path / "in.jsonl"
    out_file = tmp_path / "out.jsonl"
    in_file.write_text(json.dumps({"input": "Pikachu?"}) + "\n" + json.dumps(PIKACHU) + "\n")
    args = ["batch", "tests.support.chains:chain", "--input-file", str(in_file)]
    done = cli(settings, *args, "--output-file", str(out_file), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"2 runs, 0 failed -> {out_file}\n"
    assert [json.loads(line)["ok"] for line in out_file.read_text().splitlines()] == [True, True]
    # Usage errors exit 2 (click's convention), also an input line that is not JSON.
    in_file.write_text("{not json\n")
    bad = cli(settings, *args, "--output-file", str(out_file), check=False)
    assert bad.returncode == 2, bad.stderr
    assert "not JSON" in bad.stderr
    # A batch that cannot run at all exits 3 and writes no output file.
    in_file.write_text(json.dumps(PIKACHU) + "\n")
    missing = tmp_path / "never.jsonl"
    broken = cli(
        settings, "batch", "json:dumps", "--input-file", str(in_file),
        "--output-file", str(missing), check=False,
    )  # fmt: skip
    assert broken.returncode == 3, broken.stderr
    assert "not a LangChain Runnable" in broken.stderr
    assert not missing.exists()


def test_batch_reports_runs_not_done_in_time_as_failed_lines(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    in_file = tmp_path / "in.jsonl"
    out_file = tmp_path / "out.jsonl"
    in_file.write_text(json.dumps("wait") + "\n")
    done = cli(
        settings, "batch", "tests.support.chains:slow", "--input-file", str(in_file),
        "--output-file", str(out_file), "--timeout", "1", check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    [line] = [json.loads(text) for text in out_file.read_text().splitlines()]
    assert line["ok"] is False
    assert line["error"]["type"] == "WaitTimeout"
    run_id = line["error"]["message"].rsplit(" ", 1)[1]
    assert "cancel" in cli(settings, "cancel", run_id).stdout  # the id is usable; free the slot


def test_batch_shows_its_progress_bar_on_a_terminal(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    in_file = tmp_path / "in.jsonl"
    out_file = tmp_path / "out.jsonl"
    in_file.write_text(json.dumps(PIKACHU) + "\n")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [
                sys.executable, "-m", "runnable_k8s", "batch", "tests.support.chains:chain",
                "--input-file", str(in_file), "--output-file", str(out_file),
            ],
            env=worker_env(settings), cwd=REPO, stdout=subprocess.PIPE, stderr=terminal,
            timeout=90, check=False,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(controller, 4096):
                shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0
    text = shown.decode(errors="replace")
    assert "runs  [" in text and "100%" in text, text  # click's bar, drawn for a person
    assert "1 runs, 0 failed" in text
