"""One benchmark prompt (`Sample`), the RNG that draws it, the text fed to the model for it, and RULER's scoring of an
answer."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from lazyllm.documents import templated

_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


@dataclass(frozen=True)
class Sample:
    """One benchmark prompt.

    Attributes:
        task: one of :data:`TASKS`.
        length: target prompt length in tokens (after chat templating); the
            prompt never exceeds it.
        depth: requested relative position (0 = start, 1 = end) of the
            queried needle / gold paragraph(s) inside the context.
        prompt: the user message text, before chat templating.
        answers: reference strings for :func:`score`.
        metric: ``"all"`` (RULER ``string_match_all``, niah) or ``"part"``
            (RULER ``string_match_part``, qa).
        answer_prefix: RULER's answer prefix (e.g. ``" Answer:"``); RULER
            appends it after the model's chat template so the reply starts
            there.  Optional: see ``chat_prompt(..., answer_prefix=True)``.
        evidence: the text(s) in ``prompt`` that hold the answer: the queried
            needle sentence (niah) or the gold paragraph(s) (qa), e.g. to
            check which of their tokens a pruning method kept.
    """

    task: str
    length: int
    depth: float
    prompt: str
    answers: tuple[str, ...]
    metric: str
    answer_prefix: str = ""
    evidence: tuple[str, ...] = ()


def sample_rng(*parts: object) -> random.Random:
    """A private RNG seeded from a string made of `parts` (stable across runs and platforms), e.g. `(task, seed,
    index)`."""
    return random.Random("|".join(str(p) for p in parts))


def chat_prompt(tokenizer: Any, sample_or_text: Sample | str, *, answer_prefix: bool = False) -> str:
    """Return the text to feed the model for a sample (or a raw user message).

    Applies ``tokenizer.apply_chat_template`` with a single user turn,
    ``add_generation_prompt=True`` and ``tokenize=False``; a tokenizer without
    a chat template gets the raw text.  With ``answer_prefix=True`` (samples
    only) RULER's answer prefix is appended after the generation prompt, as
    RULER does for chat models, e.g. ``"...<|im_start|>assistant\\nAnswer:"``.
    """
    if isinstance(sample_or_text, Sample):
        return templated(tokenizer, sample_or_text.prompt, sample_or_text.answer_prefix if answer_prefix else "")
    return templated(tokenizer, str(sample_or_text))


def count_prompt_tokens(tokenizer: Any, sample_or_text: Sample | str, *, answer_prefix: bool = False) -> int:
    """Number of tokens of :func:`chat_prompt`'s output (with the tokenizer's default special tokens, as
    `lazyllm.documents.count_tokens` counts)."""
    return len(tokenizer(chat_prompt(tokenizer, sample_or_text, answer_prefix=answer_prefix))["input_ids"])


# --------------------------------------------------------------------------
# Scoring (RULER long_context_eval/eval/synthetic/constants.py + evaluate.py)
# --------------------------------------------------------------------------
def _postprocess_pred(prediction: str | None) -> str:
    """RULER's ``postprocess_pred``: strip, control chars -> newline, strip."""
    if prediction is None:
        return ""
    return _NON_PRINTABLE.sub("\n", prediction.strip()).strip()


def score(prediction: str, sample: Sample) -> float:
    """RULER's per-sample substring match, scaled to 0..1 instead of 0..100.

    ``metric == "all"`` (``string_match_all``): fraction of the reference
    answers that occur (case-insensitively) in the prediction.
    ``metric == "part"`` (``string_match_part``): 1.0 if any reference occurs.
    """
    if not sample.answers:
        raise ValueError("sample has no reference answers")
    pred = _postprocess_pred(prediction).lower()
    hits = [1.0 if ref.lower() in pred else 0.0 for ref in sample.answers]
    if sample.metric == "all":
        return sum(hits) / len(hits)
    if sample.metric == "part":
        return max(hits)
    raise ValueError(f"unknown metric {sample.metric!r}; expected 'all' or 'part'")
