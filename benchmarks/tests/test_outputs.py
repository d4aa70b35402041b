"""The 0.2 redesign changed no output: a few recorded cases of `lazybench.outputs` answer as they did before it."""

import json
from pathlib import Path

import pytest

from lazybench import outputs

RECORDS = Path(__file__).resolve().parents[1] / "results" / "outputs-before.jsonl"
# Cheap cases (2k prompts): the default, the paper's decoding policy with three cuts, and two cuts.
CASES = [
    ("default", dict(task="niah_single", length=2048, index=0, seed=5)),
    ("aggressive+paper_policy", dict(task="niah_multikey", length=2048, index=1, seed=5)),
    ("balanced", dict(task="qa_squad", length=2048, index=0, seed=5)),
]


@pytest.mark.real_model
def test_recorded_answers_and_stats_are_unchanged():
    keys = {(name, json.dumps(where, sort_keys=True)) for name, where in CASES}
    assert outputs.check(RECORDS, keys=keys) == []
