"""The markdown report and its plots, rendered from JSON-lines records alone (`python -m lazybench report RESULTS...`).

Runs of several files and machines are merged: each run's set-up and speed table are shown under its own heading;
accuracy, fidelity and the rule pool every run's samples (each compared with its own run's baseline). Frontier
records (`lazybench.frontier`) in the same files get their own section and plot (`choose`, `frontier_plot`), and the
GPU check's records (`benchmarks/gpu_check.py`, kinds in `gpu_report.KINDS`) their own section (`gpu_report.section`).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazybench import choose, frontier_plot, gpu_report, plots
from lazybench.profiles import BASELINE, length_label
from lazybench.records import Run, read, runs
from lazybench.summary import accuracy_cells, fidelity_summary, frontier_points, generation_table, kvpress_summary
from lazybench.tasks import TASKS

Record = dict[str, Any]
ENOUGH_SAMPLES = 24  # per accuracy cell; fewer makes the report a quick run


def fmt(value: Any, digits: int = 2, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{100 * value:.0f}%" if pct else f"{value:.{digits}f}"


def spread(summary: dict[str, float] | None, digits: int = 3) -> str:
    """'median [min–max]' of a timing summary, '–' when empty."""
    values = [(summary or {}).get(k) for k in ("median", "min", "max")]
    if any(v is None or v != v for v in values):
        return "–"
    median, low, high = values
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def times(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}x"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def run_title(run: Run) -> str:
    h = run.header
    where = h["machine"].get("gpu") or f"{h['machine']['cores']}-core CPU"
    return f"{h['profile']['name']} on {where} ({h['machine']['date'][:10]})"


def quick_note(records: Sequence[Record]) -> list[str]:
    """A warning at the top when any accuracy cell holds fewer than ENOUGH_SAMPLES samples."""
    cells = accuracy_cells(records)
    if not cells or min(c["n"] for c in cells) >= ENOUGH_SAMPLES:
        return []
    low, high = min(c["n"] for c in cells), max(c["n"] for c in cells)
    held = f"{low}" if low == high else f"{low}–{high}"
    return [
        f"> **Quick run.** Accuracy cells hold {held} sample(s) each (fewer than {ENOUGH_SAMPLES}): the accuracy and "
        "fidelity figures are a sanity check of the rig, not evidence for choosing a default. The speed figures "
        "(interleaved medians) stand.",
        "",
    ]


def setup_section(run: Run) -> list[str]:
    """The run's command, machine, versions, model, repeats, budget and schedules."""
    h, end = run.header, run.end or {}
    p, m, model = h["profile"], h["machine"], h["model"]
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    elapsed = f"in {end['elapsed_s'] / 60:.1f} min" if end else "**interrupted** (no run_end record)"
    lines = [
        f"### Run {h['run']}: {run_title(run)}",
        "",
        f"{p['description']}. `{h['command']}` (seed {h['seed']}), {m['date']}, {elapsed}.",
        "",
        f"- CPU: {m['cpu']} ({m['cores']} cores), torch threads {m['torch_threads']}, load before/after "
        f"{m['load_before']} / {end.get('load_after', '–')}; device `{m['device']}`{gpu}",
        f"- python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, lazyllm {m['lazyllm']}",
        f"- model: {model['name']} ({model['num_layers']} layers, {model['dtype']}, `{model['attn_implementation']}`)",
        f"- speed: {p['repeats']} interleaved rounds after one warm-up call per schedule"
        + (f" and {p['warmup']} discarded round(s)" if p["warmup"] else "")
        + f", {p['decode_tokens']} new tokens per call; accuracy: greedy, max_new_tokens={p['max_new_tokens']}",
    ]
    budget = end.get("budget") or {}
    if budget.get("budget_s"):
        dropped = "; ".join(budget["trimmed"]) or "nothing"
        lines.append(f"- time budget {budget['budget_s'] / 60:.1f} min (`--budget-min`); dropped to fit it: {dropped}")
    if m.get("load_warning"):
        lines += ["", f"> **Note:** {m['load_warning']}"]
    schedules = [(n, i["config"], fmt(i["token_fraction"], 3), i["note"]) for n, i in h["schedules"].items()]
    return [*lines, "", *table(("schedule", "layer:keep", "analytic prefill token fraction", "note"), schedules)]


