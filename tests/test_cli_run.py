"""``lstm-run`` end to end: a real subprocess, real pipes, a real exported model.

Every property is checked against independent runs of the same tool (interleaved sensors
against each sensor alone, kill-and-resume against one uninterrupted run) and, once, against
the runtime's own streams. Reads from a live process go through :class:`Live`, which has a
timeout, so a tool that holds its answers back fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import runtime
import runtime.serve
from runtime import lines
from runtime.io import LineReader
from runtime.serve import ServeConfig, Server, serve

from helpers import (ATOL, FEATURES, ROOT, RTOL, TARGETS, TIMEOUT, Live, csv_rows, preds,
                     run, split_lines, tiny_onnx, with_props)


# ---- models ----------------------------------------------------------------------------

def keras_onnx(directory: Path) -> dict[str, Path] | None:
    """The two tiny models as Keras trains them, exported by the trainer; None without it."""
    try:
        import keras
        from trainer.export import export
    except ImportError:
        return None
    keras.utils.set_random_seed(0)
    built = {
        "sequence": keras.Sequential([keras.Input((None, 2)),
                                      keras.layers.LSTM(4, return_sequences=True),
                                      keras.layers.Dense(1)]),
        "window": keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(4),
                                    keras.layers.Dense(1)]),
    }
    scaler = {"x": {"mean": [21.0, 45.0], "std": [3.0, 8.0]},
              "y": {"mean": [21.0], "std": [3.0]}}
    paths = {}
    for name, model in built.items():
        model.save(directory / f"{name}.keras")
        paths[name] = export(directory / f"{name}.keras", directory / f"{name}.onnx",
                             scaler=scaler, features=list(FEATURES), targets=list(TARGETS),
                             steps=100).path
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A sequence model and a window-of-3 model: Keras exports where the trainer is
    installed, else the same shapes built by hand (a runtime-only install)."""
    d = tmp_path_factory.mktemp("models")
    exported = keras_onnx(d)
    if exported is not None:
        assert runtime.load(exported["window"]).mode == "window"
        return exported
    return {"sequence": tiny_onnx(d / "sequence.onnx"),
            "window": tiny_onnx(d / "window.onnx", window=3, carry_state=False, seed=1)}


@pytest.fixture(scope="module")
def model(models) -> Path:
    return models["sequence"]


# ---- input data ------------------------------------------------------------------------

