"""The rig's measures beyond whole-answer agreement: token F1 of an answer, and bootstrap intervals of a mean.

Whole-answer agreement and Wilson intervals are the library's (`lazyllm.fidelity`): `lazyllm.calibrate` judges by
them.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


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
