"""The flow-control limit spec (`RUNNABLE_K8S_LIMITS`): what a worker may spend per key.

One rule per line (or separated by `;`, easier in a ConfigMap value); `#` starts a comment:

    openai:gpt-4o-mini  rpm=120 tpm=40000 concurrency=5
    openai              requests=500/1m
    tenant:*            requests=40/10s tokens=20000/1m

A key is a model (`provider:model`, as LangChain names them in `ls_provider` / `ls_model_name`),
a provider alone (every model behind that provider's API key), or `tenant:NAME` (the `tenant`
field of a run's metadata). A key ending in `:*` gives every value its own budget (each tenant,
each model of a provider). Parsed here, with no I/O, so `Settings.from_env()` refuses a
malformed spec at start, naming the line at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from runnable_k8s.errors import ConfigurationError

_KEY: Final = re.compile(r"^[A-Za-z0-9_.\-/]+(:[A-Za-z0-9_.\-/]+)*(:\*)?$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERIOD: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)?(ms|s|m|h)$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `amount` (requests or tokens) in any window of `period` seconds."""

    amount: int
    period: float


@dataclass(frozen=True, slots=True)
class Limit:
    """The limits of one key (or key pattern ending in `:*`)."""

    key: str
    requests: Rate | None = None
    tokens: Rate | None = None
    concurrency: int = 0
    """Calls in flight at once across the cluster; 0 means no concurrency limit."""

    def rule(self) -> str:
        """This limit as one rule of the spec (what `parse_limits` reads back as it)."""
        parts = [self.key]
        for name, rate in (("requests", self.requests), ("tokens", self.tokens)):
            if rate is not None:
                parts.append(f"{name}={rate.amount}/{rate.period!r}s")
        if self.concurrency:
            parts.append(f"concurrency={self.concurrency}")
        return " ".join(parts)

    def matches(self, key: str) -> bool:
        if self.key.endswith(":*"):
            return key.startswith(self.key[:-1]) and len(key) > len(self.key) - 1
        return key == self.key


def parse_limits(text: str) -> tuple[Limit, ...]:
    """Parse a spec.

    Raises:
        ConfigurationError: naming the rule (its number and text) that is malformed.
    """
    limits: list[Limit] = []
    seen: set[str] = set()
    rules = [part for line in text.splitlines() for part in line.split(";")]
    for number, raw in enumerate(rules, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            limit = _parse_rule(line)
        except ValueError as exc:
            raise ConfigurationError(
                f"RUNNABLE_K8S_LIMITS rule {number} ({line!r}): {exc}"
            ) from None
        if limit.key in seen:
            raise ConfigurationError(
                f"RUNNABLE_K8S_LIMITS rule {number} ({line!r}): key {limit.key!r} appears twice"
            )
        seen.add(limit.key)
        limits.append(limit)
    return tuple(limits)


def _parse_rule(line: str) -> Limit:
    key, *options = line.split()
    if not _KEY.match(key):
        raise ValueError(f"{key!r} is not a key like 'openai:gpt-4o-mini' or 'tenant:*'")
    if not options:
        raise ValueError("no limit given (rpm=, tpm=, requests=N/PERIOD, tokens=, concurrency=)")
    requests: Rate | None = None
    tokens: Rate | None = None
    concurrency = 0
    for option in options:
        name, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"{option!r} is not name=value")
        if name in ("rpm", "tpm"):
            rate = Rate(_count(name, value), 60.0)
        elif name in ("requests", "tokens"):
            rate = _rate(name, value)
        elif name == "concurrency":
            concurrency = _count(name, value)
            continue
        else:
            raise ValueError(f"unknown limit {name!r}")
        if name in ("rpm", "requests"):
            if requests is not None:
                raise ValueError("more than one request rate")
            requests = rate
        else:
            if tokens is not None:
                raise ValueError("more than one token rate")
            tokens = rate
    return Limit(key, requests, tokens, concurrency)


def _count(name: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _rate(name: str, value: str) -> Rate:
    amount, sep, period = value.partition("/")
    if not sep:
        raise ValueError(f"{name} must be N/PERIOD (e.g. 40/10s, 120/1m), not {value!r}")
    match = _PERIOD.match(period)
    if match is None:
        raise ValueError(f"period {period!r} is not like 500ms, 10s, 1m or 1h")
    seconds = float(match.group(1) or 1) * _UNITS[match.group(2)]
    if seconds < 0.01:
        raise ValueError(f"period {period!r} is shorter than 10ms")
    return Rate(_count(name, amount), seconds)
