"""Nothing lost under bad input of every kind, and under the failures once seen.

Every bad input here is checked for the same things: a clear message (what was wrong, in
words), docs/lstm-run.md's exit code, no traceback, N lines in = N lines out where lines go in,
and the state untouched (the stream's snapshot, or the ``--state`` file byte for byte, or
the state a clean run of the good lines alone leaves). Lines are batched through one
``lstm-run`` per format; the models are tiny graphs built by hand, so the file runs in
seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime

from helpers import ATOL, LSTM_RUN, RTOL, TIMEOUT, csv_rows, preds, split_lines, tiny_onnx

ROOT = Path(__file__).resolve().parent.parent
HEADER = b"time,sensor,temperature,humidity"


# ---- models and helpers ----------------------------------------------------------------

def failing_onnx(path: Path, shape: list[int]) -> Path:
    """The tiny graph with its output sent through ``Reshape(shape)``: it loads and holds to
    the contract, and fails inside ONNX Runtime whenever y's size is not ``prod(shape)``."""
    import onnx
    from onnx import helper, numpy_helper

    tiny_onnx(path)
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        if "y" in node.output:
            node.output[list(node.output).index("y")] = "y_pre"
    graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "bad_shape"))
    graph.node.append(helper.make_node("Reshape", ["y_pre", "bad_shape"], ["y"]))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fault-models")
    return {"tiny": tiny_onnx(d / "tiny.onnx"),
            "other": tiny_onnx(d / "other.onnx", seed=5),
            "window": tiny_onnx(d / "window.onnx", window=3, carry_state=False, seed=1),
            "always": failing_onnx(d / "always.onnx", [2, 2, 2]),
            "one": failing_onnx(d / "one.onnx", [1, 1, 1])}   # batch 1, time 1 only


