"""Model.predict given readings where it takes windows: a table, a 2-D series (user trial)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import load
from runtime.errors import InputError, ShapeError

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def model():
    return load(MODEL, device="cpu")


def test_a_table_given_to_predict_is_pointed_to_a_stream_and_the_fix_works(model):
    df = pd.read_csv(ROOT / "data" / "water-flow.csv").head(40)    # the time column too
    with pytest.raises(InputError, match=r"table of 40 rows.*predict takes windows") as err:
        model.predict(df)
    assert "model.stream().feed(df[list(model.features)])" in str(err.value)
    got = model.stream().feed(df[list(model.features)])              # the fix, as written
    want = model.stream().feed(df[list(model.features)].to_numpy(np.float32))
    assert got.shape == (40, 1) and np.array_equal(got, want)


def test_a_series_of_readings_is_offered_as_one_sequence_and_both_fixes_mean_what_they_say(model):
    x = pd.read_csv(ROOT / "data" / "water-flow.csv")[list(model.features)].to_numpy()[:40]
    with pytest.raises(ShapeError) as err:
        model.predict(x)
    text = str(err.value)
    assert "x.reshape(1, 40, 1)" in text and "x.reshape(40, 1, 1)" in text
    sequence = model.predict(x.reshape(1, 40, 1))[0]                 # answered as a stream is
    assert np.array_equal(sequence.reshape(-1), model.stream().feed(x).reshape(-1))
    fresh = model.predict(x.reshape(40, 1, 1)).reshape(-1)           # each from a zero state
    firsts = np.array([model.stream().step(row)[0] for row in x.astype(np.float32)])
    np.testing.assert_allclose(fresh, firsts, rtol=1e-6)