def readings(n: int, sensors=("a", "b", "c"), seed: int = 0) -> list[dict]:
    """``n`` readings from interleaved sensors, in arrival order (not round-robin)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = sensors[int(rng.integers(len(sensors)))]
        out.append({"time": f"t{i:05d}", "sensor": s,
                    "temperature": round(float(rng.normal(21, 3)), 2),
                    "humidity": round(float(rng.normal(45, 8)), 2)})
    return out


def as_csv(rows: list[dict], columns=("time", "sensor", "temperature", "humidity"),
           header=True) -> bytes:
    text = [",".join(columns)] if header else []
    text += [",".join(str(r[c]) for c in columns) for r in rows]
    return ("\n".join(text) + "\n").encode()


def as_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# ---- the contract in words -------------------------------------------------------------

def test_info_describes_the_contract(models):
    out, _ = run([models["window"], "--info", "--device", "cpu"])
    info = runtime.load(models["window"], device="cpu").info
    for words in ("features   2: temperature, humidity", "targets    1: temperature",
                  "LSTM", "4 units: in_h0, in_c0 -> out_h0, out_c0",
                  "window: each prediction reads the last 3 readings",
                  "warm-up    2 readings: the first prediction comes with reading 3",
                  "--window N if the model was trained on N",
                  f"{info.parity['max_abs_diff']:.3g}", "source", "device     cpu",
                  "the x and y scaling is in the graph"):
        assert words in out, out


def test_info_says_which_units_come_out_with_an_x_scaling_alone(tmp_path):
    """A file whose metadata holds the x scaling alone answers in model units, and says so."""
    path = with_props(tiny_onnx(tmp_path / "m.onnx"),
                      scaler=json.dumps({"x": {"mean": [20.0, 20.0], "std": [5.0, 5.0]}}))
    out, _ = run([path, "--info"])
    assert "the x scaling is in the graph: raw values in, model units out" in out, out


def test_info_on_a_hand_built_graph(tmp_path):
    out, _ = run([tiny_onnx(tmp_path / "m.onnx"), "--info"])
    assert "tiny.keras (sha256 abababababab" in out and "2.4e-07" in out and "sequence:" in out


# ---- live pipes ------------------------------------------------------------------------

def test_first_answer_comes_before_stdin_closes(model):
    rows = readings(5)
    live = Live([model, "--stream"])
    try:
        data = as_csv(rows).splitlines(keepends=True)
        live.send(data[0] + data[1])
        assert live.read_line().startswith("time,sensor,temperature,humidity,step,warmup")
        first = live.read_line()
        assert first.startswith("t00000,") and first.split(",")[4] == "1"
        live.send(data[2])                       # and the next one, still with stdin open
        assert live.read_line().startswith("t00001,")
        live.send(b"".join(data[3:]))
        out, _ = live.finish()
    finally:
        live.kill()
    assert len(split_lines(out)) == 3


def test_cli_matches_the_runtime_streams(model):
    rows = readings(40, sensors=("a",))
    out, _ = run([model, "--stream"], as_csv(rows))
    m = runtime.load(model, device="cpu")
    stream = m.stream()
    want = [stream.step(np.array([r["temperature"], r["humidity"]], np.float32))[0]
            for r in rows]
    np.testing.assert_allclose(preds(csv_rows(out)), want, rtol=RTOL, atol=ATOL)


# ---- one line out per line in, bad lines included --------------------------------------

BAD = [
    b"t9,a,21.0",                      # too few fields
    b"t9,a,21.0,40,7",                 # too many
    b"t9,a,warm,40",                   # not a number
    b"t9,a,inf,40",                    # not finite
    b"\x89PNG\r\x1a\x00\x00\xff",      # binary junk
    b"t9,a,21.0," + b"9" * (1 << 20),  # over-long
    b"t9,a,1e300,40",                  # beyond float32 (a blank line is no bad line: see test_bad_input)
    b't9,"a,21.0,40',                  # unbalanced quote
]


def test_bad_lines_give_error_records_and_leave_state_alone(model):
    rows = readings(60, seed=3)
    good = as_csv(rows).splitlines()
    mixed, bad_at = [good[0]], []
    for i, line in enumerate(good[1:]):
        if i % 7 == 3:
            mixed.append(BAD[len(bad_at) % len(BAD)])
            bad_at.append(len(mixed))          # 1-based line number of the bad line
        mixed.append(line)
    out, err = run([model, "--stream", "--stream-column", "sensor"], b"\n".join(mixed) + b"\n")
    out_lines = split_lines(out)
    assert len(out_lines) == len(mixed)
    rows_out = csv_rows(out)
    errors = [i + 2 for i, r in enumerate(rows_out) if r["error"]]
    assert errors == bad_at
    for n in bad_at:
        assert f"line {n}:" in err
    clean, _ = run([model, "--stream", "--stream-column", "sensor"], as_csv(rows))
    kept = [r for r in rows_out if not r["error"]]
    assert [r["time"] for r in kept] == [r["time"] for r in rows]
    np.testing.assert_allclose(preds(kept), preds(csv_rows(clean)), rtol=RTOL, atol=ATOL)
    assert [r["step"] for r in kept] == [r["step"] for r in csv_rows(clean)]


def test_strict_stops_at_the_first_bad_line(model):
    data = as_csv(readings(5)) + b"t9,a,oops,1\n" + as_csv(readings(5), header=False)
    out, err = run([model, "--strict"], data, code=1)
    assert len(split_lines(out)) == 6
    assert "line 7" in err and "'oops' is not a number" in err


# ---- formats ---------------------------------------------------------------------------

def test_csv_headerless_and_jsonl_agree(model):
    rows = readings(30, sensors=("a",), seed=5)
    csv_out, _ = run([model], as_csv(rows))
    bare = as_csv(rows, columns=FEATURES, header=False)
    bare_out, _ = run([model, "--stream"], bare)
    json_out, _ = run([model], as_jsonl(rows))
    want = preds(csv_rows(csv_out))
    bare_rows = [lines.split_csv(x) for x in split_lines(bare_out)]
    assert [r[:2] for r in bare_rows] == [lines.split_csv(x) for x in bare.decode().splitlines()]
    np.testing.assert_allclose([float(r[4]) for r in bare_rows], want, rtol=RTOL, atol=ATOL)
    objs = [json.loads(x) for x in split_lines(json_out)]
    assert [{k: o[k] for k in rows[0]} for o in objs] == rows      # the input passes through
    np.testing.assert_allclose([o["pred_temperature"] for o in objs], want, rtol=RTOL, atol=ATOL)
    assert [o["step"] for o in objs] == list(range(1, 31))
    assert all(o["warmup"] is False for o in objs)


def test_jsonl_errors_and_warmup(models):
    rows = readings(6, sensors=("a",))
    data = as_jsonl(rows[:3]) + b'{"sensor": "a", "temperature": \n' + as_jsonl(rows[3:])
    out, err = run([models["window"], "--stream", "--stream-column", "sensor"], data)
    objs = [json.loads(x) for x in split_lines(out)]
    assert len(objs) == 7 and "not valid JSON" in objs[3]["error"] and "line 4:" in err
    good = [o for o in objs if "error" not in o]
    assert [o["warmup"] for o in good] == [True, True, False, False, False, False]
    assert [o["pred_temperature"] is None for o in good] == [True, True, False, False, False,
                                                             False]


# ---- many sensors in one stream of lines -----------------------------------------------

@pytest.mark.parametrize("name", ["sequence", "window"])
def test_interleaved_sensors_equal_each_sensor_alone(models, name):
    rows = readings(300, sensors=("a", "b", "c", "d"), seed=7)
    model = models[name]
    together = {mode: csv_rows(run([model, *flags, "--stream-column", "sensor"],
                                   as_csv(rows))[0])
                for mode, flags in (("file", []), ("stream", ["--stream"]))}
    for sensor in "abcd":
        mine = [r for r in rows if r["sensor"] == sensor]
        alone = csv_rows(run([model, "--stream"], as_csv(mine))[0])
        for got in together.values():
            picked = [r for r in got if r["sensor"] == sensor]
            assert [r["step"] for r in picked] == [r["step"] for r in alone]
            assert [r["warmup"] for r in picked] == [r["warmup"] for r in alone]
            np.testing.assert_allclose(preds(picked), preds(alone), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["sequence", "window"])
def test_many_sensors_stepped_together_match_the_runtime_streams(models, name):
    """40 sensors, a few lines each per batch: the batched Model.step path of the tool."""
    sensors = tuple(f"s{i}" for i in range(40))
    rows = readings(400, sensors=sensors, seed=31)
    got = csv_rows(run([models[name], "--stream-column", "sensor"], as_csv(rows))[0])
    m = runtime.load(models[name], device="cpu")
    for sensor in sensors:
        mine = [r for r in rows if r["sensor"] == sensor]
        want = m.stream().feed(np.array([[r["temperature"], r["humidity"]] for r in mine]))
        picked = [r for r in got if r["sensor"] == sensor]
        assert [int(r["step"]) for r in picked] == list(range(1, len(mine) + 1))
        np.testing.assert_allclose(preds(picked), want[:, 0], rtol=RTOL, atol=ATOL)


def test_sensors_arriving_live_match_a_file_run(model):
    rows = readings(40, seed=11)
    data = as_csv(rows).splitlines(keepends=True)
    live = Live([model, "--stream", "--stream-column", "sensor"])
    try:
        live.send(data[0])
        got = [live.read_line()]
        for i in range(1, len(data), 4):          # a few lines at a time, answers read back
            live.send(b"".join(data[i:i + 4]))
            got += [live.read_line() for _ in data[i:i + 4]]
        live.finish()
    finally:
        live.kill()
    ref = csv_rows(run([model, "--stream-column", "sensor"], as_csv(rows))[0])
    np.testing.assert_allclose(preds(csv_rows("\n".join(got))), preds(ref), rtol=RTOL, atol=ATOL)


# ---- kill, restart, resume -------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_kill_and_resume_with_state(models, tmp_path, sig):
    model = models["window"]
    rows = readings(50, seed=13)
    whole = csv_rows(run([model, "--stream-column", "sensor"], as_csv(rows))[0])
    state = tmp_path / "state.npz"
    args = [model, "--stream", "--stream-column", "sensor", "--state", state]
    k = 23
    data = as_csv(rows[:k]).splitlines(keepends=True)
    live = Live(args)
    try:
        live.send(data[0])
        first = [live.read_line()]
        for line in data[1:]:
            live.send(line)
            first.append(live.read_line())
        live.proc.send_signal(sig)
        live.proc.wait(TIMEOUT)
        assert live.proc.returncode == 128 + sig, live.stderr()
    finally:
        live.kill()
    assert state.exists()
    second = csv_rows(run(args, as_csv(rows[k:]))[0])
    resumed = csv_rows("\n".join(first)) + second
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]
    np.testing.assert_allclose(preds(resumed), preds(whole), rtol=RTOL, atol=ATOL)


def test_save_every_survives_sigkill(model, tmp_path):
    rows = readings(30, seed=17)
    state = tmp_path / "state.npz"
    args = [model, "--stream", "--stream-column", "sensor", "--state", state, "--save-every", 1]
    k = 12
    data = as_csv(rows[:k]).splitlines(keepends=True)
    live = Live(args)
    try:
        live.send(b"".join(data))
        first = [live.read_line() for _ in data]
        deadline = time.monotonic() + 20       # the save follows the answers: wait for it
        while time.monotonic() < deadline:
            if state.exists() and sum(s.steps for s in runtime.load_snapshots(state).values()) == k:
                break
            time.sleep(0.02)
        live.proc.kill()
        live.proc.wait()
    finally:
        live.kill()
    second = csv_rows(run(args, as_csv(rows[k:]))[0])
    whole = csv_rows(run([model, "--stream-column", "sensor"], as_csv(rows))[0])
    resumed = csv_rows("\n".join(first)) + second
    np.testing.assert_allclose(preds(resumed), preds(whole), rtol=RTOL, atol=ATOL)


def test_state_of_another_model_is_refused(models, tmp_path):
    state = tmp_path / "state.npz"
    run([models["sequence"], "--state", state], as_csv(readings(5)))
    _, err = run([models["window"], "--state", state], as_csv(readings(5)), code=2)
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error:")


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(b"not a snapshot"), "neither a state database nor"),
    (lambda p: None, "not a writable directory"),
])
def test_unusable_state_file_is_one_line(model, tmp_path, make, says):
    state = tmp_path / "state.npz"
    make(state)
    if "directory" in says:
        state = tmp_path / "missing-folder" / "state.npz"
    out, err = run([model, "--state", state], as_csv(readings(5)), code=2)
    assert out == "" and says in err and len(err.strip().splitlines()) == 1, err


# ---- missing values --------------------------------------------------------------------

def test_missing_policies(model):
    data = b"temperature,humidity\n21,40\n22,\n23,41\n"
    out, err = run([model], data)
    assert csv_rows(out)[1]["error"] and "line 3:" in err
    skip = csv_rows(run([model, "--missing", "skip"], data)[0])
    assert not skip[1]["error"] and skip[1]["pred_temperature"] == ""
    hold = csv_rows(run([model, "--missing", "hold"], data)[0])
    held = csv_rows(run([model], b"temperature,humidity\n21,40\n22,40\n23,41\n")[0])
    np.testing.assert_allclose(preds(hold), preds(held), rtol=RTOL, atol=ATOL)


def answered(args, lines_in: list[bytes], stream: bool) -> tuple[str, str]:
    """lstm-run's stdout and stderr for ``lines_in``: in one batch, or with ``--stream`` one
    line at a time, each answer read before the next line is sent."""
    if not stream:
        return run(args, b"\n".join(lines_in) + b"\n")
    live = Live([*args, "--stream"])
    try:
        answers = []
        for line in lines_in:
            live.send(line + b"\n")
            answers.append(live.read_line())
        rest, err = live.finish()
    finally:
        live.kill()
    return "\n".join(answers) + "\n" + rest, err


@pytest.mark.parametrize("stream", [False, True], ids=["one batch", "line by line"])
def test_a_corrected_resend_of_a_skipped_reading_is_fed(tmp_path, stream):
    """--missing skip with a time column and --state: the line with a gap fed nothing, so it
    took no position, and the same time sent again whole is fed, not refused as fed."""
    model = tiny_onnx(tmp_path / "m.onnx")
    lines_in = [b"time,temperature,humidity", b"2022-01-01T00:00:00Z,20,40",
                b"2022-01-01T01:00:00Z,,41", b"2022-01-01T01:00:00Z,21,41",
                b"2022-01-01T02:00:00Z,22,41"]
    args = [model, "--missing", "skip", "--state", tmp_path / "s.db"]
    out, err = answered(args, lines_in, stream)
    rows = csv_rows(out)
    assert [r["step"] for r in rows] == ["1", "1", "2", "3"], out
    assert not any(r["error"] for r in rows) and "already fed" not in err, err
    fresh = csv_rows(run([model], b"temperature,humidity\n20,40\n21,41\n22,41\n")[0])
    np.testing.assert_allclose(preds(rows)[[0, 2, 3]], preds(fresh), rtol=RTOL, atol=ATOL)


HEADER_LATER = {
    # (options, the lines before the header, the header, the output's header)
    "--columns": (["--columns", "time,temperature,humidity"], b"2022-01-01T00:00:00Z,20,40\n",
                  b"time, Temperature,humidity\n",
                  "time,temperature,humidity,step,warmup,pred_temperature,order,error,input"),
    "--format headerless": (["--format", "headerless"], b"20,40\n", b"temperature,humidity\n",
                            "temperature,humidity,step,warmup,pred_temperature,error,input"),
    "header-less, time first": ([], b"2022-01-01T00:00:00Z,20,40\n",
                                b"timestamp,temperature,humidity\n",
                                "time,temperature,humidity,step,warmup,pred_temperature,order,"
                                "error,input"),
}


@pytest.mark.parametrize("case", list(HEADER_LATER))
def test_a_header_after_the_first_reading_is_answered_as_a_header(tmp_path, case):
    """Lines read without a header (--columns, header-less): a header line naming the
    columns, after readings (a logger that restarted), is answered with the output's
    header, as one first would be, not with an error record."""
    options, before, header, want = HEADER_LATER[case]
    model = tiny_onnx(tmp_path / "m.onnx")
    after = b"2022-01-01T01:00:00Z,21,41\n" if before.startswith(b"2022") else b"21,41\n"
    out, err = run([model, *options], before + header + after)
    answers = split_lines(out)
    assert len(answers) == 3 and answers[1] == want, out
    assert "line 2" not in err and "refused" not in err, err
    step = want.split(",").index("step")
    assert answers[2].split(",")[step] == "2", answers      # the reading after it: step 2
    _, err = run([model, *options], before + b"temperature,bogus\n", code=0)
    assert "line 2:" in err, err                              # a line naming other columns


# ---- what goes wrong before the first line ---------------------------------------------

@pytest.mark.parametrize("content", [None, b"", b"not an onnx file at all", b"\x08\x07" * 50])
def test_missing_or_corrupt_model_is_one_line(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    _, err = run([path], b"1,2\n", code=2)
    assert err.startswith("Error:") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("data", [b"", b"time,temperature,humidity\n"])
def test_empty_input_has_its_own_exit_code(model, data):
    _, err = run([model], data, code=3)
    assert "empty" in err and len(err.strip().splitlines()) == 1


def test_header_without_the_features_is_a_usage_error(model):
    _, err = run([model], b"time,pressure\n1,2\n", code=2)
    assert "'temperature', 'humidity'" in err
    _, err = run([model], b"21.3,warm\n1,2\n", code=2)       # a first sample with junk
    assert "read as a header" in err


def test_byte_order_mark_and_crlf(model):
    out, _ = run([model], b"\xef\xbb\xbftemperature,humidity\r\n21,40\r\n22,41\r\n")
    assert [r["step"] for r in csv_rows(out)] == ["1", "2"]


def test_help_documents_exit_codes(model):
    out, _ = run(["--help"])
    for words in ("Exit codes", "143", "pred_<target>", "--stream-column", "--save-every"):
        assert words in out


# ---- the server as a library -----------------------------------------------------------

def serve_bytes(model, data: bytes, **config) -> list[str]:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    out: list[str] = []
    try:
        serve(model, ServeConfig(**config), LineReader(r, gather=True), out.extend)
    finally:
        os.close(r)
    return out


def test_batched_rounds_and_chunked_feeds_agree(model):
    m = runtime.load(model, device="cpu")
    data = as_csv(readings(200, sensors=("a", "b"), seed=19))
    fed = serve_bytes(m, data, stream_column="sensor", chunked=True)      # 2 sensors: feed()
    stepped = serve_bytes(m, data, stream_column="sensor", chunked=False)  # rounds of step()
    assert len(fed) == len(stepped) == 201
    np.testing.assert_allclose(preds(csv_rows("\n".join(fed))),
                               preds(csv_rows("\n".join(stepped))), rtol=RTOL, atol=ATOL)


def test_lines_that_arrive_together_share_one_call(model, monkeypatch):
    m = runtime.load(model, device="cpu")
    calls = []
    step = m.step
    monkeypatch.setattr(m, "step", lambda streams, xs: calls.append(len(streams)) or step(
        streams, xs))
    server = Server(m, ServeConfig(stream_column="sensor"))
    server.handle([(1, b"sensor,temperature,humidity")])
    tick = [(i + 2, b"s%d,21,40" % i) for i in range(100)]
    assert len(server.handle(tick)) == 100
    assert calls == [100]                       # 100 sensors, one line each: one call
    server.handle([(102, b"s1,21,40"), (103, b"s2,21,40"), (104, b"s1,22,41")])
    assert calls[1:] == [2, 1]                  # s1 twice: two rounds, in order


def test_max_streams_drops_the_least_recently_seen(model):
    m = runtime.load(model, device="cpu")
    warned = []
    server = Server(m, ServeConfig(stream_column="sensor", max_streams=2), warn=warned.append)
    server.handle([(1, b"sensor,temperature,humidity")])
    server.handle([(2, b"a,1,2"), (3, b"b,1,2")])
    server.handle([(4, b"c,1,2")])
    assert list(server.sensors) == ["b", "c"] and "dropped stream 'a'" in warned[0]
    out = server.handle([(5, b"a,1,2")])
    assert out[0].split(",")[3] == "1"         # a starts again from step 1


def test_idle_streams_are_dropped(model, monkeypatch):
    now = [1000.0]                                 # the server's monotonic clock, in seconds
    monkeypatch.setattr(runtime.serve, "time", SimpleNamespace(monotonic=lambda: now[0],
                                                               time=time.time))
    m = runtime.load(model, device="cpu")
    warned = []
    server = Server(m, ServeConfig(stream_column="sensor", idle_timeout=0.05),
                    warn=warned.append)
    server.handle([(1, b"sensor,temperature,humidity"), (2, b"a,1,2")])
    now[0] += 0.03
    server.handle([(3, b"b,1,2")])
    assert list(server.sensors) == ["a", "b"] and not warned     # 0.03 s of silence: kept
    now[0] += 0.03
    server.handle([(4, b"b,1,2")])                  # a: 0.06 s of silence, b: 0.03 s
    assert list(server.sensors) == ["b"] and len(warned) == 1
    assert "'a'" in warned[0] and "idle-timeout" in warned[0]


def test_junk_never_raises_and_keeps_one_line_per_line(model):
    """Random bytes, cut at newlines: every line gets exactly one answer, nothing raises."""
    m = runtime.load(model, device="cpu")
    rng = np.random.default_rng(23)
    junk = [bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8)).replace(
        b"\n", b"") for _ in range(300)]
    for head in (b"time,sensor,temperature,humidity", b'{"sensor": "a"}', b"1,2"):
        server = Server(m, ServeConfig(stream_column=None if head == b"1,2" else "sensor"))
        batch = [(i + 1, raw) for i, raw in enumerate([head] + junk)]
        out = server.handle(batch)
        assert len(out) == len(batch) and all("\n" not in line for line in out)


# ---- overrides, devices, a reader that goes away --------------------------------------

def test_window_and_carry_state_overrides(models):
    out, _ = run([models["window"], "--info", "--carry-state"])
    assert "stateful:" in out
    rows = readings(8, sensors=("a",))
    got = csv_rows(run([models["window"], "--window", "5"], as_csv(rows))[0])
    assert [r["warmup"] for r in got] == ["true"] * 4 + ["false"] * 4


def test_a_reader_that_goes_away_ends_the_run_quietly(model, tmp_path):
    state = tmp_path / "state.npz"
    live = Live([model, "--stream", "--state", state])
    try:
        data = as_csv(readings(10, sensors=("a",))).splitlines(keepends=True)
        live.send(b"".join(data[:3]))
        live.read_line()
        live.proc.stdout.close()
        with pytest.raises((BrokenPipeError, OSError)):
            for line in data[3:] * 2000:        # until the tool notices its reader is gone
                live.send(line)
        live.proc.wait(TIMEOUT)
        stderr = live.proc.stderr.read().decode()
        assert live.proc.returncode == 141 and "Traceback" not in stderr, stderr
    finally:
        live.kill()
    assert state.exists()


@pytest.mark.gpu
def test_cuda_matches_cpu(model):
    try:
        runtime.load(model, device="cuda")
    except runtime.DeviceError as exc:
        pytest.skip(f"no working CUDA execution provider: {exc}")
    rows = readings(200, seed=29)
    cpu = csv_rows(run([model, "--device", "cpu", "--stream-column", "sensor"], as_csv(rows))[0])
    gpu = csv_rows(run([model, "--device", "cuda", "--stream-column", "sensor"], as_csv(rows))[0])
    np.testing.assert_allclose(preds(gpu), preds(cpu), rtol=1e-4, atol=1e-4)


def test_the_tool_imports_no_tensorflow_keras_or_trainer():
    code = ("import sys, runtime.cli, runtime.serve, runtime.lines; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'keras', 'trainer', 'tf2onnx', 'onnx'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=TIMEOUT)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_window_given_to_a_sequence_file_says_it_keeps_carrying_the_state(tmp_path):
    """--window 3 alone on a sequence-mode file runs stateful windows, which no Keras predict
    of a stateless model gives: said once, with the option a create_dataset model needs."""
    model = tiny_onnx(tmp_path / "seq.onnx", window=1, carry_state=True)
    data = b"temperature,humidity\n" + b"21.0,40.0\n" * 4
    _, err = run([model, "--window", "3"], data)
    assert err.count("--window 3 on a sequence-mode file keeps carrying the state") == 1, err
    assert "--window 3 --no-carry-state" in err
    _, err = run([model, "--window", "3", "--no-carry-state"], data)
    assert "keeps carrying" not in err, err


@pytest.mark.parametrize("stream", [False, True], ids=["one batch", "line by line"])
def test_hold_a_first_gap_is_skipped_and_its_corrected_resend_fed(tmp_path, stream):
    """--missing hold with nothing to hold skips the gap, which takes no position; a later
    gap is fed with the held value, so it keeps its position: sent again whole with other
    values it is a conflict (an error record), sent again as it was a replay."""
    model = tiny_onnx(tmp_path / "m.onnx")
    lines_in = [b"time,temperature,humidity", b"2022-01-01T00:00:00Z,,40",
                b"2022-01-01T00:00:00Z,20,40", b"2022-01-01T01:00:00Z,,41",
                b"2022-01-01T01:00:00Z,,41", b"2022-01-01T01:00:00Z,21,41"]
    args = [model, "--missing", "hold", "--state", tmp_path / "s.db"]
    out, err = answered(args, lines_in, stream)
    rows = csv_rows(out)
    assert [r["step"] for r in rows] == ["0", "1", "2", "2", ""], out
    assert [r["order"] for r in rows][:4] == ["", "", "", "replay"], out
    assert "already fed with other values" in rows[4]["error"], out
    fresh = csv_rows(run([model], b"temperature,humidity\n20,40\n20,41\n")[0])
    np.testing.assert_allclose(preds(rows)[[1, 2]], preds(fresh), rtol=RTOL, atol=ATOL)