def lstm_run(args, data: bytes = b"", *, env=None, timeout: float = TIMEOUT):
    full_env = dict(os.environ, **(env or {}))
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name)
    proc = subprocess.run(LSTM_RUN + [str(a) for a in args], input=data, capture_output=True,
                          timeout=timeout, cwd=ROOT, env=full_env)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def one_line_error(code: int, err: str, want_code: int, says: str) -> None:
    assert code == want_code, f"exit {code}, expected {want_code}; stderr:\n{err}"
    assert "Traceback" not in err and "Warning" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("Error:") and says.lower() in lines[-1].lower(), err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def sample_rows(n: int, sensors=("a", "b"), seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [f"t{i},{sensors[i % len(sensors)]},{rng.normal(21, 3):.2f},{rng.normal(45, 8):.2f}"
            .encode() for i in range(n)]


def db_rows(path: Path) -> dict[str, tuple]:
    """Each sensor's step count and state values, as the database holds them."""
    return {k: (s.steps, np.concatenate([np.ravel(v) for v in s.state.values()]))
            for k, s in runtime.load_snapshots(path).items()}


def same_state(a: Path, b: Path) -> None:
    ra, rb = db_rows(a), db_rows(b)
    assert sorted(ra) == sorted(rb)
    for key in ra:
        assert ra[key][0] == rb[key][0], key
        np.testing.assert_allclose(ra[key][1], rb[key][1], rtol=RTOL, atol=ATOL)


# ---- bad lines on stdin: one run per format, every case checked ------------------------

CSV_BAD = [
    ("too-few-fields", b"t,a,21", "expected 4 comma-separated fields"),
    ("too-many-fields", b"t,a,21,40,5", "got 5"),
    ("semicolon", b"t,a,21;40", "got 3"),
    ("text", b"t,a,abc,40", "'abc' is not a number"),
    ("hex", b"t,a,0x10,40", "'0x10' is not a number"),
    ("two-signs", b"t,a,+-1,40", "'+-1' is not a number"),
    ("boolean", b"t,a,true,40", "'true' is not a number"),
    ("escape-char", b"t,a,\x1b,40", "is not a number"),
    ("inf", b"t,a,inf,40", "inf in temperature"),
    ("minus-inf", b"t,a,21,-inf", "inf in humidity"),
    ("nan-and-inf", b"t,a,NaN,inf", "inf in humidity"),
    ("float32-overflow", b"t,a,1e300,40", "beyond float32's range"),
    ("float32-overflow-neg", b"t,a,21,-1e39", "beyond float32's range"),
    ("empty-sensor", b"t,,21,40", "--stream-column 'sensor' is empty"),
    ("missing-value", b"t,a,,40", "NaN (missing) in temperature"),
    ("nan-token", b"t,a,21,nan", "NaN (missing) in humidity"),
    ("unterminated-quote", b't,a,"21.5,40', "broken CSV quoting"),
    ("junk-after-quote", b't,a,"21"x,40', "broken CSV quoting"),
    ("nul-byte", b"t,a,21,4\x000", "not UTF-8 text"),
    ("not-utf8", b"\xff\xfe,a,1,2", "not UTF-8 text"),
    ("latin-1", b"t,a \xb0C,1,2", "0xb0, '\u00b0' in Latin-1; write UTF-8 (e.g. pipe the feed "
                                  "through iconv -f latin1 -t utf-8)"),
    ("png-bytes", b"\x89PNG\r\x1a\x00\x00\xff", "not UTF-8 text"),
    ("over-long", b"t,a,21," + b"9" * (1 << 20), "longer than"),
]

JSONL_BAD = [
    ("broken-json", b'{"sensor": "a", ', "not valid JSON"),
    ("trailing-junk", b'{"sensor": "a", "temperature": 1, "humidity": 2} x', "not valid JSON"),
    ("array", b"[1, 2]", "expected a JSON object"),
    ("string", b'"x"', "expected a JSON object"),
    ("number", b"42", "expected a JSON object"),
    ("null", b"null", "expected a JSON object"),
    ("deep-nesting", b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    ("no-sensor-key", b'{"temperature": 1, "humidity": 2}', "no 'sensor' key"),
    ("bool-feature", b'{"sensor": "a", "temperature": true, "humidity": 2}', "is not a number"),
    ("list-feature", b'{"sensor": "a", "temperature": [1], "humidity": 2}', "is not a number"),
    ("object-feature", b'{"sensor": "a", "temperature": {}, "humidity": 2}', "is not a number"),
    ("text-feature", b'{"sensor": "a", "temperature": "warm", "humidity": 2}',
     "'warm' is not a number"),
    ("json-overflow", b'{"sensor": "a", "temperature": 1e400, "humidity": 2}', "inf in"),
    ("float32-overflow", b'{"sensor": "a", "temperature": 1e300, "humidity": 2}',
     "beyond float32's range"),
    ("huge-int", b'{"sensor": "a", "temperature": 1' + b"0" * 400 + b', "humidity": 2}', "inf in"),
    ("nan-literal", b'{"sensor": "a", "temperature": NaN, "humidity": 2}', "NaN (missing)"),
    ("infinity-literal", b'{"sensor": "a", "temperature": -Infinity, "humidity": 2}', "inf in"),
    ("missing-feature", b'{"sensor": "a", "temperature": 21}', "NaN (missing) in humidity"),
    ("duplicate-key", b'{"sensor": "a", "temperature": 1, "temperature": "x", "humidity": 2}',
     "'x' is not a number"),
    ("not-utf8", b'{"sensor": "\xff", "temperature": 1, "humidity": 2}', "not UTF-8 text"),
]

HEADERLESS_BAD = [
    ("count", b"21", "expected 2 comma-separated values"),
    ("three", b"21,40,1", "got 3"),
    ("letters", b"21,abc", "'abc' is not a number"),
    ("overflow", b"3.5e38,40", "beyond float32's range"),
]


def interleave(bad: list[tuple], good: list[bytes]) -> tuple[list[bytes], dict[str, int]]:
    """Good lines with a bad one after each of the first ones; where each bad line landed."""
    lines, where = [], {}
    for i, line in enumerate(good):
        lines.append(line)
        if i < len(bad):
            lines.append(bad[i][1])
            where[bad[i][0]] = len(lines) - 1    # 0-based index among the data lines
    return lines, where


def batch_run(tmp: Path, name: str, header: bytes | None, bad, good, args) -> dict:
    """One lstm-run over the mixed lines and one over the good lines alone, both with --state."""
    mixed, where = interleave(bad, good)
    head = [header] if header else []
    result = {}
    for kind, body in (("mixed", mixed), ("clean", good)):
        state = tmp / f"{name}-{kind}.db"
        code, out, err = lstm_run(args + ["--state", state], b"\n".join(head + body) + b"\n")
        result[kind] = {"code": code, "out": out.decode(), "err": err, "state": state,
                        "lines": len(head + body)}
    result["where"] = {k: v + len(head) for k, v in where.items()}   # index in the output
    return result


@pytest.fixture(scope="module")
def csv_batch(models, tmp_path_factory):
    return batch_run(tmp_path_factory.mktemp("csv"), "csv", HEADER, CSV_BAD,
                     sample_rows(len(CSV_BAD) + 6), [models["tiny"], "--stream-column", "sensor"])


@pytest.fixture(scope="module")
def jsonl_batch(models, tmp_path_factory):
    good = [json.dumps({"sensor": "ab"[i % 2], "temperature": 20 + i % 5, "humidity": 40 + i})
            .encode() for i in range(len(JSONL_BAD) + 6)]
    return batch_run(tmp_path_factory.mktemp("jsonl"), "jsonl", None, JSONL_BAD, good,
                     [models["tiny"], "--stream-column", "sensor", "--format", "jsonl"])


@pytest.fixture(scope="module")
def headerless_batch(models, tmp_path_factory):
    good = [f"{20 + i % 5},{40 + i}".encode() for i in range(len(HEADERLESS_BAD) + 4)]
    return batch_run(tmp_path_factory.mktemp("headerless"), "headerless", None, HEADERLESS_BAD,
                     good, [models["tiny"], "--format", "headerless"])


def check_batch(result, case: str, says: str, fmt: str) -> None:
    mixed, clean = result["mixed"], result["clean"]
    for run in (mixed, clean):
        assert run["code"] == 0, run["err"]
        assert "Traceback" not in run["err"] and "Warning" not in run["err"], run["err"]
    out = split_lines(mixed["out"])
    assert len(out) == mixed["lines"]                          # N lines in, N lines out
    out[-1].encode("utf-8")
    at = result["where"][case]
    line = out[at]
    if fmt == "jsonl":
        assert says in json.loads(line)["error"], line
    else:
        import csv
        assert says in next(csv.reader([line]))[-2], line        # error, then input
    assert f"line {at + 1}: " in mixed["err"]
    # The bad lines touched no stream: the good lines' answers and the saved state are those
    # of a run without them.
    same_state(mixed["state"], clean["state"])
    if fmt == "jsonl":
        got = [json.loads(x) for x in out if "error" not in json.loads(x)]
        ref = [json.loads(x) for x in split_lines(clean["out"])]
        assert [g["step"] for g in got] == [r["step"] for r in ref]
        np.testing.assert_allclose([g["pred_temperature"] for g in got],
                                   [r["pred_temperature"] for r in ref], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case, raw, says", CSV_BAD, ids=[c[0] for c in CSV_BAD])
def test_bad_csv_line(csv_batch, case, raw, says):
    check_batch(csv_batch, case, says, "csv")
    good = [r for r in csv_rows(csv_batch["mixed"]["out"]) if not r["error"]]
    ref = csv_rows(csv_batch["clean"]["out"])
    assert [r["step"] for r in good] == [r["step"] for r in ref]
    np.testing.assert_allclose(preds(good), preds(ref), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case, raw, says", JSONL_BAD, ids=[c[0] for c in JSONL_BAD])
def test_bad_jsonl_line(jsonl_batch, case, raw, says):
    check_batch(jsonl_batch, case, says, "jsonl")


@pytest.mark.parametrize("case, raw, says", HEADERLESS_BAD, ids=[c[0] for c in HEADERLESS_BAD])
def test_bad_headerless_line(headerless_batch, case, raw, says):
    check_batch(headerless_batch, case, says, "headerless")


# ---- bad model files: exit 2, one line, the state file untouched -----------------------

@pytest.fixture(scope="module")
def saved_state(models, tmp_path_factory) -> Path:
    """A state database of the tiny model after a few lines."""
    path = tmp_path_factory.mktemp("saved") / "state.db"
    code, _, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", path],
                            b"\n".join([HEADER] + sample_rows(6)) + b"\n")
    assert code == 0, err
    return path


def _plain_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "plain",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _bad_metadata(path: Path, tiny: Path) -> None:
    import onnx
    model = onnx.load(str(tiny))
    for prop in model.metadata_props:
        if prop.key == "lstm_edge.state":
            prop.value = "{not json"
    onnx.save(model, str(path))


MODEL_FILES = [
    ("missing", lambda p, m: None, "does not exist"),
    ("empty", lambda p, m: p.write_bytes(b""), "not an ONNX model"),
    ("text", lambda p, m: p.write_text("not an onnx file at all"), "not an ONNX model"),
    ("random-bytes", lambda p, m: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     "not an ONNX model"),
    ("truncated", lambda p, m: p.write_bytes(m["tiny"].read_bytes()[:300]), "not an ONNX model"),
    ("keras-zip", lambda p, m: p.write_bytes(b"PK\x03\x04" + bytes(200)), "not an ONNX model"),
    ("plain-graph", lambda p, m: _plain_graph(p), "does not match the contract"),
    ("bad-metadata", lambda p, m: _bad_metadata(p, m["tiny"]), "lstm_edge.state"),
    ("fails-when-run", lambda p, m: shutil.copy(m["always"], p), "ONNX Runtime could not run"),
]


@pytest.mark.parametrize("case, make, says", MODEL_FILES, ids=[c[0] for c in MODEL_FILES])
def test_bad_model_file(models, saved_state, tmp_path, case, make, says):
    path = tmp_path / "model.onnx"
    make(path, models)
    state = tmp_path / "state.db"
    if case == "fails-when-run":     # a state of this very model, so that it loads
        code, _, err = lstm_run([path, "--state", state], b"temperature,humidity\n", env={})
        assert code == 3, err
    elif saved_state.exists():
        shutil.copy(saved_state, state)
    before = digest(state)
    code, out, err = lstm_run([path, "--stream-column", "sensor", "--state", state],
                              b"\n".join([HEADER] + sample_rows(3)) + b"\n")
    one_line_error(code, err, 2, says)
    assert out == b"" and digest(state) == before


def test_directory_as_model(tmp_path):
    code, _, err = lstm_run([tmp_path], b"1,2\n")
    assert code == 2 and "Traceback" not in err and "directory" in err.lower(), err


# ---- bad state files: exit 2, one line naming the file, the file untouched -------------

def _npz(models, tmp: Path, change) -> Path:
    """An npz state file of the tiny model, one field of one stream changed."""
    model = runtime.load(models["tiny"], device="cpu")
    streams = {"a": model.stream(), "b": model.stream()}
    for s in streams.values():
        s.feed(np.array([[21.0, 40.0], [22.0, 41.0]]))
    snaps = {k: s.snapshot() for k, s in streams.items()}
    snaps["b"] = change(snaps["b"])
    path = tmp / "state.npz"
    runtime.save_snapshots(path, snaps)
    return path


def _with(**changes):
    from dataclasses import replace
    return lambda snap: replace(snap, **{k: v(snap) if callable(v) else v
                                         for k, v in changes.items()})


def _db(models, tmp: Path, sql: str, params=()) -> Path:
    """A state database of the tiny model with one statement run on it."""
    path = tmp / "state.db"
    code, _, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", path],
                            b"\n".join([HEADER] + sample_rows(4)) + b"\n")
    assert code == 0, err
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()
    return path


def _db_state(models, tmp: Path, key: str, state=None, **changes) -> Path:
    """A state database whose sensor ``key`` holds a changed, validly encoded state."""
    from runtime.state import StreamState
    path = _db(models, tmp, "SELECT 1")
    db = sqlite3.connect(path)
    (blob,), = db.execute("SELECT state FROM streams WHERE key = ?", (key,)).fetchall()
    if state is not None:
        changes["state"] = state
    snap = _with(**changes)(StreamState.from_bytes(blob))
    db.execute("UPDATE streams SET state = ? WHERE key = ?", (snap.to_bytes(), key))
    db.commit()
    db.close()
    return path


def _db_flip(models, tmp: Path, key: str) -> Path:
    """A state database with one bit of sensor ``key``'s stored state flipped."""
    path = _db(models, tmp, "SELECT 1")
    db = sqlite3.connect(path)
    (blob,), = db.execute("SELECT state FROM streams WHERE key = ?", (key,)).fetchall()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    db.execute("UPDATE streams SET state = ? WHERE key = ?", (bytes(flipped), key))
    db.commit()
    db.close()
    return path


def _foreign(tmp: Path) -> Path:
    path = tmp / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    return path


STATE_FILES = [
    ("text", lambda m, t: (t / "s").write_bytes(b"not a snapshot") and t / "s",
     "neither a state database nor"),
    ("truncated-db", lambda m, t: _truncated(_db(m, t, "SELECT 1")), "state"),
    ("foreign-db", lambda m, t: _foreign(t), "another program"),
    ("db-other-model", lambda m, t: _db(m, t, "UPDATE meta SET value = 'ab' WHERE name = "
                                              "'fingerprint'"), "another model"),
    ("db-nan-state", lambda m, t: _db_state(m, t, "a", lambda s: {
        **s.state, "in_h0": np.full(4, np.nan, np.float32)}), "sensor 'a': its state: state "
                                                             "in_h0 holds NaN or inf"),
    ("db-negative-steps", lambda m, t: _db(m, t, "UPDATE streams SET steps = -5 WHERE key = 'b'"),
     "sensor 'b': its step count is -5"),
    ("db-short-state", lambda m, t: _db(m, t, "UPDATE streams SET state = x'00' WHERE key = 'a'"),
     "sensor 'a': its state is not a snapshot file or stream state"),
    ("db-inf-buffer", lambda m, t: _db_state(m, t, "a", buffer=lambda s: s.buffer * np.inf),
     "window buffer holds NaN or inf"),
    ("db-flipped-bit", lambda m, t: _db_flip(m, t, "a"), "sensor 'a': its state fails its "
                                                         "checksum"),
    ("db-newer-format", lambda m, t: _db(m, t, "UPDATE meta SET value = '99' WHERE name = "
                                               "'format'"), "upgrade lstm-edge"),
    ("db-other-window", lambda m, t: _db(m, t, "UPDATE meta SET value = '7' WHERE name = "
                                               "'window'"), "window=7"),
    ("npz-nan-state", lambda m, t: _npz(m, t, _with(state=lambda s: {
        **s.state, "in_h0": np.full(4, np.nan, np.float32)})), "sensor 'b'"),
    ("npz-inf-buffer", lambda m, t: _npz(m, t, _with(buffer=lambda s: s.buffer * np.inf)),
     "NaN or inf"),
    ("npz-negative-steps", lambda m, t: _npz(m, t, _with(steps=-5)), "step count of -5"),
    ("npz-wrong-shape", lambda m, t: _npz(m, t, _with(state=lambda s: {
        **s.state, "in_c0": np.zeros(7, np.float32)})), "expected (4,)"),
    ("npz-other-model", lambda m, t: _npz(m, t, _with(fingerprint="cd" * 32)), "another model"),
    ("npz-truncated", lambda m, t: _cut(_npz(m, t, lambda s: s)), "not a snapshot file"),
]


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:1024])
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def _cut(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize("case, make, says", STATE_FILES, ids=[c[0] for c in STATE_FILES])
def test_bad_state_file(models, tmp_path, case, make, says):
    path = make(models, tmp_path)
    before = digest(path)
    code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", path],
                              b"\n".join([HEADER] + sample_rows(3)) + b"\n")
    one_line_error(code, err, 2, says)
    assert str(path) in err and out == b""
    assert digest(path) == before                               # never overwritten


