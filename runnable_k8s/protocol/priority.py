"""Run priorities: which Redis list a run's message waits on, and in what order workers fetch.

Each priority has its own list, so KEDA can count every backlog (its `redis` trigger counts
one key) and a worker can fetch from them in an order of its choosing. "normal" keeps the
queue's own name: producers and triggers that predate priorities see no change.

Fetch order (worker/priorities.py): a worker's BRPOP names every list, and BRPOP takes from
the first non-empty one, so the order of each call decides. Each call leads with one list
chosen by smooth weighted round robin over `WEIGHTS` and names the others after it, highest
first. With every list backlogged, out of ten fetches six start at high, three at normal and
one at low: high is served at least 60% of the time (90% when only high and low wait), and
low at least 10% of the time, so a flood of higher work slows the low list but never stops it.
"""

from __future__ import annotations

from typing import Final, Literal

from runnable_k8s.errors import UnknownPriority

Priority = Literal["high", "normal", "low"]
PRIORITIES: Final[tuple[Priority, ...]] = ("high", "normal", "low")
"""Highest first."""
DEFAULT: Final[Priority] = "normal"
WEIGHTS: Final[dict[Priority, int]] = {"high": 6, "normal": 3, "low": 1}
"""Share of fetches each list leads, when every list has work (see the module)."""
_SUFFIX: Final[dict[Priority, str]] = {"high": ":high", "normal": "", "low": ":low"}


def check(priority: object) -> Priority:
    """`priority` as a `Priority`, or None for the default.

    Raises:
        UnknownPriority: anything but "high", "normal" or "low".
    """
    if priority is None:
        return DEFAULT
    if priority not in PRIORITIES:
        raise UnknownPriority(f"unknown priority {priority!r}: use one of {', '.join(PRIORITIES)}")
    return priority


def list_name(queue: str, priority: Priority) -> str:
    """The Redis list (kombu queue) holding `queue`'s runs of `priority`."""
    return queue + _SUFFIX[priority]


def lists(queue: str) -> dict[Priority, str]:
    """Every list of `queue`, highest priority first."""
    return {p: list_name(queue, p) for p in PRIORITIES}


def of_list(name: str) -> Priority:
    """The priority of a list named by `list_name` (an unknown name counts as normal)."""
    levels: tuple[Priority, ...] = ("high", "low")
    for level in levels:
        if name.endswith(_SUFFIX[level]):
            return level
    return DEFAULT
