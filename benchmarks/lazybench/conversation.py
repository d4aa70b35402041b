"""Two-question conversations on one cache: each turn's whole answer and TTFT, patched against unpatched.

A patched model continuing a conversation on its cache revives every parked token, then computes the new turn's
tokens in every layer, unpruned (docs/DECISIONS.md, section 10; issue 21). This measures what that does to the second
answer and to each turn's time to first token (TTFT: generate() call to the first token's logits), on SmolLM2.

Conversations: a --length-token document and two questions from the rig's RULER-style tasks (split seed 6, which no
other record uses), tasks taking turns: niah_multikey asks one needle's number, then another needle's of the same
haystack (`niah.niah_follow_up`); qa_squad asks a SQuAD question, then another whose gold paragraph also stands whole
in the document (`qa.qa_follow_up`). Sample k's depth depends on k only: a larger --n keeps the earlier ones.
Turn 1: the chat template of the user message (document + question 1) with the generation prompt. Turn 2 continues on
the SAME cache object turn 1's generate() returned (it holds all but the last generated token) with the ids so far:
turn 1's prompt and answer ids as generated, then what the template renders after the answer for [user 1, assistant
1, user 2] with the generation prompt, tokenized (a generated end-of-sequence token stands for the template's end of
turn). Records say whether the template renders turn 1 the same (`same_turn1_text`) and the whole conversation
tokenizes to these ids (`same_ids`).

Greedy answers of at most --max-new-tokens, stopping at end-of-sequence. Each conversation runs unpatched, then
patched (--schedule, pruning at every length), after an unrecorded warm-up conversation. A JSON line per conversation
goes to --out (those already there are skipped): both turns' answers, TTFT, agreement with the unpatched answers
(whole answer, token F1), task scores, lazyllm's stats after each turn, machine, command. The tables (from the records
alone, also to --out's .md) give turn-2 agreement over all and over those whose turn 1 agreed (else texts differ).

    python -m lazybench conversation --threads 2          # 24 conversations of 4k tokens, ~10 min on 2 CPU cores
    python -m lazybench conversation --report benchmarks/results/conversation.jsonl   # the tables from records only
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

import lazyllm
import lazyllm.models
from lazybench.decode import POLICIES
from lazybench.fidelity import token_f1
from lazybench.frontier import Records
from lazybench.machine import machine_info
from lazybench.niah import niah_follow_up
from lazybench.qa import qa_follow_up
from lazybench.report import table
from lazybench.sample import sample_rng
from lazybench.tasks import Sample, build_samples, score
from lazybench.timing import StepClock, ratio_summary, summarize, synchronize
from lazyllm.compat import GENERATE_CACHE_KWARG
from lazyllm.fidelity import answers_agree, wilson_interval
from lazyllm.generation import encode, greedy, has_chat_template

SEED = 6  # the conversation split's seed: no other record uses it
# The tasks and their second questions (qa_hotpot: another question with both gold paragraphs in one document is rare).
FollowUp = Callable[[Sample, random.Random], Sample]
FOLLOW_UPS: dict[str, FollowUp] = {"niah_multikey": niah_follow_up, "qa_squad": qa_follow_up}
# lazyllm's stats recorded after each turn (LazyStats.as_dict()).
STAT_FIELDS = tuple(
    "pruned fallback_reason prompt_tokens prefill_token_fraction decode_steps turn_tokens revived_tokens "
    "aux_cache_tokens recomputed_token_layers".split()
)
_ANSWER = "\ue000lazybench-answer\ue000"  # stands for turn 1's answer when the template renders turn 2
_DICT = {"return_dict_in_generate": True}  # generate() returns its cache too
Record = dict[str, Any]
RUNS = ("baseline", "patched")  # the unpatched model's run of a conversation, then the patched model's


class Conversations(Records):
    """The JSON-lines file of conversation records: what is done (by key), appending as results come."""

    KEY = ("model", "seed", "task", "length", "sample", "max_new_tokens", "schedule")


def depth(k: int) -> float:
    """Depth of sample k's first needle / gold paragraph: a low-discrepancy sequence over 0.05..0.95 (k only)."""
    return round(0.05 + 0.9 * ((0.5 + k * 0.6180339887) % 1.0), 4)