@pytest.mark.parametrize("case", ["directory", "missing-folder"])
def test_state_path_that_cannot_be_a_file(models, tmp_path, case):
    path = tmp_path if case == "directory" else tmp_path / "no" / "state.db"
    code, _, err = lstm_run([models["tiny"], "--state", path], b"temperature,humidity\n1,2\n")
    one_line_error(code, err, 2, "directory")


# ---- bad options and inputs that stop the run before the first answer ------------------

USAGE = [
    ("save-every-without-state", ["--save-every", "5"], b"1,2\n", "--save-every needs --state"),
    ("format", ["--format", "xml"], b"1,2\n", "'xml' is not one of"),
    ("max-streams-0", ["--max-streams", "0"], b"1,2\n", "0 is not in the range"),
    ("window-0", ["--window", "0"], b"1,2\n", "0 is not in the range"),
    ("idle-timeout-0", ["--idle-timeout", "0"], b"1,2\n", "0 is not in the range"),
    ("missing-policy", ["--missing", "guess"], b"1,2\n", "'guess' is not one of"),
    ("device", ["--device", "tpu"], b"1,2\n", "unknown device 'tpu'"),
    ("input-missing", ["-i", "/nonexistent/file.csv"], b"", "does not exist"),
    ("header-without-features", [], b"time,pressure\n1,2\n", "no column for the model's"),
    ("duplicate-feature-column", [], b"time,temperature,humidity,temperature\n1,2,3,4\n",
     "names a column twice"),
    ("duplicate-loose-column", [], b"TEMPERATURE,humidity, Temperature\n1,2,3\n",
     "names a column twice"),
    ("stream-column-not-in-header", ["--stream-column", "sensor"],
     b"temperature,humidity\n1,2\n", "no --stream-column 'sensor'"),
    ("stream-column-headerless", ["--stream-column", "sensor"], b"1,2\n", "needs a CSV header"),
    ("over-long-first-line", [], b"9" * (1 << 20 + 1) + b"\n", "cannot tell the input format"),
    ("binary-first-line", [], b"\xff\xd8\xff\xe0\n1,2\n", "not UTF-8 text"),
]


