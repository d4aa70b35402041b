"""The report's plots, drawn from records alone: TTFT vs prompt length, decode time per step, the schedules'
speedup-vs-fidelity frontier. (The token scores' frontier is `lazybench.frontier_plot`.)

Every plot names the baseline, keeps one colour per schedule across panels and puts its legend outside the axes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazybench.profiles import BASELINE
from lazyllm.fidelity import wilson_interval

Record = dict[str, Any]
SpeedRun = tuple[str, list[Record]]  # (title of the run, its speed records)
SPEEDUP_TARGETS = {"4k": 2.5, "8k": 3.0}  # the TTFT speedups the rig was built to check, drawn on the speedup panel
# One marker per variant: LazyLLM with revival (o), and the rivals.
MARKERS = {BASELINE: "*", "no-revival": "s", "static-15%": "^", "random-drop": "X"}
VARIANTS = "o: LazyLLM (revival)   s: no revival   ^: static   X: random drop   *: baseline"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(names: Sequence[str]) -> dict[str, Any]:
    """Baseline black, the others from tab10 in order of appearance."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    others = [n for n in dict.fromkeys(names) if n != BASELINE]
    return {BASELINE: "black", **{n: cycle[i % len(cycle)] for i, n in enumerate(others)}}


def _by_schedule(rows: Sequence[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in sorted(rows, key=lambda r: r["prompt_tokens"]):
        out.setdefault(r["schedule"], []).append(r)
    return out


def _length_ticks(axis: Any, rows: Sequence[Record]) -> None:
    """Ticks at the measured prompt lengths, labelled in tokens ("512", "4096"), no minor ticks."""
    from matplotlib.ticker import NullLocator

    lengths = sorted({r["prompt_tokens"] for r in rows})
    axis.set_xticks(lengths, [str(x) for x in lengths])
    axis.xaxis.set_minor_locator(NullLocator())


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def plot_ttft(runs: Sequence[SpeedRun], path: Path) -> None:
    """Per run: TTFT vs prompt tokens (log-log, median with min-max bars) and the median TTFT speedup."""
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 4.2 * len(runs)), squeeze=False)
    for (title, rows), (ax, ax2) in zip(runs, axes):
        colours = _colours([r["schedule"] for r in rows])
        for name, mine in _by_schedule(rows).items():
            x = [r["prompt_tokens"] for r in mine]
            med = [r["ttft_s"]["median"] for r in mine]
            low = [m - r["ttft_s"]["min"] for m, r in zip(med, mine)]
            high = [r["ttft_s"]["max"] - m for m, r in zip(med, mine)]
            style = dict(color=colours[name], marker=MARKERS.get(name, "o"), label=name)
            ax.errorbar(x, med, yerr=[low, high], capsize=3, lw=2.2 if name == BASELINE else 1.2, **style)
            if name != BASELINE:
                ax2.plot(x, [r["speedup"]["median"] for r in mine], **style)
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="TTFT s (median, min-max bars)")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.03, not 3x10^-2
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        if high < 10 * low:  # less than a decade: label the minor ticks too
            ax.yaxis.set_minor_formatter(plain)
        ax.set_title(f"TTFT vs prompt length: {title}", fontsize=10)
        ax2.axhline(1.0, color="black", lw=1.2, label="baseline (1x)")
        for label, target in SPEEDUP_TARGETS.items():
            ax2.axhline(target, color="grey", lw=0.8, ls="--", label=f"target {target}x @{label}")
        ax2.set(xscale="log", xlabel="prompt tokens", ylabel="TTFT speedup vs baseline (median)")
        ax2.set_title("TTFT speedup", fontsize=10)
        for axis in (ax, ax2):
            axis.grid(alpha=0.3, which="both")
            _length_ticks(axis, rows)
        ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    _save(fig, path)


def has_steps(rows: Sequence[Record]) -> bool:
    return any(run for r in rows for run in r.get("decode_step_runs_ms") or [])


def plot_decode_steps(runs: Sequence[SpeedRun], path: Path) -> None:
    """Per run, at its longest prompt: ms of each decoding step after the first token (median over rounds)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 4.2 * len(runs)), squeeze=False)
    for (title, rows), (ax,) in zip(runs, axes):
        longest = max(r["prompt_tokens"] for r in rows)
        here = [r for r in rows if r["prompt_tokens"] == longest and r.get("decode_step_runs_ms")]
        colours = _colours([r["schedule"] for r in here])
        for r in here:
            steps = list(zip(*r["decode_step_runs_ms"]))  # [step][round]
            medians = [statistics.median(s) for s in steps]
            ax.plot(
                range(1, len(medians) + 1),
                medians,
                color=colours[r["schedule"]],
                marker=MARKERS.get(r["schedule"], "o"),
                lw=2.2 if r["schedule"] == BASELINE else 1.2,
                label=r["schedule"],
            )
        ax.set(xlabel="decoding step after the first token", ylabel="ms per step (median over rounds, log scale)")
        ax.set_title(f"Decode time per step at {longest} prompt tokens: {title}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.set_yscale("log")  # step 1 revives the parked tokens (revive_all_at=1): seconds, against ms after it
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    _save(fig, path)


def plot_schedule_frontier(points: Sequence[Record], reference: str | None, path: Path) -> None:
    """Each schedule's TTFT speedup against its answer agreement with the baseline (Wilson 95% bars) and its
    accuracy, pooled over every accuracy sample."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = _colours([p["schedule"] for p in points])
    for p in points:
        if p["speedup"] is None or not p["n"]:
            continue
        low, high = wilson_interval(p["agreed"], p["n"])
        agreement = p["answer_agreement"]
        style = dict(color=colours[p["schedule"]], marker=MARKERS.get(p["schedule"], "o"), markersize=9)
        ax.errorbar([p["speedup"]], [agreement], yerr=[[agreement - low], [high - agreement]], capsize=3, **style)
        ax2.plot([p["speedup"]], [p["accuracy"]], linestyle="none", label=p["schedule"], **style)
    ax.set(xlabel=f"TTFT speedup @{reference}", ylabel="answer agreement with the baseline (Wilson 95%)")
    ax.set_title("Fidelity: identical greedy answers", fontsize=10)
    ax2.set(xlabel=f"TTFT speedup @{reference}", ylabel="accuracy (task score, mean)")
    ax2.set_title("Accuracy on the tasks", fontsize=10)
    for axis in (ax, ax2):
        axis.axvline(1.0, color="black", lw=0.8)
        axis.set_ylim(-0.05, 1.08)
        axis.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="schedule", title_fontsize=8)
    fig.text(0.5, -0.02, VARIANTS, ha="center", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
