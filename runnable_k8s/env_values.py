"""One setting's value as environment text and back: what `Settings.from_env` reads and
`Settings.to_env` writes, and the key type whose value must never be printed.

Kept apart from `settings.py` so the dataclass there reads as the list of settings with their
units and defaults; this module knows types, not settings (the one exception, `limits`, is
recognised by its type too). Nothing here reads `os.environ`: `Settings.from_env` stays the
only reader.
"""

from __future__ import annotations

from typing import Any

from runnable_k8s.limits import Limit, parse_limits

ENV_PREFIX = "RUNNABLE_K8S_"


class SigningKey:
    """The shared HMAC key. Its value never appears in `repr`, `str` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        """Return the raw key bytes (for the signer only)."""
        return self._value

    def __repr__(self) -> str:
        return "SigningKey('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def to_text(value: Any) -> str:
    """What `from_text` reads back as `value`."""
    if value is None:
        return ""
    if isinstance(value, SigningKey):
        return value.reveal().decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and all(isinstance(item, Limit) for item in value):
        return "; ".join(limit.rule() for limit in value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)


def from_text(kind: str, raw: str) -> Any:
    """The value of type `kind` (a dataclass field's annotation, as text) that `raw` spells.

    Raises:
        ValueError: `raw` does not spell a `kind` (the caller names the variable).
        ConfigurationError: a malformed flow-control rule (it names the rule).
    """
    if kind == "tuple[Limit, ...]":
        return parse_limits(raw)
    if kind == "SigningKey | None":
        return SigningKey(raw.encode()) if raw else None
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off", ""}:
            raise ValueError(raw)
        return lowered in {"1", "true", "yes", "on"}
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("str | None"):
        return raw or None
    return raw