@pytest.mark.parametrize("case, args, data, says", USAGE, ids=[c[0] for c in USAGE])
def test_bad_options_and_first_lines(models, saved_state, tmp_path, case, args, data, says):
    state = tmp_path / "state.db"
    shutil.copy(saved_state, state)
    before = digest(state)
    extra = [] if "save-every" in case else ["--state", state]
    code, out, err = lstm_run([models["tiny"], *args, *extra], data)
    assert code == 2, err
    assert "Traceback" not in err and says in err, err
    assert out == b"" and digest(state) == before


def test_output_to_a_full_disk(models, tmp_path):
    """-o /dev/full: exit 2 with the reason; the state counts none of the lost answers."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    state = tmp_path / "state.db"
    code, _, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", state,
                             "-o", "/dev/full"], b"\n".join([HEADER] + sample_rows(5)) + b"\n")
    one_line_error(code, err, 2, "No space left on device")
    assert sum(s.steps for s in runtime.load_snapshots(state).values()) == 0


@pytest.mark.parametrize("unbuffered", ["1", None])
def test_a_closed_stdout_is_one_error_line(models, unbuffered):
    """Started with stdout closed (``>&-``): exit 2 and one line, as for a full disk."""
    proc = subprocess.run(LSTM_RUN + [str(models["tiny"]), "--stream-column", "sensor"],
                          input=b"\n".join([HEADER] + sample_rows(3)) + b"\n",
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT,
                          cwd=ROOT, env={k: v for k, v in dict(
                              os.environ, PYTHONUNBUFFERED=unbuffered).items() if v},
                          preexec_fn=lambda: os.close(1))
    one_line_error(proc.returncode, proc.stderr.decode(), 2, "cannot write stdout: it is closed")


def test_append_cuts_an_answer_a_failed_write_left_short(models, tmp_path):
    """-o FILE --append after a write failed mid-line (a full disk): the cut line is removed
    and said, and the next answers start on a line of their own, every line whole."""
    log = tmp_path / "answers.csv"
    data = b"\n".join([HEADER] + sample_rows(3)) + b"\n"
    args = [models["tiny"], "--stream-column", "sensor", "-o", log, "--append"]
    code, _, err = lstm_run(args, data)
    assert code == 0, err
    whole = log.read_bytes()
    log.write_bytes(whole + b"2026-01-01T00:00:00,s0,21.5,4")         # cut mid-number
    code, _, err = lstm_run(args, data)
    assert code == 0 and "ended in an answer cut short (29 bytes without a newline" in err, err
    assert log.read_bytes() == whole + whole
    code, _, err = lstm_run(args, data)                 # a whole last line: nothing to say
    assert code == 0 and "cut short" not in err and log.read_bytes() == whole * 3


# ---- lstm-train: bad data, exit 2 before TensorFlow --------------------------------------

def lstm_train(args):
    exe = Path(sys.executable).parent / "lstm-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from trainer.cli import train_main; train_main()"]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, timeout=300,
                          cwd=ROOT)
    return proc.returncode, proc.stderr.decode(errors="replace")


TRAIN_BAD = [
    ("ffill-empty-column", ["--missing", "ffill"], "'Pressure [bar]' have no values at all"),
    ("drop-empty-column", ["--missing", "drop"], "'Pressure [bar]' have no values at all"),
    ("interpolate-empty-column", ["--missing", "interpolate"], "'Pressure [bar]' have no values"),
    ("unknown-target", ["--target", "nope"], "no numeric column 'nope'"),
]


@pytest.mark.parametrize("case, args, says", TRAIN_BAD, ids=[c[0] for c in TRAIN_BAD])
def test_lstm_train_bad_data(tmp_path, case, args, says):
    pytest.importorskip("keras")
    csv = tmp_path / "data.csv"
    rows = [f"2024-01-{i % 28 + 1:02d}T{i % 24:02d}:00,{100 + i % 7},"
            for i in range(60)]
    csv.write_text("time,Water flow [l/s],Pressure [bar]\n" + "\n".join(rows) + "\n")
    target = [] if "--target" in args else ["--target", "Water flow [l/s]"]
    code, err = lstm_train([csv, *target, *args, "-o", tmp_path / "m.keras"])
    assert code == 2 and "Traceback" not in err and says in err, err
    assert not (tmp_path / "m.keras").exists()


# ---- the runtime API -------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(models):
    return runtime.load(models["tiny"], device="cpu")


def _fed(model):
    s = model.stream()
    s.feed(np.array([[21.0, 40.0], [23.0, 42.0]]))
    return s


def _same(a: runtime.Snapshot, b: runtime.Snapshot) -> None:
    assert a.steps == b.steps
    np.testing.assert_array_equal(a.buffer, b.buffer)
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k])


@pytest.mark.parametrize("value", [1, 0, True, False, 2.5, [1, 2], {"a": 1}, object()],
                         ids=["int-1", "int-0", "True", "False", "float", "list", "dict",
                              "object"])
def test_stream_refuses_what_is_not_a_snapshot(api, value):
    """Item 4: an int is never taken for a file descriptor (0 would read stdin, 1 close
    stdout); anything but a Snapshot, a path or bytes is refused by its type."""
    before = [os.fstat(fd).st_ino for fd in (0, 1, 2)]
    with pytest.raises(runtime.SnapshotError, match="stream\\(\\) takes a Snapshot"):
        api.stream(value)
    assert [os.fstat(fd).st_ino for fd in (0, 1, 2)] == before


def test_stream_takes_a_snapshot_its_path_or_its_bytes(api, tmp_path):
    stream = _fed(api)
    path = stream.snapshot().save(tmp_path / "one.npz")
    for source in (stream.snapshot(), path, str(path), path.read_bytes(),
                   bytearray(path.read_bytes())):
        _same(api.stream(source).snapshot(), stream.snapshot())


def _snap_with(snap, **changes):
    from dataclasses import replace
    return replace(snap, **changes)


BAD_SNAPSHOTS = [
    ("nan-state", lambda s: _snap_with(s, state={**s.state, "in_h0": s.state["in_h0"] * np.nan}),
     "in_h0 holds NaN or inf"),
    ("inf-state", lambda s: _snap_with(s, state={**s.state, "in_c0": s.state["in_c0"] + np.inf}),
     "in_c0 holds NaN or inf"),
    ("negative-steps", lambda s: _snap_with(s, steps=-5), "step count is -5"),
    ("fractional-steps", lambda s: _snap_with(s, steps=1.5), "step count is 1.5"),
    ("bool-steps", lambda s: _snap_with(s, steps=True), "step count is True"),
    ("buffer-longer-than-steps", lambda s: _snap_with(s, steps=0), "after 0 steps"),
    ("inf-buffer", lambda s: _snap_with(s, buffer=s.buffer * np.inf), "NaN or inf"),
    ("wrong-state-shape", lambda s: _snap_with(s, state={**s.state, "in_h0": np.zeros(5)}),
     "expected (4,)"),
    ("text-state", lambda s: _snap_with(s, state={**s.state, "in_h0": np.array(["a"] * 4)}),
     "numbers"),
    ("missing-state", lambda s: _snap_with(s, state={"in_h0": s.state["in_h0"]}),
     "needs ('in_h0', 'in_c0')"),
    ("junk-bytes", lambda s: b"junk", "not a snapshot file"),
    ("missing-file", lambda s: "/nonexistent/snapshot.npz", "no snapshot file"),
]


@pytest.mark.parametrize("case, make, says", BAD_SNAPSHOTS, ids=[c[0] for c in BAD_SNAPSHOTS])
def test_bad_snapshots_are_refused_by_name(api, tmp_path, case, make, says):
    """Item 5: a corrupt snapshot is refused with what is wrong, never restored."""
    good = _fed(api).snapshot()
    bad = make(good)
    with pytest.raises(runtime.SnapshotError) as info:
        api.stream(bad)
    assert says in str(info.value)
    if case in ("nan-state", "inf-state", "negative-steps", "inf-buffer", "wrong-state-shape"):
        # the same from a file: the message names it
        try:
            path = runtime.save_snapshots(tmp_path / "bad.npz", {"b": bad})
        except runtime.SnapshotError:
            return
        with pytest.raises(runtime.SnapshotError) as info:
            api.stream(path)
        assert str(path) in str(info.value)


def test_npz_file_with_negative_steps_names_the_stream(api, tmp_path):
    snap = _snap_with(_fed(api).snapshot(), steps=-5)
    path = runtime.save_snapshots(tmp_path / "s.npz", {"pump-7": snap})
    with pytest.raises(runtime.SnapshotError, match="'pump-7' has a step count of -5"):
        runtime.load_snapshots(path)


BAD_STEPS = [
    ("text", "abc", runtime.InputError),
    ("wrong-size", [1.0], runtime.ShapeError),
    ("too-many", [1.0, 2.0, 3.0], runtime.ShapeError),
    ("ragged", [[1.0], [1.0, 2.0]], runtime.ShapeError),
    ("nan", [np.nan, 1.0], runtime.InputError),
    ("inf", [1.0, np.inf], runtime.InputError),
    ("none", None, runtime.InputError),
]


@pytest.mark.parametrize("case, sample, error", BAD_STEPS, ids=[c[0] for c in BAD_STEPS])
def test_bad_samples_leave_the_stream_as_it_was(api, case, sample, error):
    stream = _fed(api)
    before = stream.snapshot()
    with pytest.raises(error) as info:
        stream.step(sample)
    assert str(info.value) and "Traceback" not in str(info.value)
    _same(stream.snapshot(), before)
    with pytest.raises(error):
        stream.feed([sample, sample] if case != "ragged" else sample)
    _same(stream.snapshot(), before)


@pytest.mark.filterwarnings("error")        # numpy's "overflow encountered in cast" fails it
def test_reading_beyond_float32_is_refused_without_a_numpy_warning(api):
    stream = _fed(api)
    before = stream.snapshot()
    for call in (lambda: stream.step([1e300, 40.0]), lambda: stream.feed([[1e300, 40.0]]),
                 lambda: api.step([stream], np.array([[21.0, -1e300]]))):
        with pytest.raises(runtime.InputError, match="inf"):
            call()
    _same(stream.snapshot(), before)


# ---- ONNX Runtime failures are the project's error, state untouched ----------------------

def test_run_failures_become_run_errors_and_change_nothing(models):
    model = runtime.load(models["one"], device="cpu")       # runs batch 1 x time 1 only
    a, b = model.stream(), model.stream()
    a.step([21.0, 40.0])
    b.step([22.0, 41.0])
    before = [a.snapshot(), b.snapshot()]
    with pytest.raises(runtime.RunError, match="ONNX Runtime could not run") as info:
        a.feed([[21.0, 40.0], [22.0, 41.0]])                 # time 2
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, runtime.LstmEdgeError)
    assert "re-export" in str(info.value)
    with pytest.raises(runtime.RunError):
        model.step([a, b], [[21.0, 40.0], [22.0, 41.0]])     # batch 2
    _same(a.snapshot(), before[0])
    _same(b.snapshot(), before[1])
    assert a.step([23.0, 42.0]) is not None                  # still usable where it can run
    always = runtime.load(models["always"], device="cpu")
    s = always.stream()
    with pytest.raises(runtime.RunError):
        s.step([21.0, 40.0])
    assert s.steps == 0


def test_lstm_run_of_a_failing_model_is_one_line(models, tmp_path):
    state = tmp_path / "state.db"
    rows = b"\n".join([HEADER] + sample_rows(4)) + b"\n"
    code, out, err = lstm_run([models["one"], "--stream-column", "sensor", "--state", state],
                              rows)
    one_line_error(code, err, 2, "ONNX Runtime could not run")
    assert sum(s.steps for s in runtime.load_snapshots(state).values()) == \
        len(split_lines(out.decode())) - (1 if out else 0)   # the state counts what went out


# ---- a JSON line with a lone surrogate ---------------------------------------------------

@pytest.mark.parametrize("unbuffered", ["1", None], ids=["PYTHONUNBUFFERED", "buffered"])
def test_lone_surrogate_is_answered(models, tmp_path, unbuffered):
    lines = [json.dumps({"temperature": 20 + i, "humidity": 40}).encode() for i in range(12)]
    lines.insert(4, b'{"temperature": 21.2, "humidity": 40, "note": "\\ud800"}')
    state = tmp_path / "state.db"
    code, out, err = lstm_run([models["tiny"], "--state", state], b"\n".join(lines) + b"\n",
                              env={"PYTHONUNBUFFERED": unbuffered})
    assert code == 0 and "Traceback" not in err, err
    answers = [json.loads(x) for x in split_lines(out.decode("utf-8"))]
    assert len(answers) == 13 and answers[4]["note"] == "\ud800" and answers[4]["step"] == 5
    assert runtime.load_snapshots(state)[""].steps == 13


# ---- blank lines -------------------------------------------------------------------------

@pytest.mark.parametrize("data, fmt, expect", [
    (b"\ntemperature,humidity\n21,40\n\n22,41\n", "auto", ["", "header", "1", "", "2"]),
    (b"\n\n{\"temperature\": 21, \"humidity\": 40}\n  \n", "jsonl", ["", "", "1", ""]),
    (b"\r\n21,40\n\r\n22,41", "auto", ["", "1", "", "2"]),
], ids=["csv-blank-first", "jsonl-blank-first", "headerless-crlf-blanks"])
def test_blank_lines_are_answered_with_blank_lines(models, data, fmt, expect):
    code, out, err = lstm_run([models["tiny"], "--format", fmt], data)
    assert code == 0 and "Traceback" not in err, err
    out = split_lines(out.decode())
    assert len(out) == len(expect)
    for got, want in zip(out, expect):
        if want == "":
            assert got == ""
        elif want == "header":
            assert got.startswith("temperature,humidity,step")
        else:
            step = json.loads(got)["step"] if got.startswith("{") else got.split(",")[2]
            assert str(step) == want


@pytest.mark.parametrize("data", [b"\n", b"\n\n\r\n  \n"])
def test_only_blank_lines_is_empty_input(models, data):
    code, out, err = lstm_run([models["tiny"]], data)
    assert code == 3 and "empty" in err and "Traceback" not in err, err
    assert out.count(b"\n") == data.count(b"\n")


# ---- bare CRs passed through are quoted; no numpy warning --------------------------------

def test_bare_carriage_returns_give_valid_csv(models):
    import csv
    data = b"time,temperature,humidity\nt\r1,21,40\nt2,22\r,41\n"
    code, out, err = lstm_run([models["tiny"]], data)
    assert code == 0 and "Warning" not in err, err
    rows = list(csv.reader(io.StringIO(out.decode(), newline="")))
    assert len(rows) == 3 and rows[1][0] == "t\r1" and rows[1][3] == "1"
    assert rows[2][1] == "22\r" and rows[2][3] == "2"          # "22\r" reads as 22


def test_overflow_warns_nothing_on_stderr(models):
    data = b"temperature,humidity\n1e300,40\n21,1e39\n-3.5e38,1\n21,40\n"
    code, out, err = lstm_run([models["tiny"]], data)
    assert code == 0 and "RuntimeWarning" not in err and "overflow" not in err, err
    assert [line for line in err.splitlines() if not line.startswith("line ")] == \
        ["3 of 5 lines were refused (see above)"]


@pytest.mark.parametrize("flag, resets", [("1.0", True), ("0.0", False), ("Y", True),
                                          ("t", True), ("start", True), ("n", False),
                                          ("F", False), ("no", False)])
def test_reset_values_agree_in_csv_and_json(models, flag, resets):
    """Every documented reset value means the same in a CSV field and a JSON string, and
    CSV "1.0" resets as JSON's 1.0 does."""
    csv = b"sensor,temperature,humidity,start\na,21,40,\na,22,41," + flag.encode() + b"\n"
    code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor",
                               "--reset-column", "start"], csv)
    assert code == 0, err
    assert out.decode().splitlines()[2].split(",")[4] == ("1" if resets else "2")
    value = json.loads(flag) if flag in ("1.0", "0.0") else flag
    jsonl = "".join(json.dumps({"sensor": "a", "temperature": t, "humidity": 40, "start": v})
                    + "\n" for t, v in ((21, False), (22, value))).encode()
    code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor",
                               "--reset-column", "start"], jsonl)
    assert code == 0, err
    assert json.loads(out.decode().splitlines()[1])["step"] == (1 if resets else 2)