def decode_steps(record: dict[str, Any]) -> tuple[str, str]:
    """'first decoding step ms' and 'later steps ms/token' (medians over rounds) of a speed record: the first step
    revives what the prefill parked (`revive_all_at=1`), so one mean over all steps would hide both figures. Records
    without per-step times (written before the rig kept them) give neither."""
    rounds = [steps for steps in record.get("decode_step_runs_ms") or () if len(steps) > 1]
    if not rounds:
        return "–", "–"
    first = statistics.median(steps[0] for steps in rounds)
    later = statistics.median(statistics.mean(steps[1:]) for steps in rounds)
    return fmt(first, 1), fmt(later, 1)


def speed_section(run: Run) -> list[str]:
    """Section 1 of one run: TTFT, speedup, compute bound, decode, memory per (length, schedule)."""
    rows = []
    for r in run.speed:
        name = r["schedule"] + ("" if r["pruned"] or r["schedule"] == BASELINE else " (not pruned)")
        rows.append(
            (r["label"], name, r["prompt_tokens"], spread(r["ttft_s"]), spread(r["speedup"], 2))
            + (fmt(r["time_ratio"]["median"], 3), fmt(r["compute_bound"], 3), fmt(r["prefill_token_fraction"], 3))
            + (*decode_steps(r), mib(r["peak_memory_delta_bytes"]), mib(r["kv_cache_bytes"]))
            + (mib(r["aux_cache_bytes"]),)
        )
    head = ("length", "schedule", "tokens", "TTFT s", "speedup", "time ratio", "compute bound")
    head += ("prefill token fraction", "decode step 1 ms", "later steps ms/token")
    head += ("peak mem Δ MiB", "KV MiB", "Aux MiB")
    shares = ", ".join(f"{r['label']} {fmt(r['attention_share'])}" for r in run.speed if r["schedule"] == BASELINE)
    return [
        f"#### {run_title(run)}",
        "",
        *table(head, rows),
        "",
        f"Attention share a of the unpruned prefill: {shares}.",
        "",
    ]


SPEED_INTRO = (
    "TTFT = wall time of `generate()` until the first token's logits. Cells: median [min–max] over the interleaved "
    "rounds. Speedup = median of per-round baseline/schedule TTFT ratios; time ratio its inverse, next to the compute "
    "bound (1-a)·Σn_l/(L·N) + a·Σn_l²/(L·N²) with the measured attention share a. Decoding: the first step after "
    "the first token (with `revive_all_at=1` it computes every token the prefill parked) and the mean of the later "
    "steps, medians over rounds. Memory: peak RSS delta of the "
    "prefill on CPU (coarse), `max_memory_allocated` delta on CUDA; KV = analytic KV-cache size after prefill; Aux = "
    "Aux Cache held after prefill."
)


