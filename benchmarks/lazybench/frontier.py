"""The fidelity frontier: how many answers each (token score, schedule) keeps, at what prefill cost.

For every prompt the unpruned model answers first (greedy, whole answer); then each candidate configuration answers
the same prompt, and one JSON line per (prompt, candidate) records the answer, whether it equals the baseline's
(`agree`), its token F1 against it, its task score and its prefill token fraction. The file is appended to as
results come and a re-run skips what it already holds, so a long sweep can run in the background and survive an
interruption. `python -m lazybench report` renders the records (tables with intervals, the frontier plot).

    python -m lazybench.frontier --split select --lengths 2048 --n 8 --scorings paper window32+pool7 \\
        --schedules aggressive balanced --out benchmarks/results/frontier-select.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import lazyllm
import lazyllm.models
from lazybench.decode import POLICIES
from lazybench.fidelity import token_f1
from lazybench.machine import machine_info
from lazybench.tasks import TASKS, Sample, build_samples, chat_prompt, score
from lazybench.timing import StepClock
from lazyllm.fidelity import answers_agree
from lazyllm.generation import encode, greedy

# Token scores compared on the frontier, by label (LazyConfig fields). "paper" is the paper's last-token score.
# Measured at 'aggressive' and then removed from the library (no gain): sinks4, headmax, recent64, mass0.95, slide,
# and (0.2) the multi-layer scores; their records stay in benchmarks/results/frontier-select.jsonl.
SCORINGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "window32": dict(score_window=32),
    "window32+pool7": dict(score_window=32, score_pool=7),
    "window32+pool7+static": dict(score_window=32, score_pool=7, revive=False),
    "window32+pool7+revive_all_at1": dict(score_window=32, score_pool=7, revive_all_at=1),
    "pool7": dict(score_pool=7),
    "window32+pool15": dict(score_window=32, score_pool=15),
    "window8+pool7": dict(score_window=8, score_pool=7),
    "window64+pool7": dict(score_window=64, score_pool=7),
    "window32+pool3": dict(score_window=32, score_pool=3),
    "window32+pool11": dict(score_window=32, score_pool=11),
    # Decoding policies (docs/DECISIONS.md, rules for the default decoding policy) with the paper's score.
    **{f"paper+{name}": options for name, options in POLICIES.items() if name != "paper"},
}
# Candidates measured before lazyllm 0.2 retired their options: their records are still drawn as lines.
RETIRED_SCORINGS = (
    "window32+layers4+pool7",
    "window32+layers8+pool7",
    "paper+beat_weakest",
    "paper+every8",
    "paper+held",
    "paper+held+beat_weakest",
    "paper+revive_steps4",
    "paper+revive_steps16",
)
SHIPPED = "shipped"  # a preset as it ships (`LazyConfig.preset`), not re-scored
# Answers are short except the list task; generation stops earlier at end-of-sequence.
MAX_NEW_TOKENS = {"niah_multivalue": 40}
DEFAULT_MAX_NEW_TOKENS = 12
# Prompts that choose defaults never appear in reported figures; "decode" chooses the decoding policy, "confirm"
# tests what "decode" suggested, "stream" judges spreading the revival (docs/DECISIONS.md, sections 5 and 12).
# Seeds 5-7 belong to other rig tools (outputs, conversation, dropin).
SPLIT_SEEDS = {"report": 0, "select": 1, "decode": 3, "confirm": 4, "stream": 8}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One configuration on the frontier: a token score and a schedule, placed on the model's depth."""

    scoring: str
    schedule: str
    config: lazyllm.LazyConfig

    @property
    def name(self) -> str:
        return f"{self.scoring}@{self.schedule}"


def candidate(scoring: str, schedule: str, num_layers: int) -> Candidate:
    """`schedule` is a preset name or "fraction:keep,..." with cut positions as shares of the depth; scoring
    "shipped" takes the preset as `lazyllm.patch(model, name)` applies it (its score and decoding)."""
    if scoring == SHIPPED:
        if schedule not in lazyllm.PRESETS:
            raise SystemExit(f"--scorings {SHIPPED} takes preset names only, got {schedule!r}")
        return Candidate(scoring, schedule, lazyllm.LazyConfig.preset(schedule, num_layers, min_prompt_tokens=0))
    if scoring not in SCORINGS:
        raise SystemExit(f"unknown scoring {scoring!r}: choose from {', '.join(SCORINGS)}")
    # Token scores decode with the paper's policy, as when the frontier's records were made; "paper+<policy>" vary it.
    options = {"revive_all_at": None, **SCORINGS[scoring], "min_prompt_tokens": 0}
    if schedule in lazyllm.PRESETS:  # the preset's cuts: the label's score, not the one the preset carries
        cuts = list(lazyllm.PRESETS[schedule])
    else:
        cuts = [tuple(float(x) for x in item.split(":")) for item in schedule.split(",")]
    config = lazyllm.LazyConfig.place(cuts, num_layers, **options)
    return Candidate(scoring, schedule, config)


