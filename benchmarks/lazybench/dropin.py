"""Drop-in `generate()` on long prompts: beam search, patched against the unpatched model.

Beam search prunes since 0.2 (README's `generate()` table, docs/DECISIONS.md section 10); this measures, on the real
model, whether its answers stay the unpatched model's and what its first token costs. Right-padded calls run
unpruned, so there is nothing to measure for them. Prompts: the rig's five RULER-style tasks, `--n` per task at
`--length` tokens, needles / gold spread over depths 0.05..0.95, split seed 7 (used by nothing else). Each prompt is
answered with `--num-beams` beams (`--new-tokens`, one cap for every task) by the patched model (`--schedule` with
`min_prompt_tokens=0`) and by the unpatched one, whose returned sequence is the reference.

Fidelity is whole-answer agreement (`lazyllm.fidelity.answers_agree`) and token F1. TTFT (`generate()` to the first
token's logits, `lazybench.timing.StepClock`) of the unpatched and the patched call on the same prompt are timed back
to back, their order alternating from one prompt to the next; the ratio is unpatched / patched. A patched call that
did not prune raises. One JSON line per (prompt, config) is appended to `--out` as results come (`mode`:
"beam_search"), and a re-run skips what the file holds; then the table (`report`) is printed.

    python -m lazybench.dropin --threads 2 --out benchmarks/results/dropin.jsonl   # SmolLM2: 25 prompts
    python -m lazybench.dropin --report benchmarks/results/dropin.jsonl            # the table from the records alone
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

import lazyllm
import lazyllm.models
from lazybench.fidelity import token_f1
from lazybench.frontier import Records
from lazybench.machine import machine_info
from lazybench.prompts import fake_samples, tiny_model_and_tokenizer
from lazybench.tasks import TASKS, Sample, build_samples, chat_prompt
from lazybench.timing import summarize, timed_generate
from lazyllm.fidelity import answers_agree, wilson_interval

MODE = "beam_search"  # the records' `mode` (files also hold records of the retired right_padding mode)
SEED = 7  # the split of these prompts (frontier uses 0, 1, 3, 4, 8; outputs 5; conversation 6)
UNPATCHED = "unpatched"


class DropinRecords(Records):
    """The JSON-lines file of this tool (what is done, by key; appending as results come)."""

    KEY = ("model", "mode", "seed", "n", "task", "length", "sample", "name", "max_new_tokens", "num_beams")


def load(name: str) -> tuple[Any, Any, bool]:
    """(model, tokenizer, tiny): "tiny" is the smoke profile's random Llama with fake prompts (for tests)."""
    if name == "tiny":
        return (*tiny_model_and_tokenizer("cpu"), True)
    model, tokenizer = lazyllm.models.load_model(name, dtype=torch.float32)
    return model, tokenizer, False


def task_samples(tokenizer: Any, task: str, length: int, depths: Sequence[float], tiny: bool) -> list[Sample]:
    if tiny:
        return [sample for sample in fake_samples([length], depths, SEED) if sample.task == task]
    return build_samples(task, tokenizer, length, depths=depths, seed=SEED)


def prompts(tokenizer: Any, n: int, length: int, tiny: bool) -> list[tuple[int, Sample]]:
    """(k, prompt k at `length`) of every task, interleaved across tasks."""
    depths = [0.05 + 0.9 * i / max(n - 1, 1) for i in range(n)]
    samples = {task: task_samples(tokenizer, task, length, depths, tiny) for task in TASKS}
    return [(k, samples[task][k]) for k in range(n) for task in TASKS]


def encode(tokenizer: Any, sample: Sample, device: torch.device) -> dict[str, torch.Tensor]:
    """One prompt's `generate()` inputs (a batch of one row, no padding)."""
    encoded = tokenizer([chat_prompt(tokenizer, sample, answer_prefix=True)], return_tensors="pt")
    return {"input_ids": encoded.input_ids.to(device), "attention_mask": encoded.attention_mask.to(device)}


