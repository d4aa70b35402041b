"""The GPU check's report, rendered from its JSON-lines records alone (`python -m lazybench.gpu_report FILE.jsonl`).

`benchmarks/gpu_check.py` appends one record per measurement to `gpu-check.jsonl`; every record carries `kind`,
`run` (the run's id) and `machine`. Kinds:

- `gpu_check`: the run's settings (shapes, lengths, rounds, budget), first line of a run
- `tests`: the CUDA tests' counts (`passed`, `failed`, `skipped`, `errors`, `returncode`; `ran` false when not run)
- `ttft`: one (model, tokens, schedule) prefill: `seconds` per round, `median_s`, `ratios` (baseline round i / this
  round i), `speedup` (baseline median / this median), `peak_bytes`, `prefill_token_fraction`
- `generation`: the same for a whole greedy generation of `new_tokens` tokens on a `tokens`-token prompt
- `skipped`: a cell not measured (`reason`: "budget" or "out of memory", `detail`)
- `gpu_check_end`: elapsed seconds (a run without it was interrupted)

`render(records)` returns the markdown; `section(records)` the same without its title, for a larger report.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]
KINDS = ("gpu_check", "tests", "ttft", "generation", "skipped", "gpu_check_end")
MEASURED = ("ttft", "generation")


def _num(value: float | None, digits: int = 3, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _gib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def _spread(values: Sequence[float] | None, digits: int = 2, suffix: str = "") -> str:
    """'min–max' of a list (one value alone when the list holds one), '–' when empty."""
    if not values:
        return "–"
    low, high = min(values), max(values)
    return _num(low, digits, suffix) if len(values) == 1 else f"{low:.{digits}f}–{high:.{digits}f}{suffix}"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def _machine_line(header: Record) -> str:
    m = header.get("machine", {})
    where = m.get("gpu") or f"CPU ({m.get('cpu', '?')})"
    mode = " — **smoke run** (tiny shapes on CPU: checks the script, not the speed)" if header.get("smoke") else ""
    return (
        f"{where}, torch {m.get('torch', '?')} (CUDA {m.get('cuda') or '–'}), transformers "
        f"{m.get('transformers', '?')}, lazyllm {m.get('lazyllm', '?')}, {str(m.get('date', '?'))[:19]}{mode}"
    )


def _tests_line(records: Sequence[Record]) -> str:
    tests = [r for r in records if r["kind"] == "tests"]
    if not tests:
        return "CUDA tests: no record."
    t = tests[-1]
    if not t.get("ran"):
        return f"CUDA tests: not run ({t.get('note', '')})."
    counts = ", ".join(f"{t.get(k, 0)} {k}" for k in ("passed", "failed", "skipped", "errors"))
    return f"CUDA tests (`{t.get('command', '')}`): {counts}, exit code {t.get('returncode')}, {t.get('seconds', 0):.0f} s."


def _measured_rows(records: Sequence[Record], kind: str) -> list[list[Any]]:
    rows = []
    for r in records:
        if r["kind"] != kind:
            continue
        rows.append(
            [
                r["model"],
                r["tokens"] if kind == "ttft" else f"{r['tokens']} + {r['new_tokens']}",
                r["schedule"],
                _num(r["median_s"], 4),
                _spread(r["seconds"], 4),
                _num(r["speedup"], 2, "x"),
                _spread(r.get("ratios"), 2, "x"),
                _num(r.get("prefill_token_fraction"), 3),
                _gib(r.get("peak_bytes")),
            ]
        )
    return rows


HEAD = [
    "model",
    "tokens",
    "schedule",
    "median s",
    "min–max s",
    "speedup",
    "per-round ratios",
    "token fraction",
    "peak GiB",
]


def _run_section(records: Sequence[Record]) -> list[str]:
    """One run's set-up, tests, TTFT table, generation table and skipped cells."""
    header = next((r for r in records if r["kind"] == "gpu_check"), {})
    end = next((r for r in records if r["kind"] == "gpu_check_end"), None)
    lines = [f"### Run {records[0].get('run', '?')}", "", _machine_line(header), ""]
    settings = header.get("settings", {})
    if settings:
        lines += [
            f"Rounds: {settings.get('rounds')} interleaved after {settings.get('warmup')} warm-up; budget "
            f"{settings.get('budget_s')} s; dtype {settings.get('dtype')}, attention {settings.get('attn')}.",
            "",
        ]
    lines += [_tests_line(records), ""]
    for kind, title in (("ttft", "TTFT (prefill wall time)"), ("generation", "Whole greedy generation")):
        rows = _measured_rows(records, kind)
        lines += [f"#### {title}", "", *(_table(HEAD, rows) if rows else ["No measurement."]), ""]
    skipped = [r for r in records if r["kind"] == "skipped"]
    if skipped:
        lines += ["#### Skipped", ""]
        lines += _table(
            ["model", "cell", "tokens", "reason", "detail"],
            [[r["model"], r["cell"], r.get("tokens", "–"), r["reason"], r.get("detail", "")] for r in skipped],
        )
        lines.append("")
    status = f"Finished in {end['elapsed_s']:.0f} s." if end else "**Interrupted**: no end record."
    return [*lines, status, ""]


def section(records: Sequence[Record]) -> list[str]:
    """The markdown lines of every GPU-check run among `records` (other kinds ignored), one sub-section per run."""
    mine = [r for r in records if r.get("kind") in KINDS]
    by_run: dict[str, list[Record]] = {}
    for r in mine:
        by_run.setdefault(str(r.get("run", "?")), []).append(r)
    lines = [
        "## GPU check: TTFT and whole generations on random-weight 7B-class shapes",
        "",
        "Speedup = the baseline's median / the schedule's median; per-round ratios = the baseline's time / the "
        "schedule's in the same interleaved round. Token fraction: `lazyllm.stats(model).prefill_token_fraction`. "
        "Peak GiB: `torch.cuda.max_memory_allocated`, reset before each measurement. Weights are random: these "
        "figures are about speed only.",
        "",
    ]
    for run_records in by_run.values():
        lines += _run_section(run_records)
    return lines


def render(records: Sequence[Record]) -> str:
    """The GPU check's whole markdown report, from its records alone."""
    return "\n".join(["# LazyLLM GPU check", "", *section(records)])


def read(path: Path) -> list[Record]:
    """The records of a JSON-lines file (blank lines ignored)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazybench.gpu_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="gpu-check.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: next to the records, .md)")
    args = parser.parse_args(argv)
    out = args.out or args.results.with_suffix(".md")
    out.write_text(render(read(args.results)))
    print(f"gpu report: wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