def accuracy_section(records: Sequence[Record]) -> list[str]:
    """Section 2: score per (task, length) and schedule, and fidelity to the baseline per schedule."""
    cells = accuracy_cells(records)
    schedules = list(dict.fromkeys(c["schedule"] for c in cells))
    keys = sorted({(c["task"], c["length"]) for c in cells}, key=lambda k: (k[1], TASKS.index(k[0])))
    rows = []
    for task, length in keys:
        here = {c["schedule"]: c for c in cells if c["task"] == task and c["length"] == length}
        scores = [fmt(here[s]["accuracy"], pct=True) if s in here else "–" for s in schedules]
        rows.append((task, length_label(length), here[BASELINE]["n"], *scores))
    fidelity = [
        (name, f["n"], fmt(f["accuracy"], pct=True), fmt(f["baseline_accuracy"], pct=True))
        + (fmt(f["answer_agreement"], pct=True), fmt(f["prefill_token_fraction"], 3))
        for name, f in fidelity_summary(records).items()
    ]
    head = ("schedule", "n", "accuracy", "baseline", "answer agreement", "prefill token fraction")
    return [
        "## 2. Accuracy on the RULER-style tasks (score %, mean over samples)",
        "",
        "Greedy answers scored with `tasks.score`; `n` = samples per cell.",
        "",
        *table(("task", "length", "n", *schedules), rows),
        "",
        "### Fidelity to the baseline (no gold needed), over all accuracy samples",
        "",
        "Answer agreement = the same whole greedy answer as the baseline's (whitespace aside).",
        "",
        *table(head, fidelity),
    ]


def generation_section(records: Sequence[Record]) -> list[str]:
    """Section 3: the paper's Table 2 from the accuracy runs."""
    rows = [
        (g["label"], g["schedule"], g["n"], times(g["ttft_speedup"]), times(g["generation_speedup"]))
        + (f"{fmt(g['mean_new_tokens'], 1)} ({fmt(g['baseline_mean_new_tokens'], 1)})",)
        + (fmt(g["prefill_token_fraction"], 3), fmt(g["prompt_token_fraction_total"], 3))
        + (fmt(g["revived_tokens_mean"], 1),)
        for g in generation_table(records)
    ]
    head = ("length", "schedule", "n", "TTFT speedup", "whole-generation speedup", "new tokens (baseline)")
    head += ("prefill token fraction", "prompt tokens ever computed", "revived tokens/sample")
    return [
        "## 3. Whole generation (the paper's Table 2)",
        "",
        "From the accuracy runs: summed baseline wall time / summed schedule wall time over the same samples, and "
        "the share of prompt token-layers ever computed (prefill + revivals).",
        "",
        *table(head, rows),
    ]


def kvpress_section(all_runs: Sequence[Run]) -> list[str]:
    """Section 4: each run's kvpress status, and the presses pooled over the runs that ran them."""
    lines = ["## 4. kvpress at the same KV budget", ""]
    for run in all_runs:
        kv = run.kvpress or {"status": "missing"}
        if kv["status"] == "ok":
            v = kv.get("versions") or {}
            lines.append(
                f"- {run_title(run)}: kvpress {v.get('kvpress')} (transformers {v.get('transformers')}), "
                f"compression_ratio {kv['compression_ratio']} = KV budget {fmt(kv['kv_budget'], 3)} (the default "
                "schedule's prefill token fraction), lengths " + ", ".join(map(length_label, kv["lengths"]))
            )
        else:
            lines.append(f"- {run_title(run)}: **not run** ({kv['status']}): {kv.get('reason') or kv.get('error')}")
    rows = [r for run in all_runs for r in run.kvpress_rows]
    if not rows:
        return lines
    summary = [
        (press, s["n"], fmt(s["accuracy"], pct=True))
        + (", ".join(f"{t} {fmt(v, pct=True)}" for t, v in s["accuracy_by_task"].items()),)
        + (fmt(s["answer_agreement"], pct=True), fmt(s["answer_agreement_lazyllm_baseline"], pct=True))
        + (fmt(s["kv_fraction"], 3), fmt(s["ttft_ratio"]), fmt(s["generation_ratio"]))
        for press, s in kvpress_summary(rows).items()
    ]
    head = ("press", "n", "accuracy", "by task", "agreement (own baseline)", "agreement with lazyllm baseline")
    head += ("KV kept", "TTFT ratio", "generation time ratio")
    note = (
        "The press compresses each layer's KV right after that layer's prefill attention: the first token is the "
        "unpruned one and kvpress does not shorten TTFT; it saves KV memory for the later tokens."
    )
    return [*lines, "", note, "", *table(head, summary)]


