"""The shape explanations users see, for the mistakes they make."""

import numpy as np
import pytest

import runtime
from runtime.errors import ShapeError
from runtime.shapes import STREAMS, check_shape, shape_problem

from helpers import tiny_onnx


@pytest.mark.parametrize("got, expected, says", [
    ((1000, 24), (None, 24, 1),
     "expected (samples, timesteps, features) = (n, 24, 1), got (1000, 24) — add a features "
     "axis: x.reshape(1000, 24, 1)"),
    ((24, 3), (None, 24, 3), "add a samples axis for a single one: x.reshape(1, 24, 3)"),
    ((1000, 3), (None, 24, 3), "these are readings (one row per time step), not windows: make "
                               "windows of 24 consecutive readings"),
    ((1000, 3, 24), (None, 24, 3), "the last two axes look swapped: x.transpose(0, 2, 1)"),
    ((1000, 24, 2), (None, 24, 3), "the model reads 3 features (a, b, c) per timestep, got 2"),
    ((1000, 12, 3), (None, 24, 3), "the model reads windows of 24 timesteps, got 12"),
    ((1000, 24, 2), (None, 24, 1), "the model reads 1 feature per timestep, got 2"),
    ((1000, 24), (None, 24, 3), "the features axis is missing: the model reads 3 features"),
    ((2,), (3,), "expected (features,) = (3,), got (2,) — the model reads 3 features"),
    ((1, 3), (3,), "x has 1 axis too many"),
    ((5, 2), (None, 3), "expected (readings, features) = (n, 3), got (5, 2)"),
    ((1, 24, 3), (24, 3), "x has 1 axis too many, of size 1: drop it with x.reshape(24, 3)"),
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
    with pytest.raises(ShapeError, match=r"^reading 3: expected \(features,\)") as info:
        check_shape((4,), (3,), what="reading 3")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("got, expected, says", [
    # The tutorials' testX given to stream.feed: windows where readings belong.
    ((44, 3, 1), (None, 1), "these are 44 samples (windows) of 3 timesteps"),
    ((44, 3, 1), (44, 1), "model.predict(X) gives what Keras's model.predict(X) gives"),
    # One window given to stream.step.
    ((3, 1), (1,), "this is a window of 3 readings (timesteps, features), and a step takes one "
                   "reading"),
    ((44, 3, 1), (1,), "these are 44 samples (windows) of 3 timesteps, and a step takes one"),
    # testX without its features axis.
    ((44, 3), (None, 1), "model.predict(X.reshape(44, 3, 1))"),
])
def test_windows_where_readings_belong_point_to_predict(got, expected, says):
    message = shape_problem(got, expected, window=3)
    assert says in message
    # Never a reshape of windows into readings: it runs and gives other numbers than Keras.
    assert "squeeze" not in message and "reshape(-1" not in message
    assert "reshape(132" not in message and "x has" not in message


def test_an_extra_axis_of_one_where_readings_belong_is_still_squeezed():
    # (1, 3) is one reading with an extra axis: dropping it gives the same numbers.
    assert "drop it with x.reshape(3,)" in shape_problem((1, 3), (3,), window=3)


def test_one_window_for_one_stream_is_not_squeezed_into_readings():
    # Model.step([s], testX[:1]): (1, 3, 1) for (1, 1); x.reshape(3, 1) would be three readings.
    message = shape_problem((1, 3, 1), (1, 1), window=3)
    assert "this is 1 sample (window) of 3 timesteps" in message and "reshape" not in message


def test_a_series_given_where_windows_belong_is_not_reshaped_into_them():
    message = shape_problem((5,), (None, 3, 1))
    assert "a series of readings, not windows: make windows of 3" in message
    assert "reshape x to" not in message


@pytest.mark.parametrize("got, expected, says", [
    # Model.step(streams, readings): one reading per stream, in those words.
    ((2, 2), (3, 2), "expected (streams, features) = (3, 2), got (2, 2) — 2 readings for 3 "
                     "streams: give one reading per stream, shape (3, 2), row i the reading of "
                     "streams[i]"),
    ((2,), (3, 1), "2 readings for 3 streams: give one reading per stream, shape (3, 1)"),
    ((2,), (3, 2), "this is one reading, and each of the 3 streams takes one: give shape (3, 2)"),
    ((2,), (1, 2), "add a streams axis for the one stream: x.reshape(1, 2)"),
    ((), (3, 2), "give one reading per stream, shape (3, 2)"),
    ((3,), (3, 1), "add a features axis: x.reshape(3, 1)"),
])
def test_many_streams_messages_count_readings_against_streams(got, expected, says):
    message = shape_problem(got, expected, axes=STREAMS, window=1)
    assert says in message
    assert "(readings, features)" not in message and "samples" not in message


def test_one_number_for_a_reading_of_many_features_says_so():
    """A scalar to a 2-feature step suggested ``x.reshape(1, )``, which is no fix."""
    message = shape_problem((), (2,), ["t", "rh"], window=1)
    assert message == ("expected (features,) = (2,), got () — this is one number, and the "
                       "model reads 2 features (t, rh) per reading: give one value per "
                       "feature, shape (2,)")


def test_a_reading_given_where_a_chunk_belongs_names_the_readings_axis():
    assert "add a readings axis for a single one: x.reshape(1, 2)" in \
        shape_problem((2,), (None, 2), window=1)


def test_the_runtime_raises_these_messages(tmp_path):
    model = runtime.load(tiny_onnx(tmp_path / "m.onnx"), device="cpu")
    with pytest.raises(ShapeError, match=r"got \(\) — this is one number, and the model reads "
                                         r"2 features \(temperature, humidity\)"):
        model.stream().step(3.0)
    streams = [model.stream() for _ in range(3)]
    with pytest.raises(ShapeError, match=r"^readings: expected \(streams, features\) = \(3, 2\), "
                                         r"got \(2, 2\) — 2 readings for 3 streams"):
        model.step(streams, np.zeros((2, 2)))
    assert all(s.steps == 0 for s in streams)


@pytest.mark.parametrize("got, expected, window, says", [
    ((1, 1, 1), (1,), 3, "this is 1 sample (window) of 1 timestep, and a step"),
    ((5, 1, 1), (None, 1), 2, "these are 5 samples (windows) of 1 timestep, shaped"),
    ((1, 1), (1,), None, "x has 1 axis too many"),
    ((1, 3), (None, 1), 3, "these look like 1 window of 3 timesteps"),
])
def test_counts_of_one_read_in_the_singular(got, expected, window, says):
    message = shape_problem(got, expected, window=window)
    assert says in message, message
    assert "1 timesteps" not in message and "1 windows" not in message
