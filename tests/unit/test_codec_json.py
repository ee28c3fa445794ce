"""The worker's JSON answers: `dumps_indented` writes exactly what `json.dumps(value, indent=2)`
writes (TorchServe's format), whichever path it takes."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zerobatch.worker.codec import dumps_indented

numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8))
keys = st.text(alphabet=st.sampled_from(list('ab ,:"\\\n\u00e9')), max_size=6)
shapes = st.one_of(
    st.lists(numbers, max_size=12),
    st.lists(st.lists(numbers, max_size=5), max_size=5),
    st.dictionaries(keys, numbers, max_size=6),
    st.lists(scalars, max_size=6),
    st.dictionaries(keys, st.lists(numbers, max_size=3), max_size=4),
    st.lists(st.dictionaries(keys, numbers, max_size=3), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(shapes)
def test_same_text_as_json_dumps_with_indent_2(value):
    assert dumps_indented(value) == json.dumps(value, indent=2)


def test_the_shapes_a_classifier_answers():
    scores = [0.1234567891234567, 1e-30, 3, -0.5, float("inf")]
    for value in (scores, tuple(scores), [scores, scores[:2]], {"cat": 0.75, "dog": 2},
                  [], {}, [[]], [1, True], {"a, b": 1}, {"n": None}):
        assert dumps_indented(value) == json.dumps(value, indent=2), value


def test_numpy_values_take_the_general_path():
    assert dumps_indented([np.float32(0.5), 1]) == json.dumps([0.5, 1], indent=2)
    assert dumps_indented(np.arange(3)) == json.dumps([0, 1, 2], indent=2)
