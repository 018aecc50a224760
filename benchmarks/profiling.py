"""Summaries of py-spy's collapsed stacks (`py-spy record -f raw`): where a worker spends its
CPU, by function (inclusive and self) and by package (self)."""

from __future__ import annotations

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")

_PACKAGES = (
    "runnable_k8s",
    "benchmarks",
    "langchain_core",
    "pydantic",
    "celery",
    "kombu",
    "billiard",
    "redis",
    "asyncio",
    "logging",
    "json",
    "hmac",
    "hashlib",
    "threading",
    "concurrent",
    "uuid",
    "contextvars",
    "selectors",
    "socket",
)


# Leaf frames where a thread waits rather than computes (py-spy counts some of them as active).
_WAITING = (
    ("select", "selectors.py"),
    ("poll", "selectors.py"),
    ("_epoll.poll", "eventio.py"),
    ("poll", "eventio.py"),
    ("wait", "threading.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("get", "queue.py"),
    ("_wait_for_tstate_lock", "threading.py"),
)


def _waiting(func: str, file: str) -> bool:
    return any(func.endswith(f) and file.endswith(path) for f, path in _WAITING)


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def _where(file: str) -> str:
    path = file.replace("\\", "/")
    for name in _PACKAGES:
        if f"/{name}/" in path or path.endswith(f"/{name}.py") or path.startswith(f"{name}/"):
            return name
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1]
    return path.rsplit("/", 1)[-1] or "?"


def _short(func: str, file: str) -> str:
    path = file.replace("\\", "/")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})"


def summarize_collapsed(text: str, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = waiting = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]] or frames  # drop thread/process name frames
        if _waiting(*frames[-1]):
            waiting += count
            continue
        total += count
        seen = set()
        for func, file in frames:
            name = _short(func, file)
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        func, file = frames[-1]
        own[_short(func, file)] += count
        packages[_where(file)] += count
    if not total:
        return "no samples\n"
    out = [
        f"{total} samples computing ({waiting} more samples of threads waiting in select/poll/"
        "locks left out); percentages are of the computing samples\n",
        "self time by package:",
    ]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(top)]
    out.append("\nself time by function:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out.append("\ninclusive time by function:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 20)]
    return "\n".join(out) + "\n"
