"""The frontier plot: whole-answer agreement with the unpruned model against prefill cost, one line per token score.

Rendered from the frontier's JSON lines alone:

    python -m lazybench.frontier_plot benchmarks/results/frontier-select.jsonl --out frontier.png
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazybench.choose import MIN_AGREEMENT, cells, read_records
from lazybench.frontier import RETIRED_SCORINGS, SCORINGS

MARKERS = "osD^vPX<>"  # 9 against 10 colours: no two lines share both; "*" is the baseline's


def plot(records: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Agreement (Wilson 95% bars) against prefill token fraction; candidates of one scoring joined by a line.

    Points of different scorings at the same fraction are dodged sideways (at most +-0.012) so their bars show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells([r for r in records if r["name"] != "baseline"], by=("scoring", "schedule")):
        # A saved config (named after its file) is one point: two files' schedules are not one line.
        known = cell["scoring"] in SCORINGS or cell["scoring"] in RETIRED_SCORINGS
        lines[cell["scoring"] if known else f"{cell['scoring']}@{cell['schedule']}"].append(cell)
    most = max(c["n"] for points in lines.values() for c in points)
    figure, axis = plt.subplots(figsize=(8, 5.5))
    for index, (scoring, points) in enumerate(sorted(lines.items())):
        fewest = min(c["n"] for c in points)
        label = scoring if fewest == most else f"{scoring} (only {fewest} prompts)"  # a partial run says so
        points.sort(key=lambda c: c["prefill_token_fraction"])
        dodge = 0.024 * (index / max(len(lines) - 1, 1) - 0.5)
        x = [c["prefill_token_fraction"] + dodge for c in points]
        y = [c["agreement"] for c in points]
        errors = [
            [c["agreement"] - c["agreement_ci"][0] for c in points],
            [c["agreement_ci"][1] - c["agreement"] for c in points],
        ]
        axis.errorbar(x, y, yerr=errors, marker=MARKERS[index % len(MARKERS)], capsize=3, label=label, alpha=0.85)
    axis.plot([1.0], [1.0], marker="*", markersize=14, color="black", linestyle="none", label="baseline (unpruned)")
    axis.axhline(MIN_AGREEMENT, color="grey", linestyle="--", linewidth=1)
    axis.text(
        0.02,
        MIN_AGREEMENT + 0.01,
        f"rule: agreement >= {MIN_AGREEMENT}",
        color="grey",
        transform=axis.get_yaxis_transform(),
    )
    xlabel = "prefill token fraction (share of the unpruned prefill's token-layers; lower is faster)"
    dodged = "\nscores at one fraction are drawn side by side, at most 0.012 apart from it"
    axis.set_xlabel(xlabel + (dodged if len(lines) > 1 else ""))
    axis.set_ylabel("whole-answer agreement with the unpruned model")
    axis.set_ylim(-0.02, 1.05)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right", title="token score (+ decoding policy)", title_fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def describe(records: Sequence[dict[str, Any]]) -> str:
    """A title naming what the plot pools: model, split, lengths, tasks, prompts per candidate."""
    first = records[0]
    lengths = sorted({r["length"] for r in records})
    tasks = sorted({r["task"] for r in records})
    prompts = len({(r["task"], r["length"], r["sample"]) for r in records})
    exact = {r["max_new_tokens"] for r in records if r.get("exact")}
    answers = f", answers of exactly {', '.join(map(str, sorted(exact)))} tokens" if exact else ""
    return (
        f"{first['model']}, {first['split']} prompts (seed {first['seed']}): {prompts} prompts, "
        f"lengths {', '.join(map(str, lengths))}{answers}\n{len(tasks)} tasks ({', '.join(tasks)}); "
        "bars: Wilson 95% CI"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazybench.frontier_plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scorings", nargs="+", help="only these token scores (default: all)")
    parser.add_argument("--split", help="only records of this split")
    args = parser.parse_args(argv)
    records = [
        r
        for r in read_records(args.results)
        if (not args.scorings or r["name"] == "baseline" or r["scoring"] in args.scorings)
        and (not args.split or r["split"] == args.split)
    ]
    plot(records, args.out, describe(records))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
