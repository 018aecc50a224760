"""The targets of issue 14, each against the peers a user would pick instead (plain Celery,
LangServe) and the chain run in-process, with met / not met: one row per line of its table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks.report import fmt, med, pct, round_p50s
from benchmarks.sizes import Sizes
from benchmarks.workloads import Results

COLUMNS = (("baseline", "plain Celery"), ("langserve", "LangServe"), ("inprocess", "in-process"),
           ("ours", "RunnableK8s"))  # fmt: skip


@dataclass
class Target:
    figure: str
    cells: dict[str, str]
    """Side name -> the figure as printed ("-" where the side has none)."""
    ratio: str
    spread: str
    target: str
    met: bool | None
    """None: not measured in this run."""
    values: dict[str, float] = field(default_factory=dict)


def _ratios(ours: list[float], peer: list[float]) -> str:
    ratios = [o / p for o, p in zip(ours, peer, strict=False) if p and not math.isnan(o / p)]
    return f"{min(ratios):.2f}x to {max(ratios):.2f}x" if len(ratios) > 1 else ""


def _x(ours: float, peer: float) -> float:
    return ours / peer if peer and not math.isnan(peer) else math.nan


def targets(sizes: Sizes, results: dict[str, Results], memory: bool) -> list[Target]:
    ours, celery, serve = (results[n] for n in ("ours", "baseline", "langserve"))
    rows: list[Target] = []

    p50 = {name: pct(r.w1_latencies_ms, 0.5) for name, r in results.items()}
    per_round = {name: round_p50s(r.w1_latencies_ms, sizes) for name, r in results.items()}
    rows.append(
        Target(
            f"W1: one invoke of prompt -> chat model -> parser, p50 ({sizes.w1_invokes} invokes)",
            {name: f"{fmt(v)} ms" for name, v in p50.items()},
            f"{_x(p50['ours'], p50['baseline']):.2f}x Celery, "
            f"{_x(p50['ours'], p50['langserve']):.2f}x LangServe",
            f"Celery {_ratios(per_round['ours'], per_round['baseline'])}; "
            f"LangServe {_ratios(per_round['ours'], per_round['langserve'])}",
            "<= 0.8x Celery and <= LangServe",
            p50["ours"] <= 0.8 * p50["baseline"] and p50["ours"] <= p50["langserve"],
            p50,
        )
    )

    tps = {n: med(r.s1_tokens_per_s) for n, r in results.items() if r.s1_tokens_per_s}
    first = {n: med(r.s1_first_token_ms) for n, r in results.items() if r.s1_first_token_ms}
    rows.append(
        Target(
            f"S1: one stream of {sizes.stream_tokens:,} tokens from a model that yields as fast "
            f"as it can (median of {sizes.rounds * sizes.s1_streams} streams)",
            {n: f"{fmt(tps[n])} tokens/s, first token {fmt(first[n])} ms" for n in tps},
            f"{_x(tps['ours'], tps['langserve']):.2f}x LangServe, first token "
            f"{_x(first['ours'], first['langserve']):.2f}x",
            _ratios(ours.s1_tokens_per_s, serve.s1_tokens_per_s),
            ">= 3x LangServe; first token <= LangServe",
            tps["ours"] >= 3 * tps["langserve"] and first["ours"] <= first["langserve"],
            {**{f"{n}_tokens_per_s": v for n, v in tps.items()},
             **{f"{n}_first_token_ms": v for n, v in first.items()}},
        )
    )  # fmt: skip

    cps = {n: med(r.s2_chunks_per_s) for n, r in results.items() if r.s2_chunks_per_s}
    rows.append(
        Target(
            f"S2: {sizes.streams} concurrent streams of {sizes.stream_chunks} tokens, one worker "
            "process / one server process",
            {n: f"{fmt(v)} chunks/s" for n, v in cps.items()},
            f"{_x(cps['ours'], cps['langserve']):.2f}x LangServe",
            _ratios(ours.s2_chunks_per_s, serve.s2_chunks_per_s),
            ">= 2x LangServe",
            cps["ours"] >= 2 * cps["langserve"],
            cps,
        )
    )

    invoke = {"baseline": celery.commands_per_invoke, "ours": ours.commands_per_invoke}
    rows.append(
        Target(
            "Redis commands per invoke (INFO commandstats, script-internal commands included; "
            "plain Celery with a Redis result backend)",
            {n: fmt(v) for n, v in invoke.items()},
            f"{_x(invoke['ours'], invoke['baseline']):.2f}x Celery",
            "",
            "<= plain Celery's",
            # Each run's count is a whole number (tests/integration/test_store.py counts every
            # step); what is left after the idle polling is subtracted is background work that
            # fell into the window (a sweep's LLEN, Celery's PING), a few hundredths either way.
            # Compared to one decimal, so equal designs do not flip on that noise.
            round(invoke["ours"], 1) <= round(invoke["baseline"], 1),
            invoke,
        )
    )
    rows.append(
        Target(
            f"Redis commands per streamed token (one stream of {sizes.stream_tokens:,}, the run's "
            "own commands included)",
            {"ours": fmt(ours.commands_per_token)},
            "",
            "",
            "<= 0.2",
            ours.commands_per_token <= 0.2,
            {"ours": ours.commands_per_token},
        )
    )

    tokens = round(sizes.memory_seconds / sizes.memory_interval)
    figure = (
        f"S3: one worker process holding {sizes.memory_runs:,} streaming runs (a token every "
        f"{sizes.memory_interval * 1000:g} ms for {sizes.memory_seconds:g} s), peak RSS"
    )
    if memory:
        rows.append(
            Target(
                figure,
                {"ours": f"{fmt(ours.s3_rss_peak_mb)} MB (idle {fmt(ours.s3_rss_idle_mb)} MB); "
                         f"{ours.s3_runs:,} runs of {tokens} tokens finished in "
                         f"{ours.s3_wall_s:.1f} s; LangChain alone holds "
                         f"{fmt(ours.s3_langchain_mib)} MiB of them in-process (the floor)"
                         + (f", **{ours.s3_failed:,} failed**: {ours.s3_error}"
                            if ours.s3_failed else "")},
                "",
                "",
                "<= 300 MB, all finished",
                ours.s3_rss_peak_mb <= 300 and ours.s3_runs == sizes.memory_runs,
                {"ours": ours.s3_rss_peak_mb, "wall_s": ours.s3_wall_s,
                 "langchain_floor_mib": ours.s3_langchain_mib},
            )
        )  # fmt: skip
    else:
        rows.append(Target(figure, {"ours": "not measured (--memory)"}, "", "", "<= 300 MB", None))
    return rows


def targets_table(rows: list[Target]) -> str:
    lines = [
        "| figure | " + " | ".join(label for _, label in COLUMNS) + " | ratio | ratio per round "
        "| target | met |",
        "|---|" + "---:|" * len(COLUMNS) + "---|---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(row.cells.get(name, "-") for name, _ in COLUMNS)
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.figure} | {cells} | {row.ratio} | {row.spread} | {row.target} | {met} |"
        )
    return "\n".join(lines)


def command_mix(results: dict[str, Results], idle_per_s: float) -> str:
    """Which commands make up each count (per invoke / per token), largest first."""
    lines = [f"Redis commands by command (idle polling of {idle_per_s:.1f}/s subtracted):"]
    for name, label, attr in (
        ("baseline", "plain Celery, per invoke", "invoke_commands"),
        ("ours", "RunnableK8s, per invoke", "invoke_commands"),
        ("ours", "RunnableK8s, per streamed token", "token_commands"),
    ):
        mix: dict[str, float] = getattr(results[name], attr)
        shown = ", ".join(f"{k.upper()} {v:.2f}" for k, v in mix.items() if v >= 0.005)
        lines.append(f"- {label}: {shown or 'n/a'}")
    return "\n".join(lines)
