"""How close a pruned model's answers stay to the unpruned model's: whole-answer agreement, token F1, intervals.

Fidelity is judged on whole greedy answers against the unpruned model's answer to the same prompt (the reference),
never on the first token alone: the first answer token is often a space, and a lost needle shows only later.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def normalize(answer: str) -> str:
    """The answer with surrounding whitespace removed and inner runs of whitespace collapsed."""
    return " ".join(answer.split())


def answers_agree(answer: str, reference: str) -> bool:
    """Whether two whole answers are the same text (whitespace aside)."""
    return normalize(answer) == normalize(reference)


def token_f1(answer: str, reference: str) -> float:
    """F1 of the lower-cased word tokens of `answer` against `reference` (1.0 when both are empty)."""
    predicted, expected = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` (95% for z = 1.96); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def prompts_needed(min_agreement: float, z: float = 1.96) -> int:
    """Fewest prompts whose Wilson lower bound can reach `min_agreement` (when every answer agrees)."""
    if not 0.0 < min_agreement < 1.0:
        raise ValueError(f"min_agreement must lie in (0, 1), got {min_agreement}.")
    n = 1
    while wilson_interval(n, n, z)[0] < min_agreement:
        n += 1
    return n


def bootstrap_interval(
    values: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (the value itself when there is one or none)."""
    if len(values) < 2:
        value = values[0] if values else float("nan")
        return value, value
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]
