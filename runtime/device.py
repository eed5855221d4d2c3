"""Choosing where a model runs: an ONNX Runtime session on CPU or on a CUDA device.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` among its providers whether or not the
CUDA and cuDNN libraries it needs can be loaded, and when they cannot, a session asked for
CUDA quietly runs on CPU. So the only trustworthy answer is the session's own
``get_providers()`` after it was created: ``auto`` takes CUDA only when that says so, and an
explicit ``cuda`` that did not get it is an error saying why.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from functools import partial

import numpy as np

from .errors import ORT_EXTRAS, DeviceError, MissingExtra

try:    # the one import of onnxruntime: neither extra installed, or a half-removed one, is a line
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as _state
except ImportError as exc:
    # Both wheels fill one `onnxruntime` folder: uninstalling one of the two leaves it broken.
    raise MissingExtra(ORT_EXTRAS if getattr(exc, "name", None) == "onnxruntime" else
                       f"ONNX Runtime is installed but broken ({exc}): pip uninstall -y "
                       f"onnxruntime onnxruntime-gpu, then install exactly one of "
                       f"'lstm-edge[cpu]' and 'lstm-edge[gpu]'") from None

log = logging.getLogger("runtime")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _ort_errors() -> tuple:
    """ONNX Runtime's own exception types (InvalidProtobuf, Fail, ...), which share no base.

    RuntimeError too: pybind11 raises it for a C++ exception ORT does not map to one of them.
    """
    types = [t for t in vars(_state).values() if isinstance(t, type) and issubclass(t, Exception)]
    return (*types, RuntimeError)


ORT_ERRORS = _ort_errors()   # what creating a session may raise, for ``except ORT_ERRORS``

# Streams in one call from which a one-thread CPU session hands the call to a multi-threaded
# twin (see BatchThreads): one stream's step is ~10 µs, where waking a pool costs more than it
# saves; from about a thousand streams the call is compute-bound and splits across cores.
BATCH_THREADS_FROM = 1024


# ORT's session entry for the folder external data is read from (else: the current directory).
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"


@dataclass
class SessionConfig:
    """How ONNX Runtime sessions are set up; the defaults suit one small call per step."""

    threads: int | None = 1    # intra-op threads: one tiny LSTM step cannot use more, and
                               # waking a thread pool per call costs more than the step itself
    sequential: bool = True    # ORT_SEQUENTIAL: no inter-op pool, the graph is a short chain
    optimize: bool = True      # ORT_ENABLE_ALL graph optimisations (fusions, constant folding)
    log_level: int = 3         # ORT's own log: errors only (0 verbose .. 4 fatal)
    batch_threads: int | None = 0  # intra-op threads for calls of BATCH_THREADS_FROM streams
                                   # or more, where threads is 1: 0 picks the machine's
                                   # cores, None keeps every call on one thread
    external_folder: str | None = None   # where external data may be read from: the model's
                                         # own folder (a model file is untrusted input)
    arena: bool = False        # ORT's CPU memory arena. A step's tensors are a few hundred
                               # bytes, which malloc hands out faster than the arena: off,
                               # a 1x16 LSTM step is ~9 % quicker (docs/benchmarks.md), and
                               # many-stream calls are no slower

    def options(self) -> ort.SessionOptions:
        """The :class:`onnxruntime.SessionOptions` these settings stand for."""
        so = ort.SessionOptions()
        if self.threads is not None:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if self.sequential
                             else ort.ExecutionMode.ORT_PARALLEL)
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        so.log_severity_level = self.log_level
        so.enable_cpu_mem_arena = self.arena
        if self.external_folder is not None:
            so.add_session_config_entry(EXTERNAL_FOLDER, self.external_folder)
        return so


def parse_device(device: str) -> tuple[str, int]:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` as (kind, index).

    >>> parse_device("cuda:1"), parse_device("auto"), parse_device("cuda")
    (('cuda', 1), ('auto', 0), ('cuda', 0))
    """
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind in ("auto", "cpu") and not index:
        return kind, 0
    if kind == "cuda" and (not index or index.isdigit()):
        return kind, int(index or 0)
    raise DeviceError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def available_providers() -> list[str]:
    """The providers this ONNX Runtime build was compiled with (not proof that they work)."""
    return ort.get_available_providers()