@dataclasses.dataclass
class Bench:
    """What every call of a run shares: the model, the patched config, the answer cap and the records."""

    model: Any
    tokenizer: Any
    config: lazyllm.LazyConfig
    schedule: str
    new_tokens: int
    num_beams: int
    records: DropinRecords

    @property
    def name(self) -> str:
        return f"patched@{self.schedule}"


def call(bench: Bench, inputs: dict[str, torch.Tensor], patched: bool, num_beams: int = 1) -> dict[str, Any]:
    """One `generate()`: its answers, the TTFT and (patched) the stats; raises if a patched call did not prune."""
    beams = {"num_beams": num_beams} if num_beams > 1 else {}
    model = bench.model
    with lazyllm.patched(model, bench.config) if patched else contextlib.nullcontext():
        timing = timed_generate(model, inputs, bench.new_tokens, model.device, **beams)
        stats = lazyllm.stats(model) if patched else None
    if stats is not None and not stats.pruned:
        raise RuntimeError(f"the patched call did not prune: {stats.fallback_reason}")
    new = timing.output[:, inputs["input_ids"].shape[1] :]
    return {
        "answers": bench.tokenizer.batch_decode(new, skip_special_tokens=True),
        "ttft_s": round(timing.ttft_s, 4),
        "prompt_tokens": inputs["attention_mask"].sum(1).tolist(),
        "stats": stats.as_dict() if stats else None,
    }


