"""What the Flink operator does per line, without Flink: state bytes, order, error records.

These run in the main environment (numpy + the runtime; no PyFlink), for every streaming
mode, against the runtime's own streams as the reference. The Flink job itself is tested
end to end in test_flink.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.alerts import AlertConfig
from runtime.lines import format_value
from runtime.order import reading_time
from runtime.state import StreamState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))          # integrations/ is not installed into the main venv

from integrations.flink.batch import BatchJob, shard_of  # noqa: E402
from integrations.flink.records import LineJob, LineSpec, state_key  # noqa: E402
from helpers import (FLOW, TRICKY, alert_lines, run, slotted, split_lines,  # noqa: E402
                     tiny_onnx, with_intervals)

MODES = {"sequence": dict(window=1, carry_state=True),
         "window": dict(window=3, carry_state=False),
         "stateful": dict(window=3, carry_state=True)}


@pytest.fixture(scope="module", params=sorted(MODES))
def model_file(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / f"{request.param}.onnx"
    return tiny_onnx(path, seed=3, **MODES[request.param])


def readings(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal([21.0, 45.0], [3.0, 8.0], (n, 2))  # (n, features)


def line(sensor: str, t: int, x) -> str:
    return json.dumps({"sensor": sensor, "t": t, "temperature": float(x[0]),
                       "humidity": float(x[1])})


def run_lines(job: LineJob, lines: list[str], use_key: bool = True) -> list[dict]:
    """What the Flink operator does: route, answer, keep the state bytes per sensor."""
    state, out = {}, []
    for text in lines:
        key = job.key(text)
        answer, blob = job.answer(text, state.get(key), key if use_key else None)
        if blob is not None:
            state[key] = blob
        out.append(json.loads(answer))
    return out


def test_state_bytes_continue_a_stream_exactly(model_file):
    """The keyed state's bytes (the runtime's one codec) carry a stream on exactly."""
    model = runtime.load(model_file)
    job = LineJob(model_file.read_bytes(), LineSpec("jsonl", (), "sensor", "t"))
    xs = readings(20, 0)
    whole = model.stream()
    ys = [whole.step(x) for x in xs]
    blob = None
    for i, x in enumerate(xs):
        part = job.open(None, blob, 5.0 + i)               # restored from the bytes, each step
        y = part.step(x)
        blob = job.save(None, part, 5.0 + i)
        assert StreamState.from_bytes(blob).steps == i + 1
        assert (y is None) == (ys[i] is None)
        if y is not None:
            assert np.array_equal(y, ys[i])


def test_state_bytes_of_another_model_are_refused(model_file, tmp_path):
    other_file = tiny_onnx(tmp_path / "other.onnx", seed=9, **MODES[runtime.load(model_file).mode])
    spec = LineSpec("jsonl", (), "sensor", "t")
    job, other = LineJob(model_file.read_bytes(), spec), LineJob(other_file.read_bytes(), spec)
    blob = other.save(None, other.open(None, None, 0.0), 0.0)
    with pytest.raises(runtime.SnapshotError, match="another model"):
        job.open(None, blob, 0.0)
    mine = job.save(None, job.open(None, None, 0.0), 0.0)
    with pytest.raises(runtime.SnapshotError, match="the keyed state"):
        job.open(None, mine[:-2], 0.0)


@pytest.mark.parametrize("use_key", [True, False], ids=["kept-streams", "from-bytes"])
def test_interleaved_sensors_equal_each_runtime_stream(model_file, use_key):
    model = runtime.load(model_file)
    job = LineJob(model_file.read_bytes(), LineSpec("jsonl", (), "sensor", "t"))
    data = {s: readings(15, k) for k, s in enumerate("abcd")}
    rng = np.random.default_rng(1)
    order = rng.permutation(np.repeat(list(data), 15))     # sensors interleaved at random
    seen = {s: 0 for s in data}
    lines = []
    for s in order:
        lines.append(line(s, seen[s], data[s][seen[s]]))
        seen[s] += 1
    out = run_lines(job, lines, use_key)
    for s, xs in data.items():
        stream = model.stream()
        want = [stream.step(x) for x in xs]
        mine = [r for r in out if r["sensor"] == s]
        assert [r["step"] for r in mine] == list(range(1, 16))
        assert [r["warmup"] for r in mine] == [i + 1 < model.window for i in range(15)]
        for r, y in zip(mine, want):
            assert r["pred_temperature"] == (None if y is None else float(format_value(y[0])))


def test_bad_lines_are_error_records_and_late_ones_skipped(model_file):
    model = runtime.load(model_file)
    job = LineJob(model_file.read_bytes(), LineSpec("jsonl", (), "sensor", "t"))
    xs = readings(8, 2)
    lines = [line("a", t, x) for t, x in enumerate(xs)]
    lines.insert(4, '{"sensor": "a", "t": 99, "temperature": "warm", "humidity": 40}')
    lines.insert(6, line("a", 1, xs[1]))                   # older than the sensor's last
    lines.insert(7, line("a", 3, xs[3]))                   # a repeat of the last time
    lines.insert(2, '{"sensor": "a", "t": "soon", "temperature": 1, "humidity": 2}')
    lines.insert(0, "not json")
    out = run_lines(job, lines)
    errors = [r for r in out if "error" in r]
    assert len(errors) == 3 and all("step" not in r for r in errors)
    assert "is not valid JSON" in errors[0]["error"] or "not valid JSON" in errors[0]["error"]
    assert "ISO-8601" in errors[1]["error"]
    assert "'warm' is not a number" in errors[2]["error"]
    # Older than the sensor's position (t = 4): answered as skipped, as lstm-run does, not fed.
    skipped = [r for r in out if str(r.get("order", "")).startswith("skipped")]
    assert len(skipped) == 2 and all("step" not in r for r in skipped)
    assert all("t 1970-01-01T00:00:04Z" in r["order"] for r in skipped)
    stream = model.stream()
    want = [stream.step(x) for x in xs]
    good = [r for r in out if "error" not in r and "order" not in r]
    assert [r["step"] for r in good] == list(range(1, 9))
    for r, y in zip(good, want):
        assert r["pred_temperature"] == (None if y is None else float(format_value(y[0])))


def test_csv_lines_keep_lstm_run_columns(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    spec = LineSpec("csv", ("time", "sensor", "temperature", "humidity"), "sensor", "time",
                    "time,sensor,temperature,humidity")
    job = LineJob(path.read_bytes(), spec)
    assert job.key("time,sensor,temperature,humidity") is None     # each file's header
    answer, blob = job.answer("2024-01-01T00:00:00Z,a,21.5,40", None, "a")
    assert answer.startswith("2024-01-01T00:00:00Z,a,21.5,40,1,false,") and answer.endswith(",")
    late, none = job.answer("2023-12-31T23:00:00,a,21.5,40", blob, "a")   # naive time: UTC
    fields = next(csv.reader([late]))
    assert none is None and len(fields) == 10 and fields[-3].startswith("skipped")
    assert fields[-2:] == ["", ""]           # no error; the input column: the fields fit


def test_reading_time_reads_numbers_and_iso_times():
    assert reading_time("1.5", "t") == 1.5
    assert reading_time("2022-03-20T11:00:00+01:00", "t") == 1647770400.0
    assert reading_time(7, "t") == 7.0
    for bad in ("", "noon", None, math.nan, True, "2022-13-01T00:00:00", "1e999"):
        with pytest.raises(runtime.InputError, match="time column 't'"):
            reading_time(bad, "t")


def test_a_time_without_a_zone_is_read_as_utc_to_the_microsecond():
    """The same seconds as the standard library's UTC timestamp, in every form a logger
    writes: before 1970, leap days, microseconds, a space for the T, spaces around it."""
    rng = np.random.default_rng(5)
    for seconds in rng.integers(-2_000_000_000, 4_000_000_000, 300):
        when = datetime.fromtimestamp(int(seconds), timezone.utc).replace(
            microsecond=int(rng.integers(0, 1_000_000)))
        naive = when.replace(tzinfo=None)
        for text in (naive.isoformat(), naive.isoformat(sep=" "), f" {naive.isoformat()} ",
                     naive.isoformat(timespec="seconds")):
            expected = datetime.fromisoformat(text.strip()).replace(tzinfo=timezone.utc)
            assert reading_time(text, "t") == expected.timestamp(), text
    assert reading_time("2024-02-29", "t") == 1709164800.0
    assert reading_time("1969-12-31T23:59:59.5", "t") == -0.5


def test_state_older_than_the_ttl_starts_a_fresh_stream(model_file, monkeypatch):
    import integrations.flink.records as records
    clock = [1000.0]
    monkeypatch.setattr(records.time, "time", lambda: clock[0])
    model = runtime.load(model_file)
    job = LineJob(model_file.read_bytes(), LineSpec("jsonl", (), "sensor", "t"), ttl=60)
    xs = readings(6, 4)
    state = None
    for use_key in (True, False):                    # kept stream and bytes alike
        for t, x in enumerate(xs[:3]):
            out, state = job.answer(line("a", t, x), state, "a" if use_key else None)
        clock[0] += 59                               # within the TTL: the stream goes on
        out, state = job.answer(line("a", 3, xs[3]), state, "a" if use_key else None)
        assert json.loads(out)["step"] == 4
        clock[0] += 61                               # past it: a fresh stream, warm-up again
        out, state = job.answer(line("a", 1, xs[4]), state, "a" if use_key else None)
        fresh = model.stream()
        y = fresh.step(xs[4])
        assert json.loads(out)["step"] == 1
        assert json.loads(out)["pred_temperature"] == (None if y is None
                                                       else float(format_value(y[0])))
        state, clock[0] = None, clock[0] + 100


@pytest.mark.parametrize("window", [3, 1])
def test_state_bytes_keep_every_state_slot(tmp_path, window):
    """A file with lstm_edge.state_slots = 3: every slot survives the keyed-state bytes."""
    model = runtime.load(slotted(tmp_path, window))
    assert model.slots == 3
    xs = readings(20, 1)
    whole, part = model.stream(), model.stream()
    for x in xs:
        want = whole.step(x)
        part = model.stream(StreamState.from_bytes(part.to_bytes()))
        got = part.step(x)
        assert (got is None) == (want is None)
        if got is not None:
            assert np.array_equal(got, want)


# ---- the batched operator's flushes ------------------------------------------------------

def flushes(job: BatchJob, lines: list[str], sizes) -> list[str]:
    """What the batched operator does: lines cut into flushes, state bytes kept per sensor."""
    state, out, at = {}, [], 0
    for size in sizes:
        answers, changed = job.answer_many(lines[at:at + size], state.get)
        state.update(changed)
        out += answers
        at += size
    assert at >= len(lines)
    return out


def mixed_lines(n_sensors: int, rows: int, seed: int) -> list[str]:
    """Sensors interleaved at random, with a bad value, a late reading, a bad time and a
    reading delivered twice."""
    rng = np.random.default_rng(seed)
    data = {f"s{k}": readings(rows, seed + k) for k in range(n_sensors)}
    seen = dict.fromkeys(data, 0)
    lines = []
    for s in rng.permutation(np.repeat(list(data), rows)):
        lines.append(line(s, seen[s], data[s][seen[s]]))
        seen[s] += 1
    lines.insert(5, '{"sensor": "s0", "t": 99, "temperature": "warm", "humidity": 40}')
    lines.insert(len(lines) // 2, line("s1", 0, data["s1"][0]))      # older than its last
    lines.insert(9, '{"sensor": "s2", "t": "soon", "temperature": 1, "humidity": 2}')
    lines.insert(21, lines[20])                                       # delivered twice
    return lines


@pytest.mark.parametrize("sizes", [[1] * 400, [7] * 60, [400]], ids=["1", "7", "all"])
def test_a_flush_answers_as_the_line_operator_does(model_file, sizes):
    """Interleaved sensors (rounds through Model.step) and per-sensor runs (one feed each)
    give the per-line operator's answers, byte for byte, however the lines are flushed."""
    spec = LineSpec("jsonl", (), "sensor", "t")
    data = model_file.read_bytes()
    lines = mixed_lines(5, 60, 3)
    runs = sorted(lines, key=lambda x: json.loads(x)["sensor"])   # per-sensor files' order
    for order in (lines, runs):
        want = run_lines_raw(LineJob(data, spec), order)
        assert sum("error" in json.loads(a) for a in want) == 2
        assert sorted(json.loads(a).get("order", "")[:7] for a in want)[-2:] == \
            ["replay", "skipped"]
        assert flushes(BatchJob(data, spec), order, sizes) == want
        if sizes == [400]:         # lstm-run on the same lines: the same rule, the same answers
            text = "".join(x + "\n" for x in order).encode()
            lstm_run = split_lines(run([model_file, "--stream-column", "sensor",
                                        "--time-column", "t"], text)[0])
            assert [flink_words(x) for x in lstm_run] == want


