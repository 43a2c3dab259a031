import argparse

import pytest

from transforms.argtypes import whole_number


@pytest.mark.parametrize(("minimum", "text", "value"), [(0, "0", 0), (1, "12", 12)])
def test_whole_numbers_at_or_above_the_minimum_pass(minimum, text, value):
    assert whole_number(minimum)(text) == value


@pytest.mark.parametrize(("minimum", "text", "message"), [
    (0, "-1", "must be 0 or more, got -1"),
    (1, "0", "must be 1 or more, got 0"),
    (1, "2.5", "must be a whole number, got '2.5'"),
])
def test_other_values_are_refused_with_the_rule(minimum, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        whole_number(minimum)(text)