def side_by_side(
    bench: Bench, inputs: dict[str, torch.Tensor], num_beams: int, patched_first: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(unpatched, patched): the two calls on the same inputs, back to back, in the order given."""
    order = (True, False) if patched_first else (False, True)
    results = {patched: call(bench, inputs, patched, num_beams) for patched in order}
    return results[False], results[True]


def judged(result: dict[str, Any], reference: Sequence[str]) -> dict[str, Any]:
    """A call's answers with their agreement and token F1 against the reference answers, answer by answer."""
    pairs = list(zip(result["answers"], reference, strict=True))
    return dict(
        result,
        reference=list(reference),
        agree=[answers_agree(a, r) for a, r in pairs],
        f1=[round(token_f1(a, r), 4) for a, r in pairs],
    )


def compared(patched: dict[str, Any], unpatched: dict[str, Any], patched_first: bool) -> dict[str, Any]:
    """What a patched record holds beside its answers: the unpatched call's TTFT, the ratio and the prefill work."""
    return dict(
        baseline_ttft_s=unpatched["ttft_s"],
        ttft_ratio=round(unpatched["ttft_s"] / patched["ttft_s"], 4),
        prefill_token_fraction=round(patched["stats"]["prefill_token_fraction"], 4),
        patched_first=patched_first,
    )


def run_prompt(bench: Bench, sample: Sample, where: dict[str, Any], patched_first: bool) -> int:
    """One prompt, unpatched and patched; returns how many records were added."""
    where = dict(where, mode=MODE, num_beams=bench.num_beams, task=sample.task, depths=[sample.depth])
    names = [UNPATCHED, bench.name]
    if all(bench.records.key(dict(where, name=name)) in bench.records.done for name in names):
        return 0
    inputs = encode(bench.tokenizer, sample, bench.model.device)
    unpatched, patched = side_by_side(bench, inputs, bench.num_beams, patched_first)
    found = {
        UNPATCHED: unpatched,
        bench.name: judged(patched, unpatched["answers"]) | compared(patched, unpatched, patched_first),
    }
    for name in names:
        patched_record = name == bench.name
        config = dataclasses.asdict(bench.config) if patched_record else None
        bench.records.add(
            dict(where, name=name, schedule=bench.schedule if patched_record else None, config=config, **found[name])
        )
    return len(names)


COLUMNS = (
    "mode | config | model | --length | new tokens (cap) | answered | agreement [95% Wilson] | mean token F1 | "
    "TTFT ratio, median [q1-q3] | prefill token fraction"
).split(" | ")


def table_row(mode: str, name: str, model: str, length: int, cap: int, beams: int, rows: list[dict[str, Any]]) -> str:
    """One line of the table: the patched records of one (mode, config, model, length, cap, beams)."""
    agree = [a for r in rows for a in r["agree"]]
    low, high = wilson_interval(sum(agree), len(agree))
    ratio = summarize([r["ttft_ratio"] for r in rows])
    cells = [
        mode,
        name,
        model,
        str(length),
        str(cap),
        f"{len(agree)} answers in {len(rows)} calls" + (f" of {beams} beams" if beams > 1 else ""),
        f"{sum(agree)}/{len(agree)} [{low:.2f}-{high:.2f}]",
        f"{statistics.mean(f for r in rows for f in r['f1']):.3f}",
        f"{ratio['median']:.2f}x [{ratio['q1']:.2f}-{ratio['q3']:.2f}]",
        f"{statistics.mean(r['prefill_token_fraction'] for r in rows):.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


def render(records: Iterable[dict[str, Any]]) -> str:
    """The markdown table of the patched records, one line per (mode, config, model, length, cap, beams)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("config") is not None:
            groups[(r["mode"], r["name"], r["model"], r["length"], r["max_new_tokens"], r["num_beams"])].append(r)
    if not groups:
        return "(no patched records)"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [table_row(*key, rows) for key, rows in sorted(groups.items())]
    notes = (
        "\nAgreement: whole answers equal to the unpatched model's. TTFT ratio: unpatched / patched call on the same "
        "inputs, timed back to back, per call."
    )
    return "\n".join(lines) + "\n" + notes


def report(paths: Sequence[Path]) -> str:
    """The table from JSON-lines files alone (the last record of each key counts)."""
    return render(record for path in paths for record in DropinRecords(path).done.values())


def measure(args: argparse.Namespace, command: str) -> None:
    model, tokenizer, tiny = load(args.model)
    config = lazyllm.LazyConfig.parse(args.schedule, model.config.num_hidden_layers, min_prompt_tokens=0)
    bench = Bench(model, tokenizer, config, args.schedule, args.new_tokens, args.num_beams, DropinRecords(args.out))
    where = dict(kind="dropin", model=args.model, seed=SEED, n=args.n, length=args.length)
    where.update(max_new_tokens=args.new_tokens, machine=machine_info(str(model.device)), command=command)
    samples = prompts(tokenizer, args.n, args.length, tiny)
    warm = encode(tokenizer, samples[0][1], model.device)
    for patched in (False, True):  # first calls are slow: warm both up, untimed
        call(bench, {key: value[:, :256] for key, value in warm.items()}, patched)
    start = time.perf_counter()
    for index, (k, sample) in enumerate(samples):
        added = run_prompt(bench, sample, dict(where, sample=k), patched_first=index % 2 == 1)
        if added:
            print(f"[{time.perf_counter() - start:6.0f}s] {MODE} {sample.task} #{k}: {added} records", flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lazybench.dropin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a name or path load_model accepts; 'tiny': tests")
    parser.add_argument("--length", type=int, default=2048, help="prompt tokens")
    parser.add_argument("--n", type=int, default=5, help="prompts per task (5 tasks)")
    parser.add_argument("--num-beams", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24, help="answer cap of every call")
    parser.add_argument("--schedule", default="default", help="a preset or 'layer:keep,...' (LazyConfig.parse)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dropin.jsonl"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="FILE", help="only print the table")
    args = parser.parse_args(argv)
    if args.num_beams < 2:
        parser.error("--num-beams must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    previous = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        measure(args, shlex.join(["python", "-m", "lazybench.dropin", *argv]))
    finally:
        torch.set_num_threads(previous)
    print(report([args.out]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