def frontier_section(front: Record, plot_name: str) -> list[str]:
    """The schedules' speedup against fidelity: pooled points, and the non-dominated schedules per task."""
    pooled = [
        (p["schedule"], times(p["speedup"]), p["speedup_source"], p["n"])
        + (fmt(p["answer_agreement"], pct=True), fmt(p["accuracy"], pct=True))
        for p in front["pooled"]
    ]
    per_task = [
        (task, ", ".join(i["frontier_accuracy"]), ", ".join(i["frontier_agreement"]))
        for task, i in front["tasks"].items()
    ]
    return [
        "## Frontier of the schedules",
        "",
        f"TTFT speedup at {front['reference_length']} (speed section; a schedule not timed there takes its accuracy "
        f"runs' TTFT speedup at the longest accuracy length) against answer agreement and accuracy: `{plot_name}`.",
        "",
        *table(("schedule", "TTFT speedup", "speedup from", "n", "answer agreement", "accuracy"), pooled),
        "",
        *table(("task", "non-dominated (speedup vs accuracy)", "non-dominated (speedup vs agreement)"), per_task),
    ]


def token_score_section(fidelity: Sequence[Record], plot_name: str) -> list[str]:
    """The fidelity frontier's records (token scores x schedules): `choose`'s table and choice, and its plot."""
    table_md = choose.render(choose.candidates_table(fidelity))
    working = ", ".join(sorted(choose.working_tasks(fidelity))) or "none"
    splits = {r["split"] for r in fidelity}
    if splits == {"select"}:
        verdict = f"Chosen by the rule: {choose.choose(fidelity) or 'none passes: the default stays'}."
    elif splits in ({"decode"}, {"confirm"}):  # README, second to fourth rules for the default decoding policy
        reference, net = "paper@default", splits == {"confirm"}
        rule = "no more answers lost than kept (fourth rule)" if net else "at most one answer lost (second rule)"
        verdict = f"Decoding policies against {reference}, eligible with {rule}:\n\n" + choose.render_policies(
            choose.policy_table(fidelity, reference, net), reference
        )
    else:  # the rule reads the selection prompts only; on held-apart prompts "passes" is a check, not a choice
        verdict = "Held-apart prompts: 'passes' checks the rule here; the default is chosen on the selection split."
    return [
        "## Fidelity frontier of the token scores (`python -m lazybench frontier`)",
        "",
        frontier_plot.describe(fidelity).replace("\n", "; ") + f". Plot: `{plot_name}`.",
        "",
        *fidelity_setup(fidelity),
        "",
        table_md,
        "",
        f"Working tasks (baseline accuracy >= {choose.BASELINE_WORKS}): {working}. {verdict}",
        "",
        *cells_section(fidelity),
    ]


def fidelity_setup(fidelity: Sequence[Record]) -> list[str]:
    """Where and how the records were made: each machine with its dates, and each command (as run)."""
    dates: dict[str, list[str]] = {}  # machine -> the dates of its records
    for record in fidelity:
        m = record["machine"]
        dates.setdefault(machine_label(m), []).append(m["date"][:10] if "date" in m else "date not recorded")
    lines = [f"- Machine: {machine}; {' to '.join(sorted({min(d), max(d)}))}." for machine, d in dates.items()]
    commands = sorted({record["command"] for record in fidelity})
    return lines + [f"- Command: `{command}`" for command in commands]


def machine_label(m: Record) -> str:
    """CPU, cores, device, torch and transformers of a record's machine (`bench.machine.machine_info`)."""
    versions = m.get("versions", m)  # the rig's first records kept versions apart, without date, CPU or device
    return (
        f"{m.get('cpu', m.get('processor'))}, {m.get('cores', m.get('cpu_count'))} cores, "
        f"{m.get('device', 'device not recorded')}, torch {versions['torch']} ({m['torch_threads']} threads), "
        f"transformers {versions['transformers']}"
    )


