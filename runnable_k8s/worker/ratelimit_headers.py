"""How long a provider's 429 asks everyone to wait, read from its answer's headers."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final

DEFAULT_PAUSE: Final = 1.0
"""Seconds to pause a key when a 429 names no time."""

_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a provider's error (`openai.APIStatusError` and the like)."""
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def pause_seconds(headers: Mapping[str, Any], now: float | None = None) -> float:
    """`retry-after-ms`, `retry-after` (seconds or an HTTP date), else the longest of
    OpenAI's `x-ratelimit-reset-requests` / `-tokens` (`1s`, `6m0s`, `20ms`)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    after = lowered.get("retry-after")
    if after is not None:
        seconds = _number(after)
        if seconds is not None:
            return seconds
        try:
            parsed = email.utils.parsedate_to_datetime(after)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            return max(0.0, parsed.timestamp() - (time.time() if now is None else now))
    resets = [
        _duration(lowered[name])
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in lowered
    ]
    found = [r for r in resets if r is not None]
    return max(found) if found else DEFAULT_PAUSE


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _duration(text: str) -> float | None:
    plain = _number(text)
    if plain is not None:
        return plain
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)
