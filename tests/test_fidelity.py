"""Whole-answer fidelity helpers: agreement, token F1 and the intervals every reported cell carries."""

import pytest

from lazyllm.fidelity import answers_agree, bootstrap_interval, prompts_needed, token_f1, wilson_interval


def test_answers_agree_on_whole_answers_only():
    assert answers_agree(" 1234567\n", "1234567")
    assert answers_agree("The  answer is\tParis", "The answer is Paris")
    assert not answers_agree(" 1234567", " 1234568"), "one wrong digit late in the answer is a different answer"
    assert not answers_agree("Paris", "Paris, France")


def test_token_f1():
    assert token_f1("Paris", "paris") == 1.0
    assert token_f1("1, 2, 3", "3 2 1 4") == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "Paris") == 0.0


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


def test_bootstrap_interval_brackets_the_mean():
    values = [0.0, 1.0] * 20
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high and 0.25 < low and high < 0.75
    assert bootstrap_interval([0.3]) == (0.3, 0.3)