def cuda_library_problem() -> str | None:
    """Why CUDA cannot start in this process, when that can be told without ORT, else None.

    Loading the CUDA provider library ourselves surfaces the missing dependency (e.g.
    ``libcublasLt.so.13``) as an exception instead of two lines of ORT's log on stderr.
    """
    if CUDA not in available_providers():
        # Not "install onnxruntime-gpu": beside onnxruntime it fills the same folder, and
        # the two break each other (docs/device.md); one must go before the other comes.
        return (f"this onnxruntime build has no {CUDA} (providers: "
                f"{', '.join(available_providers())}): it is the CPU package; to run on an "
                f"NVIDIA GPU, switch to the GPU package: pip uninstall -y onnxruntime "
                f"onnxruntime-gpu, then pip install 'lstm-edge[gpu]' ('.[gpu]' from a "
                f"checkout), never both in one environment")
    name = ("onnxruntime_providers_cuda.dll" if sys.platform == "win32"
            else "libonnxruntime_providers_cuda.so")
    path = os.path.join(os.path.dirname(ort.__file__), "capi", name)
    if not os.path.exists(path):
        return None  # an unusual layout: let the session attempt tell
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return (f"the CUDA libraries did not load ({exc}); install CUDA and cuDNN as "
                f"onnxruntime-gpu's requirements page says, or call onnxruntime.preload_dlls()")
    return None


def new_session(model: bytes | str, providers: list, options: ort.SessionOptions):
    """One :class:`onnxruntime.InferenceSession` (a seam the tests replace)."""
    return ort.InferenceSession(model, options, providers=providers)


def create_session(model: bytes | str, device: str = "auto",
                   config: SessionConfig | None = None,
                   options: ort.SessionOptions | None = None, *, name: str = "model"):
    """A session on the device asked for, and the device it really runs on.

    Parameters
    ----------
    model : the ONNX file's bytes, or its path.
    device : ``"auto"`` (CUDA where a session really runs on it, else CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.
    config : session settings; :class:`SessionConfig` defaults when None.
    options : ready-made session options, used as they are instead of ``config``.
    name : what to call the model in the log line.

    Returns
    -------
    (session, device) where device is ``"cpu"`` or ``"cuda:N"``.

    Raises
    ------
    DeviceError : ``cuda`` was asked for and cannot run, or the device string is unknown.
    ORT_ERRORS : the model itself cannot be loaded (on CPU either).
    """
    kind, index = parse_device(device)
    given = options is not None
    config = config or SessionConfig()
    options = options if given else config.options()
    if kind == "cpu":
        session = new_session(model, [CPU], options)
        log.info("runtime: %s runs on cpu (asked for cpu)", name)
        if not given:
            BatchThreads.attach(session, model, config)
        return session, "cpu"
    problem, fallback = cuda_library_problem(), None
    if problem is None:
        try:
            session = new_session(model, [(CUDA, {"device_id": index}), CPU], options)
        except ORT_ERRORS as exc:
            # A corrupt file fails here too: it is the model's fault, not the device's, when
            # a CPU session fails as well, and that session's error is what the caller gets.
            fallback = new_session(model, [CPU], options)
            problem = f"creating a CUDA session failed: {exc}"
        else:
            if session.get_providers()[0] == CUDA:
                log.info("runtime: %s runs on cuda:%d (%s)", name, index, CUDA)
                return session, f"cuda:{index}"
            fallback = session
            problem = (f"{CUDA} is installed but the session fell back to "
                       f"{session.get_providers()[0]} (no usable GPU, or CUDA_VISIBLE_DEVICES "
                       f"hides it; ORT's log above says more)")
    if kind == "cuda":
        raise DeviceError(f"device {device!r} cannot run: {problem}; use device='cpu' or 'auto'")
    session = fallback if fallback is not None else new_session(model, [CPU], options)
    log.info("runtime: %s runs on cpu (auto: %s)", name, problem)
    if not given:
        BatchThreads.attach(session, model, config)
    return session, "cpu"


class BatchThreads:
    """A multi-threaded twin of a one-thread CPU session, for calls of many streams.

    One stream's step runs fastest on one thread; a call of thousands of streams is
    compute-bound and splits across cores. The twin is the same model with
    ``config.batch_threads`` intra-op threads, created at the first call that needs it, and
    :class:`HostRunner` hands it every call of :data:`BATCH_THREADS_FROM` streams or more.
    Attached only where the runtime chose the options (not to ready-made ``SessionOptions``)
    and ``threads`` is 1.
    """

    def __init__(self, model: bytes | str, config: SessionConfig, threads: int):
        self.threads = threads
        self._model, self._config, self._run = model, config, None

    @classmethod
    def attach(cls, session, model: bytes | str, config: SessionConfig) -> None:
        threads = config.batch_threads if config.batch_threads else (os.cpu_count() or 1)
        if config.threads == 1 and config.batch_threads is not None and threads > 1:
            try:
                session.lstm_edge_batch = cls(model, config, threads)
            except AttributeError:      # a stand-in session that takes no attributes
                pass

    @staticmethod
    def of(session) -> "BatchThreads | None":
        """The twin attached to ``session``, or None (one thread for every call)."""
        return getattr(session, "lstm_edge_batch", None)

    def run(self, outputs, feeds, options=None):
        """``InferenceSession.run`` on the twin (created on the first call)."""
        if self._run is None:
            # The arena back on: a call of thousands of streams allocates megabytes, which
            # the arena keeps for the next call (without it, 4,096 streams of a 2x64 LSTM
            # peak 17 MiB higher).
            config = SessionConfig(**{**vars(self._config), "threads": self.threads,
                                      "arena": True})
            pooled = config.options()
            # Idle pool threads sleep instead of spinning: between calls a spinning pool
            # takes the cores from everything else on a shared machine.
            pooled.add_session_config_entry("session.intra_op.allow_spinning", "0")
            twin = new_session(self._model, [CPU], pooled)
            self._run = getattr(twin, "_sess", twin).run
        return self._run(outputs, feeds, options)


