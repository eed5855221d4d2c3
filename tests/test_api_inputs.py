"""What the Python API does with inputs a user gets wrong or a feed gets messy: chunks with
positions that cannot be fed, a gap (NaN) skipped at a position and then resent corrected,
and a saved ``prev`` state whose flag no stream ever carries."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import runtime
from runtime import InputError, SnapshotError
from runtime.contract import StateSpec
from runtime.errors import LstmEdgeError
from runtime.snapshot import Snapshot
from runtime.state import flag_columns, unpack_many

from helpers import WATER_MODEL, tiny_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A sequence model of two features (temperature, humidity)."""
    return runtime.load(tiny_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx"), device="cpu")


@pytest.fixture(scope="module")
def water():
    """The bundled differenced model: its state ``in_x0`` is the previous reading, a flag."""
    return runtime.load(WATER_MODEL, device="cpu")


# ---- feed(readings, at=...) -----------------------------------------------------------

@pytest.mark.parametrize("readings, at, error, says", [
    ([[1.0, 2.0], [3.0]], [1, 2], LstmEdgeError, "every reading needs the same number"),
    ([["a", "b"], ["c", "d"]], [1, 2], InputError, "readings must hold numbers"),
    ([[1.0, 2.0], [3.0, 4.0]], 5, InputError,
     r"feed got 2 readings and one position, at=5; expected 2 positions, one per reading"),
    ([[1.0, 2.0]], 5.0, InputError, r"expected 1 position, one per reading"),
    ([[1.0, 2.0], [3.0, 4.0]], "12", InputError, "expected 2 positions"),
    ([[1.0, 2.0], [3.0, 4.0]], [1], InputError,
     "feed got 2 readings and 1 positions .* expected 2 positions"),
])
def test_feed_with_positions_refuses_what_it_cannot_feed_in_words(model, readings, at, error,
                                                                  says):
    """A ragged list, strings, or one position for a chunk raised numpy's ValueError or
    Python's TypeError from inside; each is now the project's error, one line, the stream
    unchanged."""
    stream = model.stream()
    stream.step([20.0, 50.0], at=0)
    before = stream.to_bytes()
    with pytest.raises(error, match=says) as caught:
        stream.feed(readings, at=at)
    assert "\n" not in str(caught.value)
    assert stream.to_bytes() == before


@pytest.mark.parametrize("reading", ["abc", [1.0, [2.0, 3.0]], {"t": 1.0}])
def test_step_and_order_with_a_position_refuse_what_is_not_a_reading(model, reading):
    stream = model.stream()
    stream.step([20.0, 50.0], at=0)
    for call in (lambda: stream.step(reading, at=1), lambda: stream.order(reading, 0)):
        with pytest.raises(LstmEdgeError):
            call()
    assert stream.steps == 1 and stream.position == 0


# ---- a gap skipped at a position, then resent corrected ---------------------------------

def _reference(model, rows):
    stream = model.stream()
    return np.array([stream.step(r) for r in rows])


def test_a_skipped_gap_leaves_its_position_free_for_the_corrected_resend(model):
    """missing='skip': a reading with a NaN is not fed, so it must not claim its position;
    the corrected reading sent again at that position is fed (it was refused as "already
    fed with other values"), step by step, in a chunk, and within one chunk."""
    good = [[20.0, 50.0], [21.0, 52.0], [22.0, 51.0]]
    expected = _reference(model, good)                      # (3, targets)
    stream = model.stream(missing="skip")
    assert stream.step(good[0], at=1) is not None
    assert stream.step([np.nan, 52.0], at=2) is None
    assert stream.position == 1 and stream.steps == 1
    np.testing.assert_allclose(stream.step(good[1], at=2), expected[1], rtol=1e-6)
    np.testing.assert_allclose(stream.step(good[2], at=3), expected[2], rtol=1e-6)

    chunked = model.stream(missing="skip")
    out = chunked.feed([good[0], [np.nan, 52.0]], at=[1, 2])
    assert np.isnan(out[1]).all() and chunked.position == 1
    np.testing.assert_allclose(chunked.feed(good[1:], at=[2, 3]), expected[1:], rtol=1e-6)

    within = model.stream(missing="skip")
    out = within.feed([good[0], [np.nan, 52.0], good[1], good[2]], at=[1, 2, 2, 3])
    np.testing.assert_allclose(out[[0, 2, 3]], expected, rtol=1e-6)
    assert np.isnan(out[1]).all() and within.position == 3 and within.steps == 3


def test_hold_skips_a_first_gap_and_holds_the_others(model):
    """missing='hold': with nothing fed yet a gap is skipped, its position left free; once a
    reading was fed a gap is fed with the held value, so it claims its position (its replay
    gets its answer again, another reading there is refused, as for any fed reading)."""
    good = [[20.0, 50.0], [21.0, 52.0]]
    expected = _reference(model, [good[0], [20.0, 52.0]])   # the gap holds temperature 20
    stream = model.stream(missing="hold")
    assert stream.step([np.nan, 50.0], at=1) is None and stream.position is None
    np.testing.assert_allclose(stream.step(good[0], at=1), expected[0], rtol=1e-6)
    held = stream.step([np.nan, 52.0], at=2)
    np.testing.assert_allclose(held, expected[1], rtol=1e-6)
    np.testing.assert_allclose(stream.step([np.nan, 52.0], at=2), held)    # a replay
    with pytest.raises(InputError, match="already fed with other values"):
        stream.step(good[1], at=2)
    assert stream.steps == 2

    chunked = model.stream(missing="hold")
    out = chunked.feed([[np.nan, 50.0], good[0], [np.nan, 52.0]], at=[1, 1, 2])
    np.testing.assert_allclose(out[1:], expected, rtol=1e-6)
    assert np.isnan(out[0]).all() and chunked.position == 2 and chunked.steps == 2


# ---- a prev state's flag ----------------------------------------------------------------

def _flagged(water, flag: float) -> Snapshot:
    stream = water.stream()
    stream.feed([[100.5], [100.9]])
    snap = stream.snapshot()
    assert snap.state["in_x0"][-1] == 1.0                   # the previous reading, then its flag
    snap.state["in_x0"][-1] = flag
    return snap


@pytest.mark.parametrize("flag", [0.5, -1.0, 2.0])
def test_a_prev_state_whose_flag_is_not_0_or_1_is_refused_at_restore(water, flag):
    """docs/contract.md: the flag is 0 (fresh) or 1 (a reading was seen), nothing else; a
    graph folded by trainer/fold.py multiplies by it, so 0.5 would give half a difference.
    Every way in refuses it, saying which state and flag: model.stream(state),
    Stream.restore, a state's bytes, and many rows at once (the state database's way)."""
    snap = _flagged(water, flag)
    says = f"state in_x0 holds the flag {flag:g}, expected 0 .* or 1"
    for call in (lambda: water.stream(snap), lambda: water.stream().restore(snap),
                 lambda: water.stream(Snapshot.from_bytes(snap.to_bytes()))):
        with pytest.raises(SnapshotError, match=says) as caught:
            call()
        assert "\n" not in str(caught.value)
    blobs = [_flagged(water, 1.0).to_bytes(), snap.to_bytes()]
    (rows, columns), = unpack_many(blobs)[0]
    restored = water.restore_many(columns)
    assert restored[rows.index(0)] is not None and restored[rows.index(1)] is None


@pytest.mark.parametrize("flag", [0.0, 1.0])
def test_a_prev_state_of_flag_0_or_1_restores(water, flag):
    snap = _flagged(water, flag)
    stream = water.stream(snap)
    assert stream.state["in_x0"][-1] == flag


def test_flag_columns_follow_the_framing_keys():
    """The previous reading's flag is its last column; a seasonal state's flags follow each
    of its m readings (m * (targets + 1) columns); a linear path's changes hold none."""
    specs = (StateSpec.for_layer(0, "lstm", "lstm", 4),
             StateSpec.for_layer(0, "previous reading", "prev", 3),
             StateSpec.for_layer(1, "last season's readings", "prev", 6),
             StateSpec.for_layer(2, "last changes", "prev", 4))

    def fake(**extra):
        names = tuple(n for s in specs for n in s.inputs)
        return SimpleNamespace(info=SimpleNamespace(extra=extra, state=specs),
                               state_inputs=names, units=(4, 4, 3, 6, 4))

    found = flag_columns(fake(difference='"state"', seasonal=json.dumps({"season": 3})))
    assert {k: v.tolist() for k, v in found.items()} == {"in_x0": [2], "in_x1": [1, 3, 5]}
    assert list(flag_columns(fake(difference='"state"'))) == ["in_x0"]
    assert flag_columns(fake()) == {}                       # no framing keys: nothing known
    assert flag_columns(fake(difference="not json")) == {}


def test_the_bundled_models_flag_is_known(water):
    assert {k: v.tolist() for k, v in flag_columns(water).items()} == {"in_x0": [1]}


def test_many_streams_with_positions_a_skipped_gap_claims_no_position(model):
    """Model.step(streams, readings, at=) follows Stream.step: a reading skipped for a gap
    leaves its position free, so the corrected resend is fed; at= must be one per stream."""
    m = model
    streams = [m.stream(missing="skip"), m.stream(missing="skip")]
    alone = [m.stream(), m.stream()]
    gap = np.array([[np.nan] * m.n_features, [3.0] * m.n_features])
    fixed = np.array([[5.0] * m.n_features, [3.0] * m.n_features])
    first = m.step(streams, gap, at=[2, 2])
    assert np.isnan(first[0]).all() and not np.isnan(first[1]).any()
    second = m.step(streams, fixed, at=[2, 2])      # row 0 fed now; row 1 a replay
    np.testing.assert_array_equal(second[1], first[1])
    want = [alone[0].step(fixed[0]), alone[1].step(fixed[1])]
    np.testing.assert_allclose(second, np.stack(want), rtol=1e-6)
    with pytest.raises(InputError, match="one position, at=5; expected 2 positions, one per "
                                         "stream"):
        m.step(streams, fixed, at=5)