def conversations(tokenizer: Any, tasks: Sequence[str], length: int, n: int) -> list[tuple[int, Sample, Sample]]:
    """`n` conversations (sample number, first question's sample, second question's), tasks taking turns."""
    per_task = -(-n // len(tasks))
    firsts = {t: build_samples(t, tokenizer, length, [depth(k) for k in range(per_task)], seed=SEED) for t in tasks}
    out = []
    for i in range(n):
        task, k = tasks[i % len(tasks)], i // len(tasks)
        first = firsts[task][k]
        out.append((k, first, FOLLOW_UPS[task](first, sample_rng("conversation", task, SEED, k))))
    return out


def next_turn_ids(
    tokenizer: Any, first_ids: torch.Tensor, answer_ids: torch.Tensor, ended: bool, user1: str, user2: str
) -> tuple[torch.Tensor, dict[str, bool]]:
    """`(1, N)` ids of the conversation so far and the second question, ready for its answer: turn 1's prompt and
    answer ids as the cache holds them, then the template's text after the answer, tokenized; and the checks.
    `ended`: the answer ends with an end-of-sequence token (which then stands for the template's end of turn)."""
    messages = [{"role": r, "content": c} for r, c in (("user", user1), ("assistant", _ANSWER), ("user", user2))]
    rendered = str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    head, tail = rendered.split(_ANSWER)
    end_text = tokenizer.decode(answer_ids[-1:]) if ended else ""
    if end_text and tail.startswith(end_text):  # the generated end-of-turn token is the template's own
        tail = tail[len(end_text) :]
    rest = tokenizer(tail, add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([first_ids, answer_ids[None].to(first_ids.device), rest.to(first_ids.device)], dim=1)
    messages[1]["content"] = tokenizer.decode(answer_ids, skip_special_tokens=True)
    whole = encode(tokenizer, messages)
    turn1_text = str(tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False))
    return ids, {"same_turn1_text": head == turn1_text, "same_ids": torch.equal(whole, ids.cpu())}


def timed_turn(model: Any, tokenizer: Any, ids: torch.Tensor, cache: Any, max_new: int) -> tuple[Record, torch.Tensor]:
    """One greedy turn continuing `cache` (which it extends): the answer, its TTFT, and its ids."""
    clock = StepClock(model.device)
    cached = cache.get_seq_length()
    ids = ids.to(model.device)
    synchronize(model.device)
    start = time.perf_counter()
    output = greedy(model, ids, None, max_new, logits_processor=[clock], **{GENERATE_CACHE_KWARG: cache}, **_DICT)
    assert getattr(output, GENERATE_CACHE_KWARG) is cache, "generate() continues the cache object it is given"
    new = output.sequences[0, ids.shape[1] :].cpu()
    answer = tokenizer.decode(new, skip_special_tokens=True)
    figures = dict(input_tokens=int(ids.shape[1]), cached_tokens=int(cached), new_tokens=int(new.shape[0]))
    return dict(answer=answer, **figures, ttft_s=round(clock.stamps[0] - start, 4)), new


def stats_after(model: Any) -> Record | None:
    """Some of lazyllm's stats of the model's last calls (None unpatched)."""
    if not lazyllm.is_patched(model):
        return None
    figures = lazyllm.stats(model).as_dict()
    return {k: round(figures[k], 4) if isinstance(figures[k], float) else figures[k] for k in STAT_FIELDS}


def converse(model: Any, tokenizer: Any, first: Sample, second: Sample, max_new: int) -> Record:
    """Both turns of one conversation on one cache: answers, TTFT, task scores, stats after each turn."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    first_ids = encode(tokenizer, [{"role": "user", "content": first.prompt}])
    cache = DynamicCache(config=model.config)
    one, answer_ids = timed_turn(model, tokenizer, first_ids, cache, max_new)
    one.update(correct=score(one["answer"], first), stats=stats_after(model))
    if one["stats"] is not None and not one["stats"]["pruned"]:
        raise RuntimeError(f"turn 1 did not prune: {one['stats']['fallback_reason']}")
    ended = answer_ids.numel() > 0 and int(answer_ids[-1]) in eos_ids
    ids, checks = next_turn_ids(tokenizer, first_ids, answer_ids, ended, first.prompt, second.prompt)
    two, _ = timed_turn(model, tokenizer, ids, cache, max_new)
    two.update(correct=score(two["answer"], second), stats=stats_after(model))
    return {"turn1": one, "turn2": two, **checks}


def compared(baseline: Record, patched: Record) -> Record:
    """Each turn's whole-answer agreement and token F1 of the patched answer against the unpatched one."""
    pairs = {turn: (patched[turn]["answer"], baseline[turn]["answer"]) for turn in ("turn1", "turn2")}
    agree = {f"{turn}_agree": answers_agree(*pair) for turn, pair in pairs.items()}
    return {**agree, **{f"{turn}_f1": round(token_f1(*pair), 4) for turn, pair in pairs.items()}}


def interval(hits: Sequence[bool]) -> str:
    """'k/n (low–high%)': a share with its Wilson 95% interval ('–' when empty)."""
    k, n = sum(hits), len(hits)
    low, high = wilson_interval(k, n)
    return f"{k}/{n} ({100 * low:.0f}–{100 * high:.0f}%)" if n else "–"


def ttft(records: Sequence[Record], turn: str) -> tuple[str, str]:
    """A turn's median TTFT 'unpatched / patched' (s) and per-conversation ratio patched / unpatched 'median [q1–q3]'."""
    base = [r["baseline"][turn]["ttft_s"] for r in records]
    lazy = [r["patched"][turn]["ttft_s"] for r in records]
    ratio = ratio_summary(lazy, base)
    medians = f"{summarize(base)['median']:.3f} / {summarize(lazy)['median']:.3f}"
    return medians, f"{ratio['median']:.2f} [{ratio['q1']:.2f}–{ratio['q3']:.2f}]"


def table_rows(name: str, rows: Sequence[Record]) -> tuple[list[Any], list[Any]]:
    """One group's row of the agreement table and of the TTFT table."""
    n = max(len(rows), 1)
    f1 = sum(r["turn2_f1"] for r in rows) / n
    correct = [sum(r[run]["turn2"]["correct"] for r in rows) / n for run in RUNS]
    parked = max((r["patched"]["turn2"]["stats"]["aux_cache_tokens"] for r in rows), default=0)
    agree = [interval([r[f"{turn}_agree"] for r in rows]) for turn in ("turn1", "turn2")]
    agree.append(interval([r["turn2_agree"] for r in rows if r["turn1_agree"]]))
    agreement = [name, len(rows), *agree, f"{f1:.3f}", f"{correct[0]:.2f} / {correct[1]:.2f}", parked]
    (medians1, ratio1), (medians2, ratio2) = ttft(rows, "turn1"), ttft(rows, "turn2")
    return agreement, [name, len(rows), medians1, medians2, ratio1, ratio2]


def render(records: Sequence[Record]) -> str:
    """The markdown tables of conversation records, a section per schedule (and policy)."""
    names = dict.fromkeys(r["schedule"] for r in records)
    return "\n".join(section([r for r in records if r["schedule"] == name]) for name in names) or "No records.\n"


def section(records: Sequence[Record]) -> str:
    """One schedule's tables (agreement and task scores; TTFT), per task and over all."""
    groups = {t: [r for r in records if r["task"] == t] for t in dict.fromkeys(r["task"] for r in records)}
    rows = [table_rows(name, group) for name, group in {**groups, "all": list(records)}.items()]
    agreement_head = ["task", "n", "turn 1 agree", "turn 2 agree", "turn 2 agree (turn 1 agreed)", "turn 2 F1"]
    agreement_head += ["turn 2 correct unpatched / patched", "parked after turn 2"]
    speed_head = ["task", "n", "turn 1 TTFT s unpatched / patched", "turn 2 TTFT s unpatched / patched"]
    speed_head += ["turn 1 TTFT patched/unpatched", "turn 2 TTFT patched/unpatched"]
    lines = [f"## Two-question conversations on one cache: {records[0]['schedule']}", "", *setup_lines(records), ""]
    lines += table(agreement_head, [a for a, _ in rows]) + [""] + table(speed_head, [s for _, s in rows])
    lines += [
        "",
        "Agree: whole answers equal to the unpatched model's (whitespace aside), k/n with the Wilson 95% interval; "
        "F1: token F1 against the unpatched answer; correct: task score of the second question. TTFT: medians; "
        "ratios per conversation, median [quartiles].",
    ]
    return "\n".join(lines) + "\n"


def setup_lines(records: Sequence[Record]) -> list[str]:
    """What the records were made with: model, lengths, schedule, machine, command, prefill fraction, checks."""
    last = records[-1]
    fraction = summarize([r["patched"]["turn1"]["stats"]["prefill_token_fraction"] for r in records])["median"]
    turn_tokens = summarize([r["patched"]["turn2"]["stats"]["turn_tokens"] for r in records])["median"]
    parked = summarize([r["patched"]["turn1"]["stats"]["aux_cache_tokens"] for r in records])["median"]
    machine = last["machine"]

    def checks(name: str) -> str:
        return f"{sum(r[run][name] for r in records for run in RUNS)}/{2 * len(records)}"

    return [
        f"Model {last['model']}, documents of {sorted({r['length'] for r in records})} tokens, split seed "
        f"{last['seed']}, answers of at most {last['max_new_tokens']} tokens, schedule {last['schedule']} "
        f"({last['config_text']}); median turn-1 prefill token fraction {fraction:.3f}, median turn-2 tokens "
        f"{turn_tokens:.0f}, median tokens parked after turn 1 {parked:.0f}. Machine: {machine['cpu']}, {machine['torch_threads']} threads, {machine['device']}, "
        f"lazyllm {machine['lazyllm']}, torch {machine['torch']}, transformers {machine['transformers']}.",
        f"Template checks (turn 2 of both runs): turn 1 rendered the same in {checks('same_turn1_text')}, the whole "
        f"conversation tokenized to the same ids in {checks('same_ids')}. Command: `{last['command']}`.",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lazybench conversation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a chat model lazyllm.models.load_model accepts")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    parser.add_argument("--length", type=int, default=4096, help="document tokens (turn 1 prompt, templated)")
    parser.add_argument("--n", type=int, default=24, help="conversations, tasks taking turns")
    parser.add_argument("--tasks", nargs="+", default=list(FOLLOW_UPS), choices=list(FOLLOW_UPS))
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer cap of each turn")
    parser.add_argument("--schedule", default="default", choices=list(lazyllm.PRESETS))
    parser.add_argument("--policy", choices=list(POLICIES), help="a decoding policy instead of the library's default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conversation.jsonl"))
    parser.add_argument("--report", type=Path, metavar="RESULTS.jsonl", help="measure nothing: print its tables")
    args = parser.parse_args(argv)
    args.name = args.schedule + (f"+{args.policy}" if args.policy else "")  # records' "schedule"
    args.command = shlex.join(["python", "-m", "lazybench.conversation", *(sys.argv[1:] if argv is None else argv)])
    return args


def measure(model: Any, tokenizer: Any, config: lazyllm.LazyConfig, args: argparse.Namespace) -> Conversations:
    """Every conversation not yet in `args.out`, unpatched then patched, after one unrecorded warm-up conversation."""
    records = Conversations(args.out)
    where = dict(kind="conversation", model=args.model, seed=SEED, length=args.length)
    where.update(max_new_tokens=args.max_new_tokens, schedule=args.name, config_text=config.describe())
    where.update(config=dataclasses.asdict(config), machine=machine_info(args.device), command=args.command)
    todo = [
        (dict(where, task=first.task, sample=k, depth=first.depth, depth_2=second.depth), first, second)
        for k, first, second in conversations(tokenizer, args.tasks, args.length, args.n)
        if records.key(dict(where, task=first.task, sample=k)) not in records.done
    ]
    start = time.perf_counter()
    for index, (place, first, second) in enumerate(todo[:1] + todo):  # the first run is the warm-up
        baseline = converse(model, tokenizer, first, second, args.max_new_tokens)
        with lazyllm.patched(model, config):
            patched = converse(model, tokenizer, first, second, args.max_new_tokens)
        if index == 0:
            continue
        judged = compared(baseline, patched)
        question = {"question_2": second.prompt, "gold_1": first.answers, "gold_2": second.answers}
        records.add(dict(place, **question, baseline=baseline, patched=patched, **judged))
        agree = "".join("=" if judged[f"{turn}_agree"] else "x" for turn in ("turn1", "turn2"))
        print(f"[{time.perf_counter() - start:6.0f}s] {first.task} #{place['sample']}: agree {agree}", flush=True)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(render(list(Conversations(args.report).done.values())), end="")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = lazyllm.models.load_model(args.model, dtype=torch.float32)
    model.to(args.device)
    if not has_chat_template(tokenizer):
        raise SystemExit(f"{args.model} has no chat template: conversations need a chat model")
    options = POLICIES[args.policy] if args.policy else {}
    config = lazyllm.LazyConfig.preset(args.schedule, model.config.num_hidden_layers, min_prompt_tokens=0, **options)
    records = measure(model, tokenizer, config, args)
    text = render(list(records.done.values()))
    args.out.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0
