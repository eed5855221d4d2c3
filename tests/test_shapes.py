"""The shape explanations users see, for the mistakes they make."""

import pytest

from runtime.errors import ShapeError
from runtime.shapes import check_shape, shape_problem


@pytest.mark.parametrize("got, expected, says", [
    ((1000, 24), (None, 24, 1),
     "expected (samples, timesteps, features) = (n, 24, 1), got (1000, 24) — add a features "
     "axis: x.reshape(1000, 24, 1)"),
    ((24, 3), (None, 24, 3), "add a samples axis for a single one: x.reshape(1, 24, 3)"),
    ((1000, 3), (None, 24, 3), "these are single samples, not windows: make windows of 24"),
    ((1000, 3, 24), (None, 24, 3), "the last two axes look swapped: x.transpose(0, 2, 1)"),
    ((1000, 24, 2), (None, 24, 3), "the model reads 3 features (a, b, c) per timestep, got 2"),
    ((1000, 12, 3), (None, 24, 3), "the model reads windows of 24 timesteps, got 12"),
    ((1000, 24), (None, 24, 3), "the features axis is missing: the model reads 3 features"),
    ((2,), (3,), "expected (features,) = (3,), got (2,) — the model reads 3 features"),
    ((1, 3), (3,), "x has 1 axis too many"),
    ((5, 2), (None, 3), "expected (samples, features) = (n, 3), got (5, 2)"),
])
def test_messages_name_the_axes_and_the_fix(got, expected, says):
    message = shape_problem(got, expected, ["a", "b", "c"] if expected[-1] == 3 else None)
    assert says in message


@pytest.mark.parametrize("got, expected", [((7, 24, 3), (None, 24, 3)), ((3,), (3,)),
                                           ((9, 5, 2), (None, None, 2))])
def test_fitting_shapes_pass(got, expected):
    assert shape_problem(got, expected) is None
    check_shape(got, expected)


def test_check_shape_raises_the_projects_error_with_context():
    with pytest.raises(ShapeError, match=r"^sample 3: expected \(features,\)") as info:
        check_shape((4,), (3,), what="sample 3")
    assert isinstance(info.value, ValueError)
