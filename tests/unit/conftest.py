"""Fixtures for unit tests: signing keys, signers and protocols that need no server."""

from __future__ import annotations

import pytest

from runnable_k8s.protocol.envelope import Signer
from runnable_k8s.protocol.messages import Protocol
from runnable_k8s.settings import Settings, SigningKey

KEY_A = SigningKey(b"A" * 16 + b"unit-test-signing-key-a" + b"!" * 9)
KEY_B = SigningKey(b"B" * 16 + b"unit-test-signing-key-b" + b"!" * 9)


@pytest.fixture
def signer() -> Signer:
    return Signer(KEY_A, max_body_bytes=64 * 1024)


@pytest.fixture
def settings() -> Settings:
    """Overrides the session fixture of the same name: no Redis needed here."""
    return Settings(signing_key=KEY_A)


@pytest.fixture
def protocol(settings: Settings) -> Protocol:
    return Protocol(settings)
