"""`lazyllm.fidelity`: whole-answer agreement and the Wilson interval `lazyllm.calibrate` judges by."""

import pytest

from lazyllm.fidelity import answers_agree, prompts_needed, wilson_interval


def test_answers_agree_on_whole_answers_only():
    assert answers_agree(" 1234567\n", "1234567")
    assert answers_agree("The  answer is\tParis", "The answer is Paris")
    assert not answers_agree(" 1234567", " 1234568"), "one wrong digit late in the answer is a different answer"
    assert not answers_agree("Paris", "Paris, France")


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(20, 24)
    assert low == pytest.approx(0.6415, abs=1e-4) and high == pytest.approx(0.9332, abs=1e-4)
    assert wilson_interval(24, 24)[1] == 1.0 and wilson_interval(0, 24)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_prompts_needed_is_the_smallest_n_whose_bound_reaches_the_target():
    n = prompts_needed(0.9)
    assert wilson_interval(n, n)[0] >= 0.9 > wilson_interval(n - 1, n - 1)[0]
    with pytest.raises(ValueError, match="min_agreement"):
        prompts_needed(1.0)