def agreement_cell(cell: Record | None) -> str:
    if cell is None:
        return "-"
    low, high = cell["agreement_ci"]
    return f"{cell['agreement']:.2f} [{low:.2f}-{high:.2f}] ({cell['n']})"


def cells_section(fidelity: Sequence[Record]) -> list[str]:
    """Whole-answer agreement per (length, task) cell and candidate, with its Wilson 95% interval and n."""
    by_cell = {(c["length"], c["task"], c["name"]): c for c in choose.cells(fidelity, by=("length", "task", "name"))}
    tasks = sorted({task for _, task, _ in by_cell})
    lines = ["### Agreement per (length, task) cell: share of whole answers as the unpruned model's [95% CI] (n)"]
    for length in sorted({length for length, _, _ in by_cell}):
        names = sorted({name for at, _, name in by_cell if at == length and name != "baseline"})
        rows = [[name, *(agreement_cell(by_cell.get((length, task, name))) for task in tasks)] for name in names]
        lines += ["", f"{length} tokens:", "", *table(["candidate", *tasks], rows)]
    return lines


def render(paths: Sequence[Path], out: Path, name: str) -> Path:
    """Write `<out>/<name>.md` and its plots from the records in `paths`; returns the markdown's path."""
    records = read(paths)
    all_runs = runs(records)
    fidelity = choose.read_records(paths)
    gpu = [r for r in records if r["kind"] in gpu_report.KINDS]
    if not all_runs and not fidelity and not gpu:
        raise ValueError(f"no benchmark records in {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    accuracy = [r for run in all_runs for r in run.accuracy]
    timed = [run for run in all_runs if run.speed]
    lines = ["# LazyLLM benchmark report", "", *quick_note(accuracy)]
    lines += [f"Rendered by `python -m lazybench report` from {', '.join(p.name for p in paths)}.", ""]
    lines += ["## Runs", ""] if all_runs else []
    for run in all_runs:
        lines += [*setup_section(run), ""]
    if timed:
        speed_runs = [(run_title(run), run.speed) for run in timed]
        plots.plot_ttft(speed_runs, out / f"{name}_ttft.png")
        figures = f"`{name}_ttft.png`"
        if any(plots.has_steps(rows) for _, rows in speed_runs):
            plots.plot_decode_steps(speed_runs, out / f"{name}_decode.png")
            figures += f", `{name}_decode.png` (ms per decoding step)"
        lines += ["## 1. TTFT and decoding vs prompt length", "", SPEED_INTRO, f"Plots: {figures}.", ""]
        lines += [line for run in timed for line in speed_section(run)]
    if accuracy:
        speed = timed[-1].speed if timed else []
        front = frontier_points(speed, accuracy, generation_table(accuracy))
        plots.plot_schedule_frontier(front["pooled"], front["reference_length"], out / f"{name}_frontier.png")
        lines += [*accuracy_section(accuracy), "", *generation_section(accuracy), ""]
        lines += [*kvpress_section(all_runs), "", *frontier_section(front, f"{name}_frontier.png"), ""]
    if fidelity:
        frontier_plot.plot(fidelity, out / f"{name}_fidelity.png", frontier_plot.describe(fidelity))
        lines += [*token_score_section(fidelity, f"{name}_fidelity.png"), ""]
    if gpu:
        lines += gpu_report.section(gpu)
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lazybench report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results",
        type=Path,
        nargs="+",
        help="JSON-lines files of `python -m lazybench`, its frontier or gpu_check.py",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first file's folder)")
    parser.add_argument("--name", default=None, help="report name: <name>.md, <name>_*.png (default: the file's stem)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.results[0].parent
    name = args.name or (args.results[0].stem if len(args.results) == 1 else "report")
    path = render(args.results, out, name)
    print(f"bench report: wrote {path} and its plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