def saved_candidate(path: Path, model: Any) -> Candidate:
    """A config saved by `LazyConfig.save` / `lazyllm calibrate --out`, named after its file, pruning at every length."""
    config = dataclasses.replace(lazyllm.LazyConfig.load(path, model), min_prompt_tokens=0)
    return Candidate(path.stem, config.describe(), config)


def prompts(tokenizer: Any, tasks: Sequence[str], length: int, n: int, seed: int) -> Iterator[tuple[int, Sample]]:
    """`n` samples per task at `length`, needles/gold spread over depths 0.05..0.95, interleaved across tasks."""
    depths = [0.05 + 0.9 * i / max(n - 1, 1) for i in range(n)]
    per_task = {task: build_samples(task, tokenizer, length, depths=depths, seed=seed) for task in tasks}
    for index in range(n):
        for task in tasks:
            yield index, per_task[task][index]


def answer(model: Any, tokenizer: Any, text: str, max_new_tokens: int, exact: bool = False) -> dict[str, Any]:
    """The whole greedy answer to `text`, its prefill time and (patched models) its prefill token fraction.
    `exact`: the answer is `max_new_tokens` long (end-of-sequence suppressed), so every decoding step runs."""
    ids = encode(tokenizer, text)
    clock = StepClock(model.device)
    start = time.perf_counter()
    output = greedy(
        model,
        ids,
        max_new_tokens=max_new_tokens,
        **({"min_new_tokens": max_new_tokens} if exact else {}),
        logits_processor=[clock],
    )
    new = output[0, ids.shape[1] :]
    stats = lazyllm.stats(model) if lazyllm.is_patched(model) else None
    if stats is not None and not stats.pruned:
        raise RuntimeError(f"the candidate did not prune: {stats.fallback_reason}")
    return {
        "answer": tokenizer.decode(new, skip_special_tokens=True),
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": int(new.shape[0]),
        "ttft_s": round(clock.stamps[0] - start, 4),
        "prefill_token_fraction": round(stats.prefill_token_fraction, 4) if stats else 1.0,
    }


def prompts_per_cell(record: dict[str, Any]) -> int | None:
    """The --n a record was made with (it sets the prompts' depths), from the record or, for older ones, its command."""
    found = re.search(r"--n (\d+)", record["command"])
    return record.get("n") or (int(found.group(1)) if found else None)


def check_same_prompts(records: Records, where: dict[str, Any], lengths: Sequence[int]) -> None:
    """Sample i's depth depends on n (`where["n"]`): records made with another n at these lengths hold other prompts
    under the same sample numbers, so resuming them with this n would compare answers to different prompts."""
    for record in records.done.values():
        same_split = all(record[k] == where[k] for k in ("model", "split", "seed")) and record["length"] in lengths
        theirs = prompts_per_cell(record) if same_split else None
        if theirs not in (None, where["n"]):
            raise SystemExit(
                f"{records.path} holds {record['split']} prompts at {record['length']} tokens made with --n "
                f"{theirs}; their depths differ from --n {where['n']}'s. Resume with --n {theirs} or write to "
                "another --out."
            )


