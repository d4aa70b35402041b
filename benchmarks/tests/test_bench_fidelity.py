"""The rig's fidelity measures (`lazybench.fidelity`): token F1 and the bootstrap interval of a mean."""

import pytest

from lazybench.fidelity import bootstrap_interval, token_f1


def test_token_f1():
    assert token_f1("Paris", "paris") == 1.0
    assert token_f1("1, 2, 3", "3 2 1 4") == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "Paris") == 0.0


def test_bootstrap_interval_brackets_the_mean():
    values = [0.0, 1.0] * 20
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high and 0.25 < low and high < 0.75
    assert bootstrap_interval([0.3]) == (0.3, 0.3)