def bound_call(session, io):
    """``call()``: one run of ``session`` with the IO binding ``io``, as cheap as ORT allows.

    ``InferenceSession.run_with_iobinding`` (ORT 1.31) looks for WebGPU graph capture before
    it calls the wrapped C++ session: ~1 µs, and ~24 µs when given a ``RunOptions``, whose
    ``get_run_config_entry("gpu_graph_id")`` raises (and the wrapper catches) when the key is
    unset. Measured on a 1-layer 16-unit LSTM step: 28.7 µs through the wrapper with a
    ``RunOptions``, 6.7 µs without, 5.3 µs calling ``session._sess.run_with_iobinding``. The
    runtime never captures graphs, so it calls the C++ session, as ``HostRunner`` does for
    ``run``; where a build lacks the private attributes, the public method.
    """
    inner, binding = getattr(session, "_sess", None), getattr(io, "_iobinding", None)
    if inner is None or binding is None or not hasattr(inner, "run_with_iobinding"):
        return partial(session.run_with_iobinding, io)
    return partial(inner.run_with_iobinding, binding, ort.RunOptions())


class StepBinding:
    """One stream's calls through two pre-built IO bindings, its state ping-ponging.

    Binding 0 reads state set 0 and writes set 1, binding 1 the reverse. A call writes its
    input into ``x`` in place, runs one binding and reads ``y``: nothing is bound, fed or
    allocated per call, which leaves ORT's own run as the cost of a step. A call never
    writes the set it reads, so one that raises leaves the state it started from intact.
    Both sets start as zeros.

    Attributes
    ----------
    x : the numpy buffer ORT reads the next call's input from, ``(1, time, features)``.
    window : ``(time, features)`` view of ``x``'s one window.
    row : ``(features,)`` view of its last reading (the whole input for one step).
    last : ``(targets,)`` view of the last step of ``y``, the numpy buffer ORT writes.
    calls : the two bound runs, ``calls[i]()`` reading set ``i`` and writing the other.
    sets : the two state sets, one ``(1, units)`` tensor per state input in each: numpy
        arrays that CPU OrtValues wrap (host), or OrtValues on the device (bound runner).
    """

    __slots__ = ("x", "window", "row", "last", "sets", "calls", "_keep")

    def __init__(self, session, names, x, x_graph, y, sets, values):
        x_name, y_name, state_in, state_out = names
        self.x, self.window, self.row, self.last = x, x[0], x[0, -1], y[0, -1]
        self.sets = sets
        x_value = ort.OrtValue.ortvalue_from_numpy(x_graph)
        y_value = ort.OrtValue.ortvalue_from_numpy(y)
        calls, ios = [], []
        for i in (0, 1):
            io = session.io_binding()
            io.bind_ortvalue_input(x_name, x_value)
            io.bind_ortvalue_output(y_name, y_value)
            for name, value in zip(state_in, values[i]):
                io.bind_ortvalue_input(name, value)
            for name, value in zip(state_out, values[1 - i]):
                io.bind_ortvalue_output(name, value)
            calls.append(bound_call(session, io))
            ios.append(io)
        self.calls = tuple(calls)
        # An IOBinding holds ORT's tensors, not these Python objects: keep them (and the
        # numpy memory CPU OrtValues wrap) alive as long as the bindings.
        self._keep = (x_graph, y, x_value, y_value, values, ios)

    def run(self, state):
        """One call from ``state``; returns the set that now holds the new state.

        ``state`` is one of :attr:`sets`, or any other state (numpy arrays or OrtValues),
        which is copied into set 0 first.
        """
        sets = self.sets
        i = 0 if state is sets[0] else 1 if state is sets[1] else self._load(state)
        self.calls[i]()
        return sets[1 - i]

    def run_fresh(self) -> None:
        """One call from a zero state, for a stream that carries none (window mode).

        That stream only ever calls this, which reads set 0 and writes set 1: set 0 stays
        the zeros it was made as.
        """
        self.calls[0]()

    def spare(self, state):
        """The set ``state`` is not in: where a call from ``state`` may write."""
        return self.sets[1] if state is self.sets[0] else self.sets[0]

    def _load(self, state) -> int:
        for target, value in zip(self.sets[0], state):
            if isinstance(target, ort.OrtValue):
                target.update_inplace(np.ascontiguousarray(to_host(value), np.float32))
            else:
                np.copyto(target, to_host(value))
        return 0


