"""Sections 2 and 3 of a run: greedy answers on the RULER-style tasks under the baseline and each schedule.

Per sample, the baseline answers first, then every schedule (interleaved per sample, so drifts of the machine hit
all alike). One record per (sample, schedule): the answer and its score, whether it is the baseline's whole answer
(fidelity needs no gold), wall times and the pruning stats. The tables (accuracy cells,
fidelity, the paper's Table 2) are computed from these records by `lazybench.summary`.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from lazybench import timing
from lazybench.budget import Configs, Plan
from lazybench.profiles import BASELINE, Profile, apply, last_stats, length_label
from lazybench.prompts import make_samples
from lazybench.tasks import Sample, chat_prompt, score
from lazyllm.fidelity import answers_agree
from lazyllm.generation import encode, model_inputs


def answer(
    model: torch.nn.Module, tokenizer: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int, device: str
) -> tuple[str, timing.GenerationTiming]:
    """The whole greedy answer and the timing of one `generate()` call."""
    result = timing.timed_generate(model, inputs, max_new_tokens, device)
    new_ids = result.output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_ids, skip_special_tokens=True), result


def stats_fields(stats: dict[str, Any] | None, new_tokens: int) -> dict[str, Any]:
    """The pruning figures of an accuracy record; the unpruned values for the baseline (no stats)."""
    if stats is None:
        return {
            "pruned": False,
            "prefill_token_fraction": 1.0,
            "prompt_token_fraction_total": 1.0,
            "revived_tokens": 0,
            "decode_steps": new_tokens - 1,
            "recomputed_token_layers": 0,
        }
    keys = (
        "prefill_token_fraction",
        "prompt_token_fraction_total",
        "revived_tokens",
        "decode_steps",
        "recomputed_token_layers",
    )
    return {"pruned": bool(stats["pruned"]), **{key: stats[key] for key in keys}}


def run_sample(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: Configs,
    sample: Sample,
    schedules: tuple[str, ...],
    max_new_tokens: int,
    device: str,
) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of one sample under the baseline and `schedules`, and its token ids (for kvpress)."""
    inputs = model_inputs(encode(tokenizer, chat_prompt(tokenizer, sample, answer_prefix=True)), device)
    tokens = int(inputs["input_ids"].shape[1])
    records = []
    for name in (BASELINE, *schedules):
        apply(model, configs[name])
        text, result = answer(model, tokenizer, inputs, max_new_tokens, device)
        if name == BASELINE:
            reference_answer = text
        records.append(
            {
                "task": sample.task,
                "length": sample.length,
                "label": length_label(sample.length),
                "depth": sample.depth,
                "prompt_tokens": tokens,
                "schedule": name,
                "answer": text,
                "gold": list(sample.answers),
                "score": score(text, sample),
                "answer_agree": answers_agree(text, reference_answer),
                "ttft_s": result.ttft_s,
                "total_s": result.total_s,
                "new_tokens": result.new_tokens,
                **stats_fields(last_stats(model), result.new_tokens),
            }
        )
    return records, inputs["input_ids"][0].tolist()


def measure_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    configs: Configs,
    profile: Profile,
    plan: Plan,
    device: str,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Accuracy records of every sample of `plan`, and the encoded samples by id (for kvpress)."""
    samples = make_samples(profile, plan, tokenizer, seed)
    records: list[dict[str, Any]] = []
    encoded: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=sum(1 + len(schedules) for _, schedules in samples), desc="accuracy", unit="gen")
    counters: dict[tuple[str, int], int] = {}
    for sample, schedules in samples:
        index = counters[sample.task, sample.length] = counters.get((sample.task, sample.length), -1) + 1
        sample_id = f"{sample.task}/{length_label(sample.length)}/{index}"
        rows, ids = run_sample(model, tokenizer, configs, sample, schedules, profile.max_new_tokens, device)
        records.extend({"id": sample_id, **row} for row in rows)
        encoded[sample_id] = {"sample": sample, "input_ids": ids}
        bar.update(len(rows))
        tqdm.write(f"accuracy {sample_id}: baseline {rows[0]['score']:.2f} {rows[0]['answer'][:40]!r}")
    bar.close()
    apply(model, None)
    return records, encoded