class Records:
    """The JSON-lines file: what is done (by key), and appending new records as they come."""

    KEY = ("model", "dtype", "split", "seed", "task", "length", "sample", "name", "max_new_tokens")
    DEFAULTS = {"dtype": "float32"}  # fields older records lack, with the value they were made with

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[tuple, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.done[self.key(record)] = record

    def key(self, record: dict[str, Any]) -> tuple:
        return tuple(record[field] if field in record else self.DEFAULTS[field] for field in self.KEY)

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.done[self.key(record)] = record


def run_prompt(
    model: Any,
    tokenizer: Any,
    sample: Sample,
    where: dict[str, Any],
    candidates: Sequence[Candidate],
    records: Records,
    answer_tokens: int | None = None,
) -> int:
    """The baseline's answer, then each candidate's, to one prompt; returns how many records were added.
    `answer_tokens`: every answer exactly this long (else each task's cap, stopping at end-of-sequence)."""
    text = chat_prompt(tokenizer, sample, answer_prefix=True)
    max_new = answer_tokens or MAX_NEW_TOKENS.get(sample.task, DEFAULT_MAX_NEW_TOKENS)
    exact = bool(answer_tokens)
    where = dict(where, task=sample.task, length=sample.length, max_new_tokens=max_new, exact=exact)

    def respond() -> dict[str, Any]:
        return answer(model, tokenizer, text, max_new, exact=exact)

    added = 0
    base_key = records.key(dict(where, name="baseline"))
    if base_key not in records.done:
        result = respond()
        baseline = dict(name="baseline", scoring=None, schedule=None, config=None)
        records.add(dict(where, **baseline, **judged(result, sample, None)))
        added += 1
    reference = records.done[base_key]
    for cand in candidates:
        if records.key(dict(where, name=cand.name)) in records.done:
            continue
        with lazyllm.patched(model, cand.config):
            result = respond()
        config = dataclasses.asdict(cand.config)
        fields = dict(name=cand.name, scoring=cand.scoring, schedule=cand.schedule, config=config)
        records.add(dict(where, **fields, **judged(result, sample, reference)))
        added += 1
    return added


def judged(result: dict[str, Any], sample: Sample, reference: dict[str, Any] | None) -> dict[str, Any]:
    """A candidate's answer with its fidelity to the unpruned model's (`reference`; None: it is the unpruned one)
    and its task score beside the reference's."""
    correct = score(result["answer"], sample)
    if reference is None:
        return dict(result, reference=result["answer"], agree=True, f1=1.0, correct=correct, baseline_correct=correct)
    return dict(
        result,
        reference=reference["answer"],
        agree=answers_agree(result["answer"], reference["answer"]),
        f1=round(token_f1(result["answer"], reference["answer"]), 4),
        correct=correct,
        baseline_correct=reference["correct"],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lazybench frontier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a name or path lazyllm.models.load_model accepts")
    parser.add_argument(
        "--split",
        choices=sorted(SPLIT_SEEDS),
        default="report",
        help="'select': prompts for choosing defaults (seed 1); 'report': held-apart prompts (seed 0); 'decode': "
        "prompts for choosing the decoding policy (seed 3); 'confirm': fresh prompts to confirm it (seed 4); 'stream': "
        "prompts judging a spread revival (seed 8)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--n", type=int, default=24, help="prompts per (task, length) cell")
    parser.add_argument(
        "--scorings", nargs="+", default=["paper", "window32+pool7"], help=", ".join([SHIPPED, *SCORINGS])
    )
    parser.add_argument(
        "--schedules",
        nargs="*",
        default=["default", "balanced", "aggressive"],
        help="preset names or 'fraction:keep,...' (cut positions as shares of the depth); none: only --configs",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="saved configs (`lazyllm calibrate --out`) to measure too, each named after its file",
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        metavar="N",
        help="every answer exactly N tokens, end-of-sequence suppressed (judges decoding on long generations); "
        "default: each task's cap (12 tokens, 40 for the list task), stopping at end-of-sequence",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the model's dtype, patched and unpatched alike (bfloat16: ~2x faster on CPUs with avx512_bf16)",
    )
    parser.add_argument("--quick", action="store_true", help="2k prompts, 2 per task, 2 candidates: a few minutes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier.jsonl"))
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.n, args.scorings, args.schedules = [2048], 2, ["paper", "window32+pool7"], ["aggressive"]
    if not (args.schedules or args.configs):
        parser.error("nothing to measure: name --schedules, --configs or both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = lazyllm.models.load_model(args.model, dtype=getattr(torch, args.dtype))
    num_layers = model.config.num_hidden_layers
    candidates = [candidate(s, q, num_layers) for q in args.schedules for s in args.scorings]
    candidates += [saved_candidate(path, model) for path in args.configs]
    records = Records(args.out)
    seed = SPLIT_SEEDS[args.split]
    where = dict(
        kind="fidelity",
        model=args.model,
        dtype=args.dtype,
        split=args.split,
        seed=seed,
        n=args.n,
        machine=machine_info(str(model.device)),
        command=" ".join(["python -m lazybench frontier", *(argv if argv is not None else sys.argv[1:])]),
    )
    check_same_prompts(records, where, args.lengths)
    start = time.perf_counter()
    for length in args.lengths:
        for index, sample in prompts(tokenizer, args.tasks, length, args.n, seed):
            where_sample = dict(where, sample=index)
            added = run_prompt(model, tokenizer, sample, where_sample, candidates, records, args.answer_tokens)
            if added:
                print(
                    f"[{time.perf_counter() - start:7.0f}s] {length} {sample.task} #{index}: {added} records",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
