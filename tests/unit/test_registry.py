"""References are checked against the allowlist before anything is imported."""

from __future__ import annotations

import sys

import pytest
from langchain_core.runnables import Runnable

from runnable_k8s.errors import DisallowedObject
from runnable_k8s.worker.registry import Registry, ref_allowed


@pytest.mark.parametrize(
    ("ref", "allowed", "expected"),
    [
        ("myapp.graphs:agent", ("myapp.graphs:agent",), True),
        ("myapp.graphs:agent", ("myapp.",), True),
        ("myapp.graphs:agent", ("myapp.graphs:",), True),
        ("myapp.graphs:agent2", ("myapp.graphs:agent",), False),
        ("myappx.graphs:agent", ("myapp.",), False),
        ("myapp.graphs:agent", ("myapp",), False),  # a bare name is exact, never a prefix
        ("os:system", ("myapp.",), False),
        ("anything:x", (), False),
    ],
)
def test_ref_allowed(ref: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert ref_allowed(ref, allowed) is expected


async def test_unlisted_reference_is_refused_without_importing() -> None:
    registry = Registry(("tests.support.",))
    module = "tests.unit._never_imported_module"
    with pytest.raises(DisallowedObject, match="RUNNABLE_K8S_ALLOWED_REFS"):
        await registry.load(f"{module}:x")
    assert module not in sys.modules


@pytest.mark.parametrize("ref", ["", "no_colon", "a:b c", "../etc:passwd", "a:", ":b", "1a:b"])
async def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(DisallowedObject, match="not a reference"):
        await Registry(("",)).load(ref)


async def test_runnables_and_factories_load_once() -> None:
    registry = Registry(("tests.support.refs:",))
    chain = await registry.load("tests.support.refs:lambda_chain")
    assert isinstance(chain, Runnable)
    assert await registry.load("tests.support.refs:lambda_chain") is chain
    # A factory (sync or async callable) is called once and must return a runnable.
    with pytest.raises(DisallowedObject, match=r"factory .* failed: TypeError"):
        await registry.load("tests.support.refs:_flaky")  # needs an argument
    with pytest.raises(DisallowedObject, match="not a Runnable"):
        await registry.load("tests.support.refs:prompt.input_variables")
    with pytest.raises(DisallowedObject, match="cannot import"):
        await registry.load("tests.support.refs:missing")
