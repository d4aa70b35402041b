"""How close a pruned model's answers stay to the unpruned model's: whole-answer agreement and its Wilson interval.

Fidelity is judged on whole greedy answers against the unpruned model's answer to the same prompt (the reference),
never on the first token alone: the first answer token is often a space, and a lost needle shows only later.
"""

from __future__ import annotations

import math

from lazyllm.errors import ConfigError


def normalize(answer: str) -> str:
    """The answer with surrounding whitespace removed and inner runs of whitespace collapsed."""
    return " ".join(answer.split())


def answers_agree(answer: str, reference: str) -> bool:
    """Whether two whole answers are the same text (whitespace aside)."""
    return normalize(answer) == normalize(reference)


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
        raise ConfigError(f"min_agreement must lie in (0, 1), got {min_agreement!r}: use a share such as 0.9.")
    n = 1
    while wilson_interval(n, n, z)[0] < min_agreement:
        n += 1
    return n
