"""The report: every figure beside its peers' and its target (met or not), as markdown tables
on stdout and, if asked, everything with every raw sample as JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.sizes import MB, Sizes, split
from benchmarks.workloads import Results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """A figure of RunnableK8s beside plain Celery's (W1 to W4 and RSS)."""

    figure: str
    ours: float
    baseline: float
    unit: str
    target: str
    met: bool | None
    spread: str = ""
    """The lowest and highest ratio of single rounds (each round measures both sides)."""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


def spread(ours: list[float], base: list[float]) -> str:
    ratios = [r for o, b in zip(ours, base, strict=True) if b and not math.isnan(r := o / b)]
    return f"{min(ratios):.2f}x to {max(ratios):.2f}x" if len(ratios) > 1 else ""


def round_p50s(latencies: list[float], sizes: Sizes) -> list[float]:
    """W1's p50 of each round (the pooled samples are in round order)."""
    p50s, start = [], 0
    for part in split(sizes.w1_invokes, sizes.rounds):
        p50s.append(pct(latencies[start : start + part], 0.5))
        start += part
    return p50s


def figures(sizes: Sizes, ours: Results, base: Results) -> list[Row]:
    rows: list[Row] = []
    p50 = (pct(ours.w1_latencies_ms, 0.5), pct(base.w1_latencies_ms, 0.5))
    p99 = (pct(ours.w1_latencies_ms, 0.99), pct(base.w1_latencies_ms, 0.99))
    per_round = spread(
        round_p50s(ours.w1_latencies_ms, sizes), round_p50s(base.w1_latencies_ms, sizes)
    )
    rows.append(
        Row(
            f"W1 latency p50 ({sizes.w1_invokes} invokes)",
            *p50,
            "ms",
            "<= 0.6x",
            p50[0] <= 0.6 * p50[1],
            per_round,
        )
    )
    rows.append(Row("W1 latency p99", *p99, "ms", "", None))
    w2v = (med(ours.w2_items_per_s), med(base.w2_items_per_s))
    rows.append(
        Row(
            f"W2 batch of {sizes.w2_items}",
            *w2v,
            "items/s",
            ">= 2.5x",
            w2v[0] >= 2.5 * w2v[1],
            spread(ours.w2_items_per_s, base.w2_items_per_s),
        )
    )
    w3v = (med(ours.w3_wall_s), med(base.w3_wall_s))
    rows.append(
        Row(
            f"W3 abatch {sizes.w3_items} x {sizes.w3_delay * 1000:.0f} ms, wall",
            *w3v,
            "s",
            "<= 0.5 s and <= 1/2.4x",
            w3v[0] <= 0.5 and w3v[0] * 2.4 <= w3v[1],
            spread(ours.w3_wall_s, base.w3_wall_s),
        )
    )
    w4v = (med(ours.w4_mb_per_s), med(base.w4_mb_per_s))
    rows.append(
        Row(
            f"W4 {sizes.w4_invokes} invokes of {sizes.w4_bytes / MB:g} MB in+out",
            *w4v,
            "MB/s",
            ">= 4x",
            w4v[0] >= 4 * w4v[1],
            spread(ours.w4_mb_per_s, base.w4_mb_per_s),
        )
    )
    rows.append(
        Row(
            "worker RSS idle (after warm-up)",
            ours.rss_idle_mb,
            base.rss_idle_mb,
            "MB",
            "<= 150 MB",
            ours.rss_idle_mb <= 150,
        )
    )
    peak = (max(ours.rss_peak_w3_mb), max(base.rss_peak_w3_mb))
    rows.append(
        Row(
            f"worker RSS peak, {sizes.w3_items} runs in flight (W3)",
            *peak,
            "MB",
            "<= 250 MB",
            peak[0] <= 250,
        )
    )
    rows.append(
        Row(
            "worker RSS idle at the end", ours.rss_idle_end_mb, base.rss_idle_end_mb, "MB", "", None
        )
    )
    return rows


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | RunnableK8s | plain Celery | ratio | ratio per round | target | met |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.figure} | {fmt(row.ours)} {row.unit} | {fmt(row.baseline)} {row.unit} "
            f"| {row.ratio:.2f}x | {row.spread} | {row.target} | {_met(row.met)} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for name in (
        "runnable-k8s",
        "celery",
        "kombu",
        "redis",
        "langchain-core",
        "langserve",
        "uvicorn",
        "fastapi",
        "sse-starlette",
        "httpx",
    ):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    return out


def json_report(
    configuration: str,
    sizes: Sizes,
    rows: list[Row],
    targets: list[Any],
    *,
    results: dict[str, Results],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "configuration": configuration,
        "sizes": asdict(sizes),
        "machine": machine(),
        "versions": versions(),
        "figures": [{**asdict(r), "ratio": r.ratio} for r in rows],
        "targets": [asdict(t) for t in targets],
        "samples": {name: asdict(r) for name, r in results.items()},
        "all_met": all(r.met for r in [*rows, *targets] if r.met is not None),
        **extra,
    }