def test_shards_are_the_same_in_every_process():
    """A real second process with another string-hash seed puts every sensor where we do."""
    import subprocess
    keys = [f"s{k}" for k in range(50)] + ["", "Zürich-7"]
    code = ("import sys, json; sys.path.insert(0, '.'); "
            "from integrations.flink.batch import shard_of; "
            f"print(json.dumps([shard_of(k, 4) for k in {keys!r}]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    mine = [shard_of(k, 4) for k in keys]
    assert json.loads(other.stdout) == mine and set(mine) == {0, 1, 2, 3}


def test_invalid_utf8_gets_lstm_runs_error_record(tmp_path):
    """One parser: the job's lines (bytes as ISO-8859-1 text) answered as lstm-run answers
    the file, error record of the invalid UTF-8 line included (a U+FFFD would be fed)."""
    model = ROOT / "exported" / "water-flow.onnx"
    feature = "Water flow [l/s]"
    header = f"sensor,t,note,{feature}".encode()
    rows = [b"a,%d,ok,%.2f" % (t, 101.5 + t / 10) for t in range(1, 9)]
    rows.insert(4, b"a,9,note\xff,101.80")
    rows.insert(6, b"b,1,\xc3\xa9t\xc3\xa9,99.5")                   # valid UTF-8: passed through
    path = tmp_path / "in.csv"
    path.write_bytes(b"\n".join([header, *rows]) + b"\n")
    want = split_lines(run([model, "-i", path, "--stream-column", "sensor", "--time-column",
                            "t"])[0])[1:]
    assert "not UTF-8" in want[4]
    text = [r.decode("latin-1") for r in rows]
    spec = LineSpec("csv", ("sensor", "t", "note", feature), "sensor", "t", header.decode())
    assert run_lines_raw(LineJob(model.read_bytes(), spec), text) == want
    assert flushes(BatchJob(model.read_bytes(), spec), text, [len(text)]) == want


def flink_words(line: str) -> str:
    """lstm-run's answer as the Flink job words it: its order advice names --no-time-column."""
    return line.replace("--no-order-check feeds every line", "--no-time-column feeds every line")


def run_lines_raw(job: LineJob, lines: list[str]) -> list[str]:
    state, out = {}, []
    for text in lines:
        key = job.key(text)
        answer, blob = job.answer(text, state.get(key), key)
        if blob is not None:
            state[key] = blob
        out.append(answer)
    return out


def test_the_shard_count_is_kept_in_the_record_of_the_checkpoints_job(tmp_path):
    from integrations.flink.resume import CheckpointError, recorded_shards

    chk = tmp_path / "0123abcd" / "chk-3"
    chk.mkdir(parents=True)
    assert recorded_shards(chk, None) is None                 # none recorded: --shards, or 4 a slot
    assert recorded_shards(None, 3) is None                   # a fresh job
    (chk.parent / "lstm-edge-job.json").write_text('{"shards": 8}')
    assert recorded_shards(chk, None) == 8                    # resumed: its shards kept
    assert recorded_shards(chk, 8) == 8
    with pytest.raises(CheckpointError, match="taken with 8 shards"):
        recorded_shards(chk, 3)
    (chk.parent / "lstm-edge-job.json").write_text('{"shards": "junk"}')
    with pytest.raises(CheckpointError, match="holds 'junk'"):
        recorded_shards(chk, None)


# ---- lone-surrogate sensor keys and --interval: lstm-run's answers -----------------------

def answer_all(job: LineJob, lines: list[str], use_key: bool) -> list[str]:
    """The per-record operator: keyed by state_key, its state bytes kept per key."""
    state, out = {}, []
    for text in lines:
        key = job.key(text)
        skey = None if key is None else state_key(key)
        answer, blob = job.answer(text, state.get(skey), skey if use_key else None)
        if blob is not None:
            state[skey] = blob
        out.append(answer)
    return out


def test_state_keys_are_utf8_and_one_per_sensor():
    keys = [*TRICKY, "\\\\ud800", "\udfff\\", "Zürich", ""]
    escaped = [state_key(k) for k in keys]
    assert len(set(escaped)) == len(keys)
    assert [k.encode("utf-8").decode() for k in escaped] == escaped   # no surrogate left
    assert escaped[0] == "a" and escaped[-2] == "Zürich"


@pytest.mark.parametrize("options", [(), ("--interval", "0.9", "--min-run", "2",
                                          "--hold-off", "2", "--stuck", "3", "--cusum", "2"),
                                     ("--interval", "0.9", "--min-run", "2", "--hold-off", "2",
                                      "--stuck", "3", "--cusum", "2", "--adapt", "0.2")],
                         ids=["plain", "interval", "adapting"])
def test_lone_surrogate_keys_and_alerts_answer_as_lstm_run(tmp_path, options):
    """Both operators (kept streams and state restored from bytes at every line, flushes of
    every size) give a real lstm-run's lines with the same options, byte for byte: the
    lone-surrogate sensor answered and kept apart from its escaped namesake, the alert
    columns carried by each sensor's state bytes."""

    model = with_intervals(tmp_path / "iv.onnx")
    lines = alert_lines()
    text = "".join(x + "\n" for x in lines).encode()
    want = split_lines(run([model, "--stream-column", "sensor", "--time-column", "t",
                            *options], text)[0])
    found = [json.loads(a) for a in want]
    assert {r["sensor"] for r in found} == set(TRICKY) and "\\ud800" in want[1]
    assert [r["step"] for r in found if r["sensor"] == "\ud800"] == list(range(1, 41))
    if options:
        # None: a replay
        assert {r.get("alert") for r in found} >= {"outside", "stuck", "shift", None}
    adapt = float(options[-1]) if "--adapt" in options else 0.0
    spec = LineSpec("jsonl", (), "sensor", "t", alerts=AlertConfig(0.9, 2, 2, 3, 2.0, adapt)
                    if options else None)
    data = model.read_bytes()
    for use_key in (True, False):
        assert answer_all(LineJob(data, spec), lines, use_key) == want
    for sizes in ([7] * 20, [len(lines)]):
        assert flushes(BatchJob(data, spec), lines, sizes) == want


def test_csv_alert_columns_and_header_as_lstm_run(tmp_path):
    """CSV: the answers' header (the job's header.csv) and lines are lstm-run's."""

    model = with_intervals(tmp_path / "iv.onnx")
    rows = [json.loads(x) for x in alert_lines(20) if "\\u" not in x]
    header = f"sensor,t,{FLOW}"
    body = [f"{r['sensor']},{r['t']},{r[FLOW]}" for r in rows]
    want = split_lines(run([model, "--stream-column", "sensor", "--time-column", "t",
                            "--interval", "0.8"], (header + "\n" + "\n".join(body)).encode())[0])
    spec = LineSpec("csv", ("sensor", "t", FLOW), "sensor", "t", header, AlertConfig(0.8))
    job = LineJob(model.read_bytes(), spec)
    assert job.format.header() == want[0] and "lo_Water flow [l/s]" in want[0]
    assert answer_all(job, body, True) == want[1:]


def test_a_missing_value_gets_lstm_runs_error_record(tmp_path):
    """The runtime's advice in lstm-run's option words (--missing), as lstm-run gives it."""
    lines = [json.dumps({"sensor": "x", "t": 1, FLOW: None}),
             json.dumps({"sensor": "x", "t": 2, FLOW: 100.0})]
    model = ROOT / "exported" / "water-flow.onnx"
    want = split_lines(run([model, "--stream-column", "sensor", "--time-column", "t"],
                           "".join(x + "\n" for x in lines).encode())[0])
    assert "--missing skip" in want[0]
    spec = LineSpec("jsonl", (), "sensor", "t")
    for use_key in (True, False):
        assert answer_all(LineJob(model.read_bytes(), spec), lines, use_key) == want
    assert flushes(BatchJob(model.read_bytes(), spec), lines, [2]) == want


def test_order_advice_names_the_flink_jobs_option(tmp_path):
    """Finding 5: a missing or bad time's error record is lstm-run's but for the option it
    names: the job has no --no-order-check; --no-time-column runs it without the check."""
    model = ROOT / "exported" / "water-flow.onnx"
    feature = "Water flow [l/s]"
    path = tmp_path / "in.csv"
    rows = ["a,1,101.5", "a,,101.7", "a,not-a-time,101.0", "a,2,101.9"]
    path.write_text(f"sensor,t,{feature}\n" + "\n".join(rows) + "\n")
    want = split_lines(run([model, "-i", path, "--stream-column", "sensor", "--time-column",
                            "t"])[0])[1:]
    assert sum("--no-order-check feeds every line" in x for x in want) == 2
    want = [flink_words(x) for x in want]
    spec = LineSpec("csv", ("sensor", "t", feature), "sensor", "t", f"sensor,t,{feature}")
    assert run_lines_raw(LineJob(model.read_bytes(), spec), rows) == want
    assert flushes(BatchJob(model.read_bytes(), spec), rows, [len(rows)]) == want


@pytest.mark.parametrize("blank", ["", " ", "\r", "\t "])
def test_a_blank_line_is_answered_with_a_blank_line(model_file, blank):
    """Finding 6: lstm-run answers a blank line with a blank line (N lines in, N out); so
    does each operator, and the sensor's state goes on as if the line were not there."""
    spec = LineSpec("jsonl", (), "sensor", "t")
    x = readings(3, seed=4)
    lines = [line("a", 1, x[0]), blank, line("a", 2, x[1]), blank, line("a", 3, x[2])]
    want = split_lines(run([model_file, "--stream-column", "sensor", "--time-column", "t"],
                           ("\n".join(lines) + "\n").encode())[0])
    assert want[1] == want[3] == ""
    assert run_lines_raw(LineJob(model_file.read_bytes(), spec), lines) == want
    assert flushes(BatchJob(model_file.read_bytes(), spec), lines, [len(lines)]) == want


def test_a_restore_with_another_models_state_is_one_line_in_flink_words():
    """Finding 3, where the checkpoint could not be read before the start: the job fails at
    the restore of a sensor's state, and the one line says what a Flink user can do."""
    from integrations.flink.job import failure
    trace = ("Traceback (most recent call last):\n  File ...\nruntime.errors.SnapshotError: "
             "the keyed state: it was made for another model (file sha256 e3648a6d9c96…, this "
             "one is 17aa724ba1d1…); continue it with the model file it was taken with "
             "(sha256 e3648a6d9c96…), or start the stream fresh\n")
    line, code = failure(Exception(trace * 3), resumed=True)
    assert code == 2 and "\n" not in line and "e3648a6d9c96" in line and "17aa724ba1d1" in line
    assert "resume with the model file the checkpoint was taken with" in line
    assert "start without --resume" in line and "stream fresh" not in line
