"""A stream's persisted state (runtime.state): old files, the codec, checks, groups, order.

``tests/data/state-v1`` holds files lstm-edge wrote before the state had one owner (format 1,
commit 6b69001): an npz snapshot file and an ``lstm-run --state`` database per model kind
(sequence with a mask, window, stateful with 3 state slots, window 1 with 3 slots), of
streams fed 0, 2, 7 and 12 of ``readings.npy``. The reference for each is a fresh stream fed
the same readings by the code under test.
"""

from __future__ import annotations

import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import state as st
from runtime.store import StateStore

from helpers import tiny_onnx

V1 = Path(__file__).resolve().parent / "data" / "state-v1"
KINDS = ["sequence", "window", "stateful", "slots1"]
FED = (0, 2, 7, 12)


def fed_stream(model, n):
    stream = model.stream()
    for x in np.load(V1 / "readings.npy")[:n]:
        stream.step(x)
    return stream


def same_snapshot(a, b):
    """Every field of two states equal (arrays exactly)."""
    for f in fields(st.StreamState):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "version":
            continue
        if isinstance(x, dict) and f.name == "state":
            assert list(x) == list(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert (x is None) == (y is None), f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def continues_as(stream, reference):
    """The next readings give the reference's predictions."""
    xs = np.random.default_rng(1).normal(20, 5, (5, 2)).astype(np.float32)
    np.testing.assert_array_equal(stream.feed(xs), reference.feed(xs))


@pytest.mark.parametrize("kind", KINDS)
def test_format_1_npz_files_load(kind):
    model = runtime.load(V1 / f"{kind}.onnx", device="cpu")
    snaps = runtime.load_snapshots(V1 / f"{kind}.npz")
    assert sorted(snaps) == sorted(f"s{n}" for n in FED)
    for n in FED:
        stream = model.stream(snaps[f"s{n}"])
        same_snapshot(stream.snapshot(), fed_stream(model, n).snapshot())
        continues_as(stream, fed_stream(model, n))


@pytest.mark.parametrize("kind", KINDS)
def test_format_1_databases_load_and_are_rewritten_once(kind, tmp_path):
    model = runtime.load(V1 / f"{kind}.onnx", device="cpu")
    db = tmp_path / "state.db"
    shutil.copy(V1 / f"{kind}.db", db)
    read_only = runtime.load_snapshots(db)                       # read without a model
    for _ in range(2):                                           # format 1, then format 2
        store = StateStore(db, model)
        loaded = {key: stream for key, stream, _ in store.load()}
        assert store.summary()["format"] == "2"
        store.close()
        for n in FED:
            reference = fed_stream(model, n)
            same_snapshot(loaded[f"s{n}"].snapshot(), reference.snapshot())
            same_snapshot(model.stream(read_only[f"s{n}"]).snapshot(), reference.snapshot())
            continues_as(loaded[f"s{n}"], reference)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tiny_onnx(tmp_path_factory.mktemp("state") / "tiny.onnx")
    return runtime.load(path, device="cpu")


def full_state(model):
    stream = fed_stream(model, 5)
    stream.step([20.0, 40.0], at=1_700_000_000.25)
    stream.sections["alerts"] = b"\x00\x01pending"
    return replace(stream.snapshot(), extra={"note": "kept"})


def test_the_codec_round_trips_every_field(model):
    snap = full_state(model)
    back = runtime.Snapshot.from_bytes(snap.to_bytes())
    same_snapshot(back, snap)
    assert back.sections == {"alerts": b"\x00\x01pending"} and back.extra == {"note": "kept"}
    seq = replace(snap, position=2**40 + 1)                      # a sequence number stays an int
    assert st.StreamState.from_bytes(seq.to_bytes()).position == 2**40 + 1
    assert isinstance(st.StreamState.from_bytes(seq.to_bytes()).position, int)


def test_every_flipped_bit_is_refused(model):
    data = full_state(model).to_bytes()
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(runtime.SnapshotError):
                st.StreamState.from_bytes(bytes(bad))
    for cut in (0, 10, len(data) - 1):
        with pytest.raises(runtime.SnapshotError, match="not a snapshot file|checksum"):
            st.StreamState.from_bytes(data[:cut])


def test_a_newer_codec_says_upgrade(model):
    import struct
    import zlib
    body = bytearray(full_state(model).to_bytes()[:-4])
    body[4] = st.CODEC + 1
    data = bytes(body) + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(runtime.SnapshotError, match="upgrade lstm-edge"):
        st.StreamState.from_bytes(data)


def test_every_problem_of_a_state_is_named_at_once(model):
    snap = model.stream().snapshot()
    bad = replace(snap, window=9, state={"in_h0": snap.state["in_h0"]}, steps=-1)
    with pytest.raises(runtime.SnapshotError) as info:
        model.stream(bad)
    message = str(info.value)
    assert "window=9" in message and "step count is -1" in message and "needs" in message


# ---- many-stream groups: no public method may see stale state -------------------------

CALLS = {   # every public attribute of Stream, with the arguments a check calls it with
    "step": lambda s: s.step([21.0, 44.0]),
    "feed": lambda s: s.feed(np.array([[21.0, 44.0], [22.0, 45.0]])),
    "reset": lambda s: s.reset(),
    "restore": lambda s: s.restore(s.snapshot()),
    "snapshot": lambda s: s.snapshot(),
    "to_bytes": lambda s: s.to_bytes(),
    "order": lambda s: s.order([21.0, 44.0], 3),
    "state": lambda s: s.state,
    "steps": lambda s: s.steps,
    "ready": lambda s: s.ready,
    "position": lambda s: s.position,
    "answer": lambda s: s.answer,
    "holding": lambda s: s.holding,
    "sections": lambda s: dict(s.sections),
    "model": lambda s: s.model.name,
    "missing": lambda s: s.missing,
}


def public(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def equal(a, b):
    if isinstance(a, st.StreamState):
        same_snapshot(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            equal(a[k], b[k])
    elif isinstance(a, np.ndarray) or a is None:
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_the_call_table_names_every_public_method():
    assert public(runtime.Stream) == set(CALLS), "add the new method to CALLS"


@pytest.mark.parametrize("window, carry", [(1, True), (3, False), (3, True)])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_public_method_sees_stale_state_in_a_group(tmp_path, window, carry, name):
    model = runtime.load(tiny_onnx(tmp_path / "m.onnx", window=window, carry_state=carry),
                         device="cpu")
    xs = np.random.default_rng(2).normal(20, 5, (6, 2, 2)).astype(np.float32)
    grouped = [model.stream(), model.stream()]
    alone = [model.stream(), model.stream()]
    for x in xs:                                 # the last calls take the group's fast path
        model.step(grouped, x, at=None)
        for stream, reading in zip(alone, x):
            stream.step(reading)
    assert model._group is not None and grouped[0]._group is model._group
    equal(CALLS[name](grouped[0]), CALLS[name](alone[0]))
    equal(grouped[0].snapshot(), alone[0].snapshot())
    equal(grouped[1].snapshot(), alone[1].snapshot())


# ---- the order rule ---------------------------------------------------------------------

def test_step_at_feeds_new_readings_and_answers_replays(model):
    a, b = model.stream(), model.stream()
    xs = np.random.default_rng(3).normal(20, 5, (4, 2))
    ys = [a.step(x, at=10.0 + i) for i, x in enumerate(xs)]
    for x in xs:
        b.step(x)
    same_state = a.snapshot().state
    np.testing.assert_array_equal(a.step(xs[-1], at=13.0), ys[-1])      # a replay
    assert a.step(xs[1], at=11.0) is None and a.order(xs[1], 11.0) == "old"
    with pytest.raises(runtime.InputError, match="already fed with other values"):
        a.step(xs[0], at=13.0)
    assert a.steps == b.steps == 4 and a.position == 13.0
    equal(a.snapshot().state, same_state)
    equal(a.snapshot().state, b.snapshot().state)


def test_feed_at_and_model_step_at_apply_the_same_rule(model):
    xs = np.random.default_rng(4).normal(20, 5, (6, 2))
    at = [1, 2, 2, 3, 1, 4]                       # a replay of 2, then an old 1
    rows = xs.copy()
    rows[2] = rows[1]
    one = model.stream()
    ys = one.feed(rows, at=at)
    step = model.stream()
    ref = [step.step(x, at=a) for x, a in zip(rows, at)]
    for got, want in zip(ys, ref):
        np.testing.assert_array_equal(got, np.full(1, np.nan) if want is None else want)
    np.testing.assert_array_equal(ys[2], ys[1])
    assert np.isnan(ys[4]).all() and one.steps == 4 and one.position == 4
    many = [model.stream(), model.stream()]
    out = [model.step(many, np.stack([x, x]), at=[a, a]) for x, a in zip(rows, at)]
    np.testing.assert_array_equal(np.stack(out)[:, 0], ys)
    equal(many[0].snapshot(), one.snapshot())
    with pytest.raises(runtime.InputError, match="no stream was stepped"):
        model.step(many, np.stack([xs[0], xs[5]]), at=[4, 4])     # stream 0: other values
    equal(many[1].snapshot(), one.snapshot())


# ---- many states at once: the same bytes and the same checks as one at a time ---------------

def varied_streams(model):
    """Streams of every history a store meets: fresh, warming up, full, fed alone, stepped
    together (a group), with positions, a sequence number, sections."""
    readings = np.load(V1 / "readings.npy")
    streams = [fed_stream(model, n) for n in (0, 1, 2, 7)]
    together = [model.stream() for _ in range(6)]
    for x in readings[:4]:
        model.step(together, np.tile(x, (6, 1)))
    model.step(together[:3], readings[4:7], at=[10.5, 11.5, 12.5])
    at_seq = fed_stream(model, 3)
    at_seq.step(readings[3], at=17)
    sectioned = fed_stream(model, 5)
    sectioned.sections["alerts"] = b"\x00\x01pending"
    return streams + together + [at_seq, sectioned]


@pytest.mark.parametrize("kind", KINDS)
def test_many_at_once_writes_the_bytes_one_at_a_time_writes(kind):
    from runtime.stream import to_bytes_many
    model = runtime.load(V1 / f"{kind}.onnx", device="cpu")
    streams = varied_streams(model)
    one_by_one = [s.snapshot().to_bytes() for s in streams]
    assert to_bytes_many(streams) == one_by_one                  # a group read in place too
    snaps = [s.snapshot() for s in streams] + [replace(streams[0].snapshot(), extra={"n": 1})]
    assert st.pack_many(snaps) == [s.to_bytes() for s in snaps]
    old = list(runtime.load_snapshots(V1 / f"{kind}.npz").values())   # format-1 snapshots
    assert st.pack_many(old) == [s.to_bytes() for s in old]


@pytest.mark.parametrize("kind", KINDS)
def test_many_at_once_restores_what_one_at_a_time_restores(kind):
    model = runtime.load(V1 / f"{kind}.onnx", device="cpu")
    streams = varied_streams(model)
    blobs = [s.to_bytes() for s in streams] * 3
    decoded, left = st.unpack_many(blobs)
    assert sum(len(rows) for rows, _ in decoded) > len(blobs) // 2     # most read together
    restored: dict[int, object] = {}
    for rows, columns in decoded:
        restored.update(zip(rows, model.restore_many(columns)))
    assert sorted([*restored, *left]) == list(range(len(blobs)))
    for i, stream in restored.items():
        reference = model.stream(st.StreamState.from_bytes(blobs[i]))
        same_snapshot(stream.snapshot(), reference.snapshot())
        continues_as(stream, reference)


def test_rows_the_bulk_check_doubts_are_refused_one_by_one_with_their_reason(model, tmp_path):
    streams = [fed_stream(model, 6) for _ in range(40)]
    store = StateStore(tmp_path / "state.db", model)
    store.save([(f"s{i}", s, float(i), i) for i, s in enumerate(streams)])
    nan = streams[7].snapshot()
    nan.state[next(iter(nan.state))][0] = np.nan                  # a valid CRC, a NaN state
    flipped = bytearray(streams[9].to_bytes())
    flipped[100] ^= 0x04
    negative = replace(streams[11].snapshot(), steps=3, buffer=streams[11].snapshot().buffer)
    store.db.executemany("UPDATE streams SET state = ?, steps = ? WHERE key = ?",
                         [(nan.to_bytes(), nan.steps, "s7"), (bytes(flipped), 6, "s9"),
                          (negative.to_bytes(), 6, "s11")])
    with pytest.raises(runtime.SnapshotError) as err:
        store.load()
    store.close(refused=True)
    message = str(err.value)
    assert "'s7': its state: state" in message and "NaN or inf" in message
    assert "'s9': its state fails its checksum" in message
    assert "'s11': its step count is 6, its state's 3" in message
    assert "'s8'" not in message and "3 more" not in message
