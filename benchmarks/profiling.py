"""`--profile`: each workload once more per side under cProfile (the caller), py-spy (the worker
or server process) and INFO commandstats; and summaries of py-spy's collapsed stacks (`py-spy
record -f raw`): where a worker spends its CPU, by function (inclusive and self) and by package
(self)."""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.sides import Side
from benchmarks.sizes import Sizes

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


@contextlib.contextmanager
def py_spy(pid: int, out: Path, rate: int = 200) -> Iterator[None]:
    """Sample `pid` with py-spy (collapsed stacks) while the block runs, if py-spy is there."""
    exe = Path(sys.executable).with_name("py-spy")
    command = str(exe) if exe.exists() else "py-spy"
    argv = [command, "record", "-p", str(pid), "-f", "raw", "-r", str(rate), "--nonblocking"]
    try:
        spy = subprocess.Popen(
            [*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError:
        yield
        return
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not out.exists():
            print(
                f"py-spy wrote nothing for pid {pid}: {err.decode(errors='replace')[-500:]}",
                file=sys.stderr,
            )


def profile(
    sides: list[Side], sizes: Sizes, directory: Path, redis_url: str, log: Callable[[str], None]
) -> None:
    """Profile each workload on each side that has a worker: the caller in-process with
    cProfile, the worker (or server) with py-spy, and Redis commands per item (INFO
    commandstats). Writes .pstats, .txt summaries and collapsed stacks (for flamegraphs)."""
    import redis

    from benchmarks.commands import Counting
    from benchmarks.streaming import s1, s2
    from benchmarks.workloads import Results, w1, w2, w3, w4

    directory.mkdir(parents=True, exist_ok=True)
    streams = sizes.streams * sizes.stream_chunks
    jobs: dict[str, tuple[int, Callable[[Side], None], str]] = {
        "w1": (sizes.w1_invokes, lambda s: w1(s, sizes.w1_invokes, 50_000, Results()), "invoke"),
        "w2": (sizes.w2_items, lambda s: w2(s, sizes.w2_items, Results()), "batch"),
        "w3": (sizes.w3_items, lambda s: w3(s, sizes.w3_items, Results()), "batch"),
        "w4": (sizes.w4_invokes, lambda s: w4(s, sizes.w4_invokes, sizes.w4_bytes, 7, Results()),
               "batch"),
        "s1": (sizes.stream_tokens, lambda s: s1(s, sizes.stream_tokens, Results()), "stream"),
        "s2": (streams, lambda s: s2(s, sizes.streams, sizes.stream_chunks, Results()), "stream"),
    }  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    counting = Counting(client, quiet=2.0)
    for side in sides:
        if side.worker is None:
            continue
        for name, (items, job, kind) in jobs.items():
            if (kind == "batch" and not side.batches) or (kind == "stream" and not side.streams):
                continue
            stem = directory / f"{side.name}-{name}"
            profiler = cProfile.Profile()
            with py_spy(side.worker.pid, stem.with_suffix(".worker.collapsed")):
                start = time.perf_counter()

                def profiled(
                    job: Callable[[Side], None] = job,
                    side: Side = side,
                    profiler: cProfile.Profile = profiler,
                ) -> None:
                    profiler.enable()
                    job(side)
                    profiler.disable()

                total, mix = counting.per_item(items, profiled)
                wall = time.perf_counter() - start
            if side.uses_redis:
                stem.with_suffix(".redis.txt").write_text(
                    f"{side.name} {name}: Redis commands per item ({items} items; idle polling "
                    f"of {counting.idle_per_s:.1f}/s subtracted), {total:.2f} in all\n"
                    + "".join(f"  {n:8.2f}  {k}\n" for k, n in mix.items())
                )
            profiler.dump_stats(stem.with_suffix(".producer.pstats"))
            with open(stem.with_suffix(".producer.txt"), "w") as text:
                text.write(f"{side.name} {name}: caller wall {wall:.3f} s (under cProfile)\n\n")
                stats = pstats.Stats(profiler, stream=text).strip_dirs()
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(30)
            collapsed = stem.with_suffix(".worker.collapsed")
            if collapsed.exists():
                stem.with_suffix(".worker.txt").write_text(
                    summarize_collapsed(collapsed.read_text())
                )
            log(f"profiled {side.name} {name} ({wall:.2f} s) -> {stem}.*")
    client.close()
