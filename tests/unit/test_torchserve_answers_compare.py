"""The parity tests' comparison of computed bodies (tests/support/torchserve_answers.py):
equal bytes pass, a float rounded otherwise in its last bits passes, anything else fails."""

from __future__ import annotations

import pytest

from tests.support.torchserve_answers import assert_same_computed_body

RECORDED = b'{\n  "negative": 0.7109494805335999,\n  "positive": 0.28905048966407776\n}'


def test_the_same_bytes_pass():
    assert_same_computed_body(RECORDED, RECORDED)


def test_a_float_rounded_otherwise_passes():
    assert_same_computed_body(
        b'{\n  "negative": 0.7109494805336001,\n  "positive": 0.28905048966407770\n}', RECORDED)


@pytest.mark.parametrize("ours", [
    b'{\n  "negative": 0.72,\n  "positive": 0.28905048966407776\n}',  # a different number
    b'{\n  "positive": 0.28905048966407776,\n  "negative": 0.7109494805335999\n}',  # order
    b'{\n  "negative": 0.7109494805335999\n}',  # a key missing
    b'[0.7109494805335999, 0.28905048966407776]',  # another shape
    b'not json',
])
def test_anything_else_fails(ours):
    with pytest.raises(AssertionError):
        assert_same_computed_body(ours, RECORDED)
