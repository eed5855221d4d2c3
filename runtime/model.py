"""A loaded model: one ONNX Runtime session shared by any number of streams.

>>> from runtime import load                                    # doctest: +SKIP
>>> model = load("exported/water.onnx")                         # doctest: +SKIP
>>> s = model.stream()                                          # doctest: +SKIP
>>> s.step([101.2])         # None while the window fills, then (targets,)  # doctest: +SKIP

Everything a step needs (names, dtypes, zero states, the feed layout) is worked out here
once, at load, so that a step costs little more than the ORT call itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import device as _device
from .device import ort       # imported once there, with a one-line error where it is missing
from .lines import Score
from .contract import X, Y, ModelInfo, derive_state, streaming_mode
from .errors import (ContractError, DeviceError, InputError, RunError, ShapeError, SnapshotError,
                     counted)
from .batch import step_at, step_many
from .shapes import STREAMS, check_shape
from .snapshot import Snapshot
from .state import Columns, StreamState, sound
from .slots import SlotStream
from .stream import Stream, fill_missing, from_columns, nonfinite, within_float32

MISSING = ("error", "skip", "hold")   # what a NaN in a reading does; see Stream
_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
_UNLABELLED = (np.ndarray, list, tuple, float, int)   # readings that carry no names
MASK_RTOL = 1e-6   # a feature matches the mask within 1e-6 * (|mask| + |mean|): see Model


def load(path, *, device: str = "auto", window: int | None = None,
         carry_state: bool | None = None, missing: str = "error", threads: int | None = None,
         session_options: ort.SessionOptions | None = None,
         io_binding: bool | None = None, state_slots: int | None = None) -> "Model":
    """Load an exported ONNX file for streaming.

    Parameters
    ----------
    path : the ``.onnx`` file (or its bytes).
    device : ``"auto"`` (CUDA where a session really runs on it, else CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.
    window, carry_state : override the file's ``lstm_edge.window``/``lstm_edge.carry_state``.
    missing : what a NaN in a reading does by default: ``"error"``, ``"skip"`` (the step is not
        fed, its prediction is None/NaN) or ``"hold"`` (NaN features repeat the last reading fed).
    threads : ORT intra-op threads for every call. Not given: 1 (the fastest for one small
        call per step), and every core for calls of many streams (``device.BatchThreads``).
    session_options : ready-made :class:`onnxruntime.SessionOptions`, used as they are.
    io_binding : keep stream state in OrtValues bound to the session (default: on CUDA only).
    state_slots : override the file's ``lstm_edge.state_slots``: the batch size ``B`` a stateful
        Keras model predicted with, so that window ``j`` continues window ``j - B``.

    Raises
    ------
    ContractError : the file cannot be read, is not an ONNX model ONNX Runtime can load
        (truncated, corrupt), or does not hold to the streaming contract.
    DeviceError : the device cannot run the model.
    """
    if isinstance(path, (bytes, bytearray)):
        data, name, what = bytes(path), "model", "the model bytes"
        # Bytes have no folder: /dev/null as theirs makes every external data file missing,
        # where ONNX Runtime would otherwise look in the current directory.
        source: bytes | str = data
        folder = os.devnull
    else:
        try:
            data, name, what = Path(path).read_bytes(), Path(path).name, str(path)
        except OSError as exc:
            if Path(path, "saved_model.pb").is_file():
                raise ContractError(_keras_refusal(str(path), "a TensorFlow SavedModel "
                                                   "folder")) from None
            raise ContractError(f"cannot read the model file {path}: {exc.strerror or exc}; "
                                f"check the path and its permissions") from None
        # ONNX Runtime reads a file given by its path (not its bytes) with its external data
        # from the file's folder, shape inference included.
        source, folder = str(Path(path).absolute()), str(Path(path).absolute().parent)
    if threads is not None and (isinstance(threads, bool)
                                or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise InputError(f"threads must be a whole number 1 or more (ONNX Runtime's threads "
                         f"per call), or None for the default; got {threads!r:.40}")
    # Not given: one thread per step, every core for calls of many streams (device.BatchThreads);
    # given (1 included): that many for every call.
    # A model file is untrusted input: its external data (weights in a file beside it) is
    # read from the model's own folder, never from the current directory; ONNX Runtime
    # refuses a location that is absolute or leads out of that folder.
    # ORT's own log is off (4: fatal only): every error it logs is also raised, and is said
    # here in one line; its log line, with colour codes, on stderr said it twice.
    config = _device.SessionConfig(threads=1 if threads is None else threads,
                                   batch_threads=0 if threads is None else None,
                                   external_folder=folder, log_level=4)
    if session_options is not None:
        session_options.add_session_config_entry(_device.EXTERNAL_FOLDER, folder)
    try:
        session, where = _device.create_session(source, device, config, session_options,
                                                name=name)
    except DeviceError:
        raise
    except _device.ORT_ERRORS as exc:   # InvalidProtobuf, InvalidGraph, Fail, ...: no common base
        keras = _keras_kind(data, name)
        if keras:
            raise ContractError(_keras_refusal(what, keras)) from None
        if "external data" in str(exc).lower():
            raise ContractError(f"{what}: its external data cannot be used "
                                f"({_external_words(exc)}); an external data file must lie in "
                                f"the model's folder, named relative to it") from None
        raise ContractError(f"{what} is not an ONNX model ONNX Runtime can load "
                            f"({type(exc).__name__}: {_first_line(exc)}); the file may be "
                            f"truncated or corrupt, or not an ONNX file at all: re-export the "
                            f"model with lstm-export") from None
    return Model(session, where, hashlib.sha256(data).hexdigest(), window=window,
                 carry_state=carry_state, missing=missing, io_binding=io_binding, name=name,
                 state_slots=state_slots)


class Model:
    """One loaded model; create streams with :meth:`stream`, step many at once with :meth:`step`.

    Attributes
    ----------
    info : the contract's metadata, parsed (state specs derived from graph names if absent).
    device : ``"cpu"`` or ``"cuda:N"``, where the session really runs.
    window, carry_state, mode : the streaming mode in use (``"sequence"``, ``"window"``,
        ``"stateful"``), from the file unless overridden at load.
    slots : the state slots ``B`` of a stream that carries state (``lstm_edge.state_slots``):
        its ``j``-th full window starts from slot ``j mod B`` and leaves its state there,
        as Keras ``predict(X, batch_size=B)`` after ``reset_states()`` does; 1 for most models.
    missing : the default NaN policy of new streams.
    fingerprint : sha256 of the ONNX file; snapshots carry it.
    mask_value : ``(features,)`` raw values of the Keras ``Masking`` layer
        (``lstm_edge.mask_value``), or None when the model has none.
    mask_answer : ``(targets,)`` float32, Keras's answer where every reading was masked
        (``lstm_edge.mask_answer``), or None (no mask, or a file written before the key).

    Notes
    -----
    Masking. Keras skips a masked step (every feature equal to the mask value) in every recurrent
    layer, so the runtime does not feed one. A reading is masked when each feature ``i``
    matches, ``|x_i - mask_i| <= 1e-6 * (|mask_i| + |mean_i|)`` in float32, ``mean`` being
    the baked scaler's (0 without one): the raw mask is ``mask * std + mean``, so exact
    equality would hinge on how that sum was rounded, while 1e-6 is still ~8 float32 steps
    at that size. Without a scaler a mask of 0 matches exact zeros only, as in Keras.

    - ``sequence``: a masked reading is not fed; the state stays, the step returns the
      stream's previous prediction and ``steps`` does not count it. Before the first reading
      fed it returns :attr:`mask_answer`, Keras's answer there: with every step so far masked
      a recurrent layer outputs zeros, and the head of zeros is the answer.
    - ``window``/``stateful``: the window holds the last ``window`` readings, masked ones
      included, as Keras's window does; a prediction runs only its unmasked readings (from a
      zero state / from the carried state). A window of masked readings only answers
      :attr:`mask_answer` (Keras's recurrent layer outputs zeros whatever state it carries)
      and, in ``stateful`` mode, leaves the state as it was.

    A file written before ``lstm_edge.mask_answer`` has none: those answers are None/NaN.

    Threads. One model may be shared by any number of threads: its session is, and streams
    of it may be stepped on different threads at the same time (:meth:`step` of disjoint
    groups of streams too). Each stream is used by one thread at a time: its state is what
    its last step left, so two steps of it at once would lose one. A step, feed or
    many-stream call of a stream that another thread is stepping raises
    :class:`~runtime.errors.InputError` and changes nothing (``Stream``, Threads); the check
    is a flag, which two calls starting within a few bytecodes of each other may both pass,
    so it finds misuse, it does not make it safe: lock around the steps of a stream that
    several threads feed.

    Readings with names. A pandas DataFrame (or Series, for one reading) is matched to
    :attr:`features` by its column names, not by position: the columns in another order are
    reordered, and other or missing names are refused (see :meth:`_named`).
    """

    def __init__(self, session, device: str, fingerprint: str, *, window=None,
                 carry_state=None, missing="error", io_binding=None, name="model",
                 state_slots=None):
        self.session, self.device, self.fingerprint, self.name = session, device, fingerprint, name
        meta = session.get_modelmeta().custom_metadata_map
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        info = ModelInfo.from_metadata(meta)
        if not info.state:
            info = _replace(info, state=derive_state({k: v.shape for k, v in inputs.items()}))
        _check_graph(info, inputs, outputs)
        self.window = int(info.window if window is None else window)
        self.carry_state = bool(info.carry_state if carry_state is None else carry_state)
        if self.window < 1:
            raise ContractError(f"window must be at least 1, got {self.window}")
        self.slots = int(info.state_slots if state_slots is None else state_slots)
        if self.slots < 1:
            raise ContractError(f"state_slots must be at least 1 (the batch size a stateful "
                                f"model predicted with), got {self.slots}")
        self.missing = _check_missing(missing)
        self.mode = streaming_mode(self.window, self.carry_state)

        x = inputs[X]
        fixed = x.shape[1] if len(x.shape) > 1 else None
        if isinstance(fixed, int) and (self.window, self.carry_state) != (fixed, False):
            # A window model converted whole (docs/contract.md) reads exactly its window.
            raise ContractError(f"the graph reads windows of exactly {fixed} readings from a "
                                f"zero state (a window model converted whole); it runs with "
                                f"window={fixed} and carry_state=false only, not "
                                f"window={self.window}, carry_state="
                                f"{str(self.carry_state).lower()}: drop the override")
        self.tokens = len(x.shape) == 2                 # x is (batch, time) token ids
        self.dtype = _DTYPES[x.type]
        # The dtype the order rule compares readings in (runtime.state.order): as fed.
        self._seen_dtype = self.dtype if self.tokens else np.float32
        self.n_features = 1 if self.tokens else _axis(x.shape[2], info.features, "features")
        self.n_targets = _axis(outputs[Y].shape[2], info.targets, "targets")
        self._y_steps = outputs[Y].shape[1]             # 1 for a graph that answers a window once
        self.info = info
        self.features = info.features or tuple(f"x{i}" for i in range(self.n_features))
        self.targets = info.targets or tuple(f"y{i}" for i in range(self.n_targets))
        # A block (docs/contract.md, lstm_edge.block): one name per output column of y.
        self.block = info.block
        if self.block is not None:
            self.targets = self.block.columns()
        self.reconstructs = self.block is not None and self.block.kind == "reconstruction"
        # What lstm-run answers each reading with: a prediction per output, or the score.
        self.answers = (Score("score"),) if self.reconstructs else self.targets
        x_scaler = (info.scaler or {}).get("x") or {}
        self._score_scale = np.asarray(x_scaler.get("std", 1.0), np.float64)   # (features,)
        if len(self.features) != self.n_features or len(self.targets) != self.n_targets:
            raise ContractError(f"metadata names {len(self.features)} features and "
                                f"{len(self.targets)} outputs, the graph reads "
                                f"{self.n_features} and writes {self.n_targets}")

        self.state_inputs = tuple(n for s in info.state for n in s.inputs)
        self.state_outputs = tuple(n for s in info.state for n in s.outputs)
        self.units = tuple(_units(inputs[n].shape, s.units) for s in info.state for n in s.inputs)
        _check_sizes(self)
        bound = device.startswith("cuda") if io_binding is None else bool(io_binding)
        self._host = _device.HostRunner(session, X, Y, self.state_inputs, self.state_outputs)
        self._runner = (_device.BoundRunner(session, X, Y, self.state_inputs, self.state_outputs,
                                            device) if bound else self._host)
        # The bound runner's one IOBinding is bound, run and cleared per call: calls of many
        # streams (or a chunk) from several threads take turns at it. (A stream's own steps
        # go through its own StepBinding, never this lock.)
        self._bound_lock = threading.Lock()
        # Per-step constants: a fresh stream's state, the zero vector of the finite check.
        self._zero_state = self.zeros(1)
        self._fin = np.zeros(self.n_features, np.float64 if self.tokens else np.float32)
        self._fshape = (self.n_features,)
        # Whether a stream's step may take Stream._step_hot: sequence mode, float readings.
        self._hot = self.window == 1 and bool(self.carry_state) and not self.tokens
        # The mask: None for most models, whose steps then never look at it.
        self.mask_value = _mask_value(info, self.n_features)
        # Any: None, or _mask_rule's tuple, which the mask methods read only where it is set
        self._mask: Any = None if self.mask_value is None else _mask_rule(self.mask_value, info)
        # What Keras answers where nothing was fed (every reading masked), or None (an older
        # file: such answers are empty)
        self.mask_answer = None if self._mask is None else _mask_answer(info, self.n_targets)
        self._hot = self._hot and self._mask is None
        self._group = None   # the streams of the last many-stream call (batch.Group)
        _check_outputs(self, fixed if isinstance(fixed, int) else 1)

    def __repr__(self):
        slots = f", {self.slots} state slots" if self.carry_state and self.slots > 1 else ""
        return (f"<Model {self.name} on {self.device}: {self.mode} mode, window {self.window}"
                f"{slots}, {counted(self.n_features, 'feature')} -> "
                f"{counted(self.n_targets, 'target')}>")

    # --- streams -------------------------------------------------------------------------

    def stream(self, snapshot=None, *, missing: str | None = None) -> Stream:
        """A new stream with its own state; restored from ``snapshot`` (or its file) if given."""
        kind = SlotStream if self.carry_state and self.slots > 1 else Stream
        stream = kind(self, _check_missing(missing or self.missing))
        if snapshot is not None:
            where = "the snapshot"
            if isinstance(snapshot, (str, os.PathLike)):
                where = f"the snapshot file {snapshot}"
                snapshot = Snapshot.load(snapshot)
            elif isinstance(snapshot, (bytes, bytearray, memoryview)):
                snapshot = Snapshot.from_bytes(snapshot)
            elif not isinstance(snapshot, StreamState):
                # An int would be taken for a file descriptor (0 reads stdin, closing it after).
                raise SnapshotError(f"stream() takes a Snapshot, the path of a snapshot file or "
                                    f"its bytes; got {type(snapshot).__name__} {snapshot!r:.40}: "
                                    f"pass stream.snapshot() or the path it was saved to")
            stream.restore(snapshot, where)
        return stream

    def restore_many(self, columns: Columns, *, missing: str | None = None) -> list:
        """Streams continuing from many states at once: what ``stream(state)`` gives for
        each row of ``columns`` (:func:`runtime.state.unpack_many` reads them), all rows
        checked together (:func:`runtime.state.sound`); None for a row that check does not
        pass, which ``stream(state)`` then refuses, saying why (or restores)."""
        kind = SlotStream if self.carry_state and self.slots > 1 else Stream
        return from_columns(self, kind, columns, sound(columns, self),
                            _check_missing(missing or self.missing))

    def zeros(self, batch: int) -> tuple:
        """The state of ``batch`` fresh streams: one ``(batch, units)`` zero array per tensor."""
        return tuple(np.zeros((batch, u), np.float32) for u in self.units)

    # --- checking readings ---------------------------------------------------------------

    def validate(self, reading, missing: str | None = None) -> np.ndarray:
        """The checked ``(features,)`` reading, or raise; touches no stream.

        NaN passes where the policy (``missing``, default the model's) is not ``"error"``.
        """
        if type(reading) is np.ndarray and reading.dtype.kind == "f" \
                and reading.shape == self._fshape and not self.tokens and within_float32(reading):
            return reading.astype(np.float32)     # a parsed line's usual reading: all is well
        x = self._check(reading)
        if nonfinite(x, self._fin):
            fill_missing(self, x, None, missing or self.missing, check_only=True)
        return x

    def _named(self, readings, what: str = "readings"):
        """``readings`` with labelled columns put in the order of :attr:`features`, by name.

        A pandas DataFrame (anything with ``columns``: readings ``(n, features)``, or
        ``Model.step``'s ``(streams, features)``) whose column names are the model's features
        in another order is reordered by name, silently: ``df[["co2", "rh", "temp"]]`` feeds
        what ``df[["temp", "rh", "co2"]]`` does. One whose names are not the features
        (another name, one missing, one more such as a time column) is refused: InputError
        naming them, and the fix ``df[list(model.features)]``. With ``what="reading"``, a
        pandas Series (one reading, its ``index`` naming the features, e.g. ``df.iloc[0]``)
        likewise. Labels that are not all strings (a frame made from an array, columns 0, 1,
        ...) and models whose file names no features are taken by position, as arrays are.
        Anything else comes back as it was. pandas is not imported: it is duck-typed.
        """
        if type(readings) in _UNLABELLED:
            return readings
        labels, kind = getattr(readings, "columns", None), "columns"
        if labels is None and what == "reading" and getattr(readings, "ndim", None) == 1:
            labels, kind = getattr(readings, "index", None), "index"   # a Series: one reading
        if labels is None:
            return readings
        labels = list(labels)
        if not self.info.features or not labels or not all(isinstance(n, str) for n in labels):
            return readings
        names = list(self.features)
        if labels != names:
            missing = [n for n in names if n not in labels]
            extra = [n for n in labels if n not in names]
            twice = sorted({n for n in labels if labels.count(n) > 1})
            if missing or extra or twice:
                found = "; ".join(f"{w} {_some(map(repr, ns))}" for w, ns in (
                    ("missing", missing), ("not features", extra), ("given twice", twice)) if ns)
                raise InputError(f"{what}: the {kind} ({_some(labels)}) are not the model's "
                                 f"features ({_some(names)}): {found}; select and name them "
                                 f"as the model does: df[list(model.features)]")
        dtypes = getattr(readings, "dtypes", None)        # a DataFrame's, one per column
        if dtypes is not None and hasattr(dtypes, "__len__") and len(dtypes) == len(labels):
            odd = [f"{n!r} ({d})" for n, d in zip(labels, dtypes)
                   if getattr(d, "kind", "O") not in "fiu"]
            if odd:
                raise InputError(f"{what}: column {', '.join(odd)} does not hold numbers; "
                                 f"convert it, e.g. pd.to_numeric(df[name]), before feeding")
        a = _asarray(readings, what)
        order = [labels.index(n) for n in names]
        return a if order == list(range(len(names))) else a[..., order]

    def _check(self, reading) -> np.ndarray:
        """A ``(features,)`` copy of one reading in the model's dtype; NaN/inf not yet looked at."""
        a = _asarray(self._named(reading, "reading"), "reading")
        if a.dtype.kind not in "fiu" or a.shape != self._fshape or self.tokens:
            return self._check_slow(a, reading)
        if a.dtype.kind == "f" and a.dtype.itemsize > 4:
            # 1e300 becomes inf, which the finite check refuses in words: no numpy warning.
            with np.errstate(over="ignore"):
                return a.astype(np.float32)
        return a.astype(np.float32)

    def _check_slow(self, a, reading):
        if a.dtype.kind not in "fiu":
            raise InputError(f"a reading must hold numbers, got {_describe(reading, a)}; "
                             f"convert it with float() or np.asarray(..., dtype=float)")
        if a.shape == () and self.n_features == 1:
            a = a.reshape(1)
        check_shape(a.shape, self._fshape, self.features, what="reading", window=self.window)
        return self._as_model_dtype(a)

    def _check_chunk(self, readings, rows: int | None = None) -> np.ndarray:
        """A ``(n, features)`` copy of a chunk of readings; NaN/inf not yet looked at.

        ``rows``: :meth:`step`'s stream count, its readings ``(streams, features)``; None
        for a stream's chunk, ``(readings, features)``.
        """
        a = _asarray(self._named(readings), "readings")
        if a.dtype.kind not in "fiu":
            raise InputError(f"readings must hold numbers, got {_describe(readings, a)}")
        if self.tokens and a.ndim == 1:
            a = a[:, None]                                   # (n,) ids -> (n, 1)
        check_shape(a.shape, (rows, self.n_features), self.features, what="readings",
                    axes=None if rows is None else STREAMS, window=self.window)
        return self._as_model_dtype(a)

    def _as_model_dtype(self, a):
        if not self.tokens:
            with np.errstate(over="ignore"):      # beyond float32: inf, refused in words
                return a.astype(np.float32)
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            if (a[finite] != np.round(a[finite])).any():
                raise InputError(f"token ids must be whole numbers, got {a[finite & (a != np.round(a))][:3]}")
            if not finite.all():
                return a.astype(np.float64)      # NaN/inf stay visible to the finite check
        if (a < 0).any():
            raise InputError(f"token ids must be 0 or more, got {a[a < 0][:3]}")
        return a.astype(self.dtype)

    def _masked(self, xs) -> np.ndarray:
        """``(..., features)`` -> ``(...)`` bool: which readings are masked (see Notes)."""
        value, tol, _, _ = self._mask
        return (np.abs(xs - value) <= tol).all(axis=-1)

    def _masked_one(self, x) -> bool:
        """Whether one reading ``(features,)`` is masked; one float comparison when it is not."""
        _, _, first, first_tol = self._mask
        # In Python floats, as _masked's float32: near the mask the difference is exact in both
        if abs(x.item(0) - first) > first_tol:
            return False
        return bool(self._masked(x))

    # --- running -------------------------------------------------------------------------

    def _run(self, x, states, out=None):
        """One ORT call: x ``(batch, time, features)`` -> (y ``(batch, time, targets)``, states).

        With ``out`` (OrtValues on the device) the call goes through IO binding and writes
        the new state there; otherwise numpy in, numpy out.
        """
        if self.tokens:
            x = x[..., 0].astype(self.dtype)                 # (batch, time) ids
        try:
            if out is None:
                y, new = self._host.run(x, states)
            else:
                with self._bound_lock:      # one IOBinding for every such call: see Threads
                    y, new = self._runner.run_bound(x, states, out)
        except _device.ORT_ERRORS as exc:
            raise self._run_error(exc, x.shape) from None
        if len(y) != len(x):                # checked at load; a graph may still misbehave
            raise ContractError(f"{self.name}: {_batch_words(x.shape, y.shape)}; {_REEXPORT}")
        return y, new

    def _run_error(self, exc, shape) -> InputError | RunError:
        """The project's error for a failed ORT call: a token id past the vocabulary, or a
        :class:`RunError` (the graph itself cannot run); the streams are left as they were."""
        if self.tokens:
            return InputError(f"the model could not run these token ids ({exc}); is every id "
                              f"below the embedding's vocabulary size?")
        return RunError(f"ONNX Runtime could not run {self.name} on x of shape {tuple(shape)} "
                        f"({type(exc).__name__}: {_ort_words(exc)}); the file loads and "
                        f"holds to the contract but its graph fails when run, and no stream "
                        f"was changed: re-export the model with lstm-export, or check the "
                        f"graph's nodes with onnx.checker")

    def _step_error(self, exc) -> InputError | RunError:
        """What a failed single-stream ORT call raises (see :meth:`_run_error`)."""
        return self._run_error(exc, (1, self.window, self.n_features))

    def _step_binding(self) -> _device.StepBinding:
        """A stream's own pre-bound buffers for calls of one window (see ``Stream._call``).

        Each stream gets its own ``x``/``y`` buffers as well as its state sets, so streams
        stepped from different threads share nothing: they add under 2 KiB to the ~17 KiB
        and ~70 µs a binding costs (two IOBindings, their OrtValues), once per stream.
        """
        dtype = self.dtype if self.tokens else np.float32
        x = np.zeros((1, self.window, self.n_features), dtype)   # (1, window, features)
        # A window graph without state (docs/contract.md) answers the window once: y (1, 1, .)
        steps = 1 if self._y_steps == 1 else self.window
        y = np.zeros((1, steps, self.n_targets), np.float32)         # (1, window, targets)
        graph_x = x.reshape(1, self.window) if self.tokens else x   # ids: (1, window), same memory
        return self._runner.step_binding(x, graph_x, y, self.units)

    def step(self, streams, readings, at=None) -> np.ndarray:
        """Step many streams with one ORT call, their states stacked along the batch axis.

        Parameters
        ----------
        streams : streams of this model, each at most once.
        readings : ``(n_streams, features)`` one reading per stream (token ids: ``(n_streams,)``);
            a DataFrame's columns are taken by name, in the order of :attr:`features`.
        at : one position per stream (see :meth:`Stream.step`): the order rule applies to
            each; a replay's row is the answer it got then, a skipped reading's row NaN.

        Returns
        -------
        ``(n_streams, targets)`` float32; a NaN row for a stream still warming up or whose
        reading was skipped. On a bad reading nothing is stepped and one error lists them all.
        An array of windows ``(samples, timesteps, features)`` is refused: it goes to
        :meth:`predict`. A stream another thread is stepping: InputError, nothing stepped
        (see Threads).
        """
        streams = list(streams)
        try:
            if at is not None:
                return step_at(self, streams, readings, at)
            return step_many(self, streams, readings)
        except AttributeError:       # not streams: said here, not on the hot path
            bad = [i for i, s in enumerate(streams) if not isinstance(s, Stream)]
            if not bad:
                raise
            raise InputError(f"step takes streams made by model.stream(); items {bad[:10]} "
                             f"are {type(streams[bad[0]]).__name__}") from None

    def predict(self, X) -> np.ndarray:
        """What Keras's ``model.predict(X)`` gives, for an array of windows, in raw units.

        Parameters
        ----------
        X : ``(samples, timesteps, features)``, a sample being one window as Keras says
            (token ids: ``(samples, timesteps)``); ``timesteps`` is the model's window in
            ``window`` and ``stateful`` mode, any length in ``sequence`` mode.

        Returns
        -------
        ``window`` mode: ``(samples, targets)``, each sample from a zero state, as Keras
        ``model.predict(X)``; a block (``lstm_edge.block``) as Keras gives it,
        ``(samples, steps, names)``. ``stateful`` mode: ``(samples, targets)``, sample ``j``
        continuing the state sample ``j - B`` ended in (``B`` = :attr:`slots`), as Keras
        ``model.predict(X, batch_size=B)`` right after ``reset_states()``. ``sequence`` mode:
        ``(samples, timesteps, targets)``, each sample a whole sequence from a zero state,
        as a Keras model with ``return_sequences=True``; ``(samples, targets)``, the last
        timestep's, where Keras answered that alone (``lstm_edge.answers``, docs/contract.md).
        Streams are not touched. See :mod:`runtime.predict`.

        Raises
        ------
        ShapeError : X is not shaped as the model reads windows (the message says which
            axis and the fix). InputError : X holds something other than finite numbers.

        Examples
        --------
        The airline tutorial's model (``look_back=3``, one feature), exported to
        ``airline.onnx``; ``testX`` are its windows in raw passengers, ``scaler`` the
        MinMaxScaler it was trained with:

        >>> model = load("airline.onnx")                # doctest: +SKIP
        >>> testX.shape                                 # doctest: +SKIP
        (44, 3, 1)
        >>> y = model.predict(testX)                    # doctest: +SKIP
        >>> y.shape                                     # doctest: +SKIP
        (44, 1)
        >>> np.allclose(y, scaler.inverse_transform(keras_model.predict(
        ...     scaler.transform(testX.reshape(-1, 1)).reshape(testX.shape))))  # doctest: +SKIP
        True
        """
        from .predict import predict
        return predict(self, X)

    def score(self, history, ys) -> np.ndarray:
        """A reconstruction model's anomaly score for each of the last ``len(ys)`` readings.

        Parameters
        ----------
        history : ``(m, features)`` raw readings of one stream, in order, ending at the
            reading of the last row of ``ys``.
        ys : ``(n, outputs)`` the model's answers for the last ``n`` readings of ``history``
            (NaN rows while warming up).

        Returns
        -------
        ``(n,)`` float32: the mean over the window's positions and features of
        ``|reconstruction - reading| / std``, ``std`` being the feature's scale in
        ``lstm_edge.scaler.x`` (1 without one): the mean absolute error in the units the
        model was trained in, of the window ending at that reading; NaN while warming up.
        docs/contract.md defines it.
        """
        window, ys = self.window, np.asarray(ys, np.float64)
        out = np.full(len(ys), np.nan, np.float32)
        count = min(len(ys), len(history) - window + 1)
        if count > 0:
            wins = np.lib.stride_tricks.sliding_window_view(
                np.asarray(history, np.float64), window, axis=0)[-count:]   # (count, F, window)
            rebuilt = ys[-count:].reshape(count, window, -1)         # (count, window, F)
            error = np.abs(rebuilt - wins.transpose(0, 2, 1)) / self._score_scale
            out[-count:] = error.mean(axis=(1, 2))
        return out


def _check_graph(info: ModelInfo, inputs: dict, outputs: dict) -> None:
    """Refuse a graph whose inputs and outputs do not match ``lstm_edge.state``, naming each."""
    problems = []
    for name, where in ((X, inputs), (Y, outputs)):
        if name not in where:
            problems.append(f"the graph has no {'input' if where is inputs else 'output'} "
                            f"{name!r} (it has {', '.join(where)})")
    if X in inputs and inputs[X].type not in _DTYPES:
        problems.append(f"input x is {inputs[X].type}; the contract reads float32 or int ids")
    elif X in inputs and len(inputs[X].shape) != (3 if inputs[X].type == "tensor(float)" else 2):
        problems.append(f"input x has shape {inputs[X].shape}; the contract's is "
                        f"(batch, time, features), or (batch, time) for token ids")
    if Y in outputs and len(outputs[Y].shape) != 3:
        problems.append(f"output y has shape {outputs[Y].shape}, expected (batch, time, targets)")
    want_in = [n for s in info.state for n in s.inputs]
    want_out = [n for s in info.state for n in s.outputs]
    for side, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
        for name in want:
            if name not in have:
                problems.append(f"lstm_edge.state lists {side} {name!r} but the graph has none")
        for name in have:
            if name not in (X, Y) and name not in want and name.startswith(("in_", "out_")):
                problems.append(f"graph {side} {name!r} is not in lstm_edge.state")
    for spec in info.state:
        for name in spec.inputs:
            dims = inputs[name].shape if name in inputs else None
            if dims and len(dims) == 2 and isinstance(dims[1], int) and spec.units \
                    and dims[1] != spec.units:
                problems.append(f"state {name} has {dims[1]} units in the graph, "
                                f"{spec.units} in lstm_edge.state")
    if problems:
        raise ContractError("the graph does not match the contract: " + "; ".join(problems))


# The most readings * features the load-time run of _check_outputs feeds (a graph of a
# fixed window reads that window; beyond this, the first call says what is wrong instead).
_PROBE_MOST = 1 << 20


def _check_outputs(model, steps: int) -> None:
    """Run the graph on one fresh stream, then two, and refuse outputs that are not shaped as
    the contract says: y ``(batch, steps or 1, targets)`` and each state ``(batch, units)``.

    The declared shapes cannot be trusted (a file is untrusted input): a Keras model of two
    outputs converted whole declares y ``[batch, 1, 1]`` and returns both heads stacked on
    the batch axis, which numpy would meet later as a broadcast error mid-stream. A graph
    ONNX Runtime cannot run on so many streams is left to the first call, which says why.
    """
    if 2 * steps * model.n_features > _PROBE_MOST:
        return
    for batch in (1, 2):
        _check_batch(model, batch, steps)


def _check_batch(model, batch: int, steps: int) -> None:
    """:func:`_check_outputs` for ``batch`` streams."""
    x = np.zeros((batch, steps, model.n_features), model.dtype)   # (batch, time, features)
    if model.tokens:
        x = x[..., 0]                                             # (batch, time) ids
    try:
        y, states = model._host.run(x, model.zeros(batch))
    except _device.ORT_ERRORS:
        return
    y = np.asarray(y)
    problems = []
    if y.ndim != 3 or y.shape[0] != batch:
        problems.append(_batch_words(x.shape, y.shape))
    elif y.shape[1] not in (1, steps) or y.shape[2] != model.n_targets:
        problems.append(f"y is {tuple(y.shape)} for x of {tuple(x.shape)}, expected "
                        f"({batch}, {steps}, {model.n_targets}) (batch, time, targets)")
    for name, units, value in zip(model.state_outputs, model.units, states):
        if np.shape(value) != (batch, units):
            problems.append(f"state {name} is {np.shape(value)} for x of {tuple(x.shape)}, "
                            f"expected ({batch}, {units}) (batch, units)")
    if problems:
        raise ContractError(f"{model.name}: the graph does not answer as the contract says: "
                            + "; ".join(problems) + f"; {_REEXPORT}")


def _batch_words(x_shape, y_shape) -> str:
    """The refusal of a y whose batch is not x's (a Keras model's several outputs stacked)."""
    return (f"y's batch must equal x's, one answer per stream, but x of shape "
            f"{tuple(x_shape)} gives y of shape {tuple(y_shape)} (as a Keras model of "
            f"several outputs converted whole does: its heads stacked on the batch axis)")


_REEXPORT = ("re-export the model with lstm-export (it refuses a Keras model of several "
             "outputs and says how to join them into one)")


def _ort_words(exc, limit: int = 300) -> str:
    """ONNX Runtime's error in words: its status message without the source position and
    C++ signature before it, cut at a word boundary."""
    text = " ".join(_first_line(exc).split())
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ .*?\[ONNXRuntimeError\] : \d+ : ", "", text)
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ ", "", text)
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _mask_value(info: ModelInfo, n_features: int):
    """``lstm_edge.mask_value`` as ``(features,)`` float64, or None (no Masking layer)."""
    text = info.extra.get("mask_value")
    if text is None:
        return None
    try:
        value = np.asarray(json.loads(text), np.float64)
        value = np.broadcast_to(value, (n_features,)).copy()   # one number: every feature
    except (ValueError, TypeError) as exc:
        raise ContractError(f"metadata lstm_edge.mask_value should be a list of {n_features} "
                            f"numbers (one per feature), got {text[:60]!r} ({exc}); re-export "
                            f"the model with lstm-export") from None
    if not np.isfinite(value).all():
        raise ContractError(f"metadata lstm_edge.mask_value holds {value.tolist()}; a mask "
                            f"must be finite: re-export the model with lstm-export")
    return value


def _mask_answer(info: ModelInfo, n_targets: int):
    """``lstm_edge.mask_answer`` as ``(targets,)`` float32, or None where the file has none."""
    text = info.extra.get("mask_answer")
    if text is None:
        return None
    try:
        value = np.asarray(json.loads(text), np.float64).reshape(-1)
        ok = value.shape == (n_targets,) and bool(np.isfinite(value).all())
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ContractError(f"metadata lstm_edge.mask_answer should be a list of {n_targets} "
                            f"finite numbers (one per output), got {text[:60]!r}; re-export "
                            f"the model with lstm-export")
    return value.astype(np.float32)


def _mask_rule(value, info: ModelInfo):
    """(value, tolerance, first value, first tolerance): the float32 match of Masking."""
    mean: float | np.ndarray = 0.0
    scaler = (info.scaler or {}).get("x") if isinstance(info.scaler, dict) else None
    if isinstance(scaler, dict) and np.shape(scaler.get("mean", ())) == value.shape:
        mean = np.abs(np.asarray(scaler["mean"], np.float64))
    tol = MASK_RTOL * (np.abs(value) + mean)
    value32, tol32 = value.astype(np.float32), tol.astype(np.float32)
    return value32, tol32, float(value32[0]), float(tol32[0])



# Sizes no model for a device comes near (an LSTM of 2**20 units has 4 * 2**40 recurrent
# weights): a file declaring more is refused in words before any array is made for it.
_MOST = {"state units": 1 << 20, "features": 1 << 20, "targets": 1 << 20,
         "window": 1 << 24, "state slots": 1 << 16}


def _check_sizes(model) -> None:
    """Every size the streams allocate by, against :data:`_MOST`; one error naming each."""
    sizes = {"state units": max(model.units, default=0), "features": model.n_features,
             "targets": model.n_targets, "window": model.window, "state slots": model.slots}
    over = [f"{what} {n:,} (at most {_MOST[what]:,})" for what, n in sizes.items()
            if n > _MOST[what]]
    if over:
        raise ContractError(f"the model declares sizes no stream can hold: {', '.join(over)}; "
                            f"the file is damaged or not made for this runtime: re-export it "
                            f"with lstm-export")


# The first bytes of an HDF5 file: a Keras 2 model saved as .h5
_HDF5 = b"\x89HDF\r\n\x1a\n"


def keras_kind(path) -> str:
    """What Keras/TensorFlow model ``path`` is, in words ("a Keras model file (.keras)"), or ""
    where it is none: told from the folder or the file's first bytes, before any load."""
    path = Path(path)
    if path.is_dir():
        return "a TensorFlow SavedModel directory" if (path / "saved_model.pb").exists() else ""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    return _keras_kind(head, path.name)


def _keras_kind(data: bytes, name: str) -> str:
    """What Keras file ``data`` (the file ``name``) is, in words, or "" where it is none:
    a ``.keras`` zip (its ``config.json``), or HDF5 (``.h5``). Only asked once ONNX Runtime
    refused the file."""
    if data.startswith(_HDF5):
        return "a Keras HDF5 model file (.h5)"
    if data.startswith(b"PK"):
        if name.lower().endswith(".keras"):
            return "a Keras model file (.keras)"
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                if "config.json" in z.namelist():
                    return "a Keras model file (.keras)"
        except (zipfile.BadZipFile, OSError, ValueError):
            pass
    return ""


def _keras_refusal(what: str, kind: str) -> str:
    """The refusal of a Keras/TensorFlow model given to :func:`load`, with the command."""
    import shlex
    source = "model.keras" if what == "the model bytes" else what
    target = (Path(source).name.split(".")[0] or "model") + ".onnx"
    return (f"{what} is {kind}, not an ONNX file: load() takes the ONNX file lstm-export "
            f"writes from it. Export it first (needs the trainer's TensorFlow install): "
            f"lstm-export {shlex.quote(source)} -o {target}, then load({target!r})")


def _external_words(exc) -> str:
    """ONNX Runtime's external-data refusal without its source-file positions."""
    text = " ".join(str(exc).split())
    text = text.split("External data path validation failed for ", 1)[-1]
    return re.sub(r"\S+\.cc:\d+ \w+ ", "", text)


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _axis(dim, names, what: str) -> int:
    """The size of the features/targets axis, from the graph or else from the metadata."""
    if isinstance(dim, int):
        return dim
    if names:
        return len(names)
    raise ContractError(f"the graph leaves the {what} axis dynamic and the metadata names no "
                        f"{what}; re-export the model with lstm-export")


def _units(shape, units: int) -> int:
    if len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    if units:
        return units
    raise ContractError(f"a state input has shape {shape} and lstm_edge.state gives no units")


def _check_missing(missing: str) -> str:
    if missing not in MISSING:
        raise InputError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    return missing


def _asarray(obj, what: str) -> np.ndarray:
    try:
        return np.asarray(obj)
    except (ValueError, TypeError) as exc:   # ragged lists: rows of different lengths
        raise ShapeError(f"the {what} cannot form one array ({exc}); every reading needs the "
                         f"same number of features") from None


def _some(names, most: int = 8) -> str:
    """Names joined with commas, at most ``most`` of them, then how many more."""
    names = [str(n) for n in names]
    more = f", … ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _describe(value, a) -> str:
    text = repr(value)
    return f"{text[:60]}{'…' if len(text) > 60 else ''} (dtype {a.dtype})"


def _replace(info, **changes):
    from dataclasses import replace
    return replace(info, **changes)
