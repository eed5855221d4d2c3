"""State slots without Keras: B slots are B interleaved one-slot chains.

Window ``j`` continues window ``j - B``, so the windows ``k, k + B, k + 2B, ...`` form one
chain that a one-slot stream would run in order. The reference is therefore the same file
loaded with ``state_slots=1``, run on each chain alone; every way of running the B-slot
model (step, feed in pieces, many streams per call, predict, snapshot and restore) must
give it. Keras's own ``predict(batch_size=4)`` is in tests/test_runtime_keras_stateful.py.
"""

import numpy as np
import pytest

import runtime

from helpers import SLOTS as B
from helpers import run, slotted, split_lines


def series(n=40, mask=False, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(20, 5, (n, 2)).astype(np.float32)        # (readings, features)
    if mask:
        xs[rng.uniform(size=n) < 0.25] = 0.0
    return xs


def reference(path, xs, window):
    """Each chain of windows k, k + B, ... run by a one-slot model: (windows, targets)."""
    one = runtime.load(path, device="cpu", state_slots=1)
    wins = np.stack([xs[t:t + window] for t in range(len(xs) - window + 1)])   # (w, window, F)
    out = np.empty((len(wins), 1), np.float32)
    for k in range(B):
        if window == 1:               # samples of one reading, carried as Keras's predict
            out[k::B] = one.predict(xs[k::B][:, None])
        else:
            out[k::B] = one.predict(wins[k::B])
    return wins, out


@pytest.mark.parametrize("bound", [False, True], ids=["host", "io-binding"])
@pytest.mark.parametrize("window, mask", [(3, False), (3, True), (1, False)])
def test_slots_are_interleaved_one_slot_chains(tmp_path, window, mask, bound):
    path = slotted(tmp_path, window, mask)
    model = runtime.load(path, device="cpu", io_binding=bound)   # bound: state in OrtValues
    assert model.slots == B and model.mode == ("stateful" if window > 1 else "sequence")
    xs = series(mask=mask)
    wins, want = reference(path, xs, window)
    # predict on the windows themselves
    np.testing.assert_allclose(model.predict(wins), want, atol=1e-6)
    # one stream, step by step; then feed in uneven pieces
    s = model.stream()
    stepped = np.array([np.full(1, np.nan) if (y := s.step(x)) is None else y for x in xs])
    np.testing.assert_allclose(stepped[window - 1:], want, atol=1e-6)
    f = model.stream()
    fed = np.concatenate([f.feed(xs[:7]), f.feed(xs[7:8]), f.feed(xs[8:])])
    np.testing.assert_allclose(fed[window - 1:], want, atol=1e-6)
    assert s.slot == f.slot == len(want) % B
    # many streams in one call, one of them restored from a snapshot half way
    a, b = model.stream(), model.stream()
    rows = [model.step([a, b], np.stack([x, x])) for x in xs[:20]]
    c = model.stream(b.snapshot())
    rows += [model.step([a, c], np.stack([x, x])) for x in xs[20:]]
    rows = np.array(rows)                                      # (readings, 2, targets)
    np.testing.assert_allclose(rows[window - 1:, 0], want, atol=1e-6)
    np.testing.assert_allclose(rows[window - 1:, 1], want, atol=1e-6)


def test_bad_input_leaves_every_slot_as_it_was(tmp_path):
    model = runtime.load(slotted(tmp_path, 3), device="cpu")
    s = model.stream()
    s.feed(series(10))
    before = s.snapshot()
    bad = series(5)
    bad[3, 1] = np.nan
    with pytest.raises(runtime.InputError):
        s.feed(bad)
    with pytest.raises(runtime.ShapeError):
        s.step([1.0, 2.0, 3.0])
    after = s.snapshot()
    assert after.next_slot == before.next_slot and after.steps == before.steps
    for name in before.state:
        np.testing.assert_array_equal(after.state[name], before.state[name])


def test_one_slot_snapshot_into_a_slotted_model_is_refused(tmp_path):
    path = slotted(tmp_path, 3)
    one = runtime.load(path, device="cpu", state_slots=1)
    snap = one.stream().snapshot()
    assert snap.next_slot is None and snap.state["in_h0"].shape == (4,)
    with pytest.raises(runtime.SnapshotError, match="1 state slot; this model streams with 3"):
        runtime.load(path, device="cpu").stream(snap)


def test_state_slots_metadata_round_trip():
    from runtime.contract import ModelInfo
    info = ModelInfo.from_metadata({"lstm_edge.window": "3", "lstm_edge.state_slots": "3"})
    assert info.state_slots == 3
    assert info.extra["state_slots"] == "3"      # where code written before the field reads it
    assert info.to_metadata()["lstm_edge.state_slots"] == "3"
    assert "lstm_edge.state_slots" not in ModelInfo(state=()).to_metadata()
    assert ModelInfo.from_metadata({}).state_slots == 1


@pytest.mark.parametrize("window", [3, 1])
def test_slots_survive_the_state_database(tmp_path, window):
    """lstm-run --state keeps every slot: a run cut in two equals one run, and the reference."""
    path = slotted(tmp_path, window)
    xs = series(30)
    lines = [f"{a},{b}\n" for a, b in xs]
    whole, _ = run([path, "--format", "headerless"], "".join(lines).encode())
    db = tmp_path / "state.db"
    first, _ = run([path, "--format", "headerless", "--state", db], "".join(lines[:13]).encode())
    second, _ = run([path, "--format", "headerless", "--state", db], "".join(lines[13:]).encode())
    cut = split_lines(first) + split_lines(second)
    assert cut == split_lines(whole)
    _, expected = reference(path, xs, window)
    got = np.array([float(line.split(",")[4]) for line in cut[window - 1:]])
    np.testing.assert_allclose(got, expected[:, 0], atol=1e-6)
    snaps = runtime.load_snapshots(db)                      # the database read back as snapshots
    stream = runtime.load(path, device="cpu").stream(snaps[""])
    # The slot of window j is j mod B: the 28 (window 3) or 30 windows so far give the next.
    assert stream.steps == 30 and stream.slot == (30 - window + 1) % B