class HostRunner:
    """Runs the graph on numpy arrays: ORT copies in and out (CPU, and many-stream calls).

    ``run(x, states)`` -> ``(y, states)``: x ``(batch, time, features)`` (``(batch, time)``
    for token ids), states one ``(batch, units)`` array per state input, y
    ``(batch, time, targets)``, the new states in the same order.
    """

    bound = False

    def __init__(self, session, x: str, y: str, state_in, state_out):
        self._session = session
        self._names = (x, *state_in)
        self._outputs = [y, *state_out]
        self._binding_names = (x, y, tuple(state_in), tuple(state_out))
        # InferenceSession.run re-validates the feed names on every call; the wrapped C++
        # session is what it calls after that, and a stream's names were checked at load.
        inner = getattr(session, "_sess", None)
        self._run = inner.run if inner is not None else session.run
        self._batch = BatchThreads.of(session)

    def run(self, x, states):
        batch = self._batch
        run = batch.run if batch is not None and len(x) >= BATCH_THREADS_FROM else self._run
        result = run(self._outputs, dict(zip(self._names, (x, *states))), None)
        return result[0], result[1:]

    def step_binding(self, x, x_graph, y, units) -> StepBinding:
        """A :class:`StepBinding` over the buffers ``x``/``y``, its state sets numpy arrays.

        ``x_graph`` is ``x`` as the graph reads it (a view: token ids drop the last axis).
        """
        sets = tuple(tuple(np.zeros((1, u), np.float32) for u in units) for _ in "ab")
        values = tuple(tuple(ort.OrtValue.ortvalue_from_numpy(a) for a in s) for s in sets)
        return StepBinding(self._session, self._binding_names, x, x_graph, y, sets, values)


class BoundRunner(HostRunner):
    """Runs the graph with IO binding, the state living in :class:`onnxruntime.OrtValue`\\ s.

    On CUDA this keeps a stream's state on the device between calls: a stream's
    :class:`StepBinding` holds two sets of state OrtValues on the device, and only ``x``
    goes up and ``y`` comes down per step. A chunk (``run_bound``) reads the state from one
    set and writes the other the same way. States may be numpy arrays too (a fresh restore,
    or the rows a many-stream call left), which are copied up once.
    """

    bound = True

    def __init__(self, session, x: str, y: str, state_in, state_out, device: str = "cpu"):
        super().__init__(session, x, y, state_in, state_out)
        self._x, self._y = x, y
        self._state_in, self._state_out = tuple(state_in), tuple(state_out)
        kind, _, index = device.partition(":")
        self.device = (kind, int(index or 0))
        self._io = session.io_binding()
        self._call = bound_call(session, self._io)

    def step_binding(self, x, x_graph, y, units) -> StepBinding:
        """A :class:`StepBinding` whose state sets are OrtValues on this runner's device."""
        values = tuple(tuple(ort.OrtValue.ortvalue_from_numpy(np.zeros((1, u), np.float32),
                                                              *self.device) for u in units)
                       for _ in "ab")
        return StepBinding(self._session, self._binding_names, x, x_graph, y, values, values)

    def run_bound(self, x, states, out):
        """One call; the new state is written into ``out`` (OrtValues on the device)."""
        io = self._io
        io.bind_cpu_input(self._x, x)
        for name, value in zip(self._state_in, states):
            if isinstance(value, ort.OrtValue):
                io.bind_ortvalue_input(name, value)
            else:
                io.bind_cpu_input(name, value)
        io.bind_output(self._y, "cpu")
        for name, value in zip(self._state_out, out):
            if value is None:   # nobody keeps this state (window mode): let ORT allocate
                io.bind_output(name, *self.device)
            else:
                io.bind_ortvalue_output(name, value)
        try:
            self._call()
            y = io.get_outputs()[0].numpy()  # (batch, time, targets) on the host
        finally:
            io.clear_binding_inputs()
            io.clear_binding_outputs()
        return y, out


def to_host(value):
    """A state tensor as a numpy array, wherever it lives."""
    return value.numpy() if isinstance(value, ort.OrtValue) else value
