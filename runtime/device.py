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

import numpy as np
import onnxruntime as ort

from .errors import DeviceError

log = logging.getLogger("runtime")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _ort_errors() -> tuple:
    """ONNX Runtime's own exception types (InvalidProtobuf, Fail, ...), which share no base.

    RuntimeError too: pybind11 raises it for a C++ exception ORT does not map to one of them.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    types = [t for t in vars(state).values() if isinstance(t, type) and issubclass(t, Exception)]
    return (*types, RuntimeError)


ORT_ERRORS = _ort_errors()   # what creating a session may raise, for ``except ORT_ERRORS``


@dataclass
class SessionConfig:
    """How ONNX Runtime sessions are set up; the defaults suit one small call per step."""

    threads: int | None = 1    # intra-op threads: one tiny LSTM step cannot use more, and
                               # waking a thread pool per call costs more than the step itself
    sequential: bool = True    # ORT_SEQUENTIAL: no inter-op pool, the graph is a short chain
    optimize: bool = True      # ORT_ENABLE_ALL graph optimisations (fusions, constant folding)
    log_level: int = 3         # ORT's own log: errors only (0 verbose .. 4 fatal)

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
        return (f"this onnxruntime build has no {CUDA} (providers: "
                f"{', '.join(available_providers())}); install onnxruntime-gpu")
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


def new_session(model: bytes, providers: list, options: ort.SessionOptions):
    """One :class:`onnxruntime.InferenceSession` (a seam the tests replace)."""
    return ort.InferenceSession(model, options, providers=providers)


def create_session(model: bytes, device: str = "auto",
                   config: SessionConfig | None = None,
                   options: ort.SessionOptions | None = None, *, name: str = "model"):
    """A session on the device asked for, and the device it really runs on.

    Parameters
    ----------
    model : the ONNX file's bytes.
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
    options = options if options is not None else (config or SessionConfig()).options()
    if kind == "cpu":
        session = new_session(model, [CPU], options)
        log.info("runtime: %s runs on cpu (asked for cpu)", name)
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
    return session, "cpu"


class HostRunner:
    """Runs the graph on numpy arrays: ORT copies in and out (CPU, and many-stream calls).

    ``run(x, states)`` -> ``(y, states)``: x ``(batch, time, features)`` (``(batch, time)``
    for token ids), states one ``(batch, units)`` array per state input, y
    ``(batch, time, targets)``, the new states in the same order.
    """

    bound = False

    def __init__(self, session, x: str, y: str, state_in, state_out):
        self._names = (x, *state_in)
        self._outputs = [y, *state_out]
        # InferenceSession.run re-validates the feed names on every call; the wrapped C++
        # session is what it calls after that, and a stream's names were checked at load.
        inner = getattr(session, "_sess", None)
        self._run = inner.run if inner is not None else session.run

    def run(self, x, states, out=None):
        result = self._run(self._outputs, dict(zip(self._names, (x, *states))), None)
        return result[0], result[1:]


class BoundRunner(HostRunner):
    """Runs the graph with IO binding, the state living in :class:`onnxruntime.OrtValue`\\ s.

    On CUDA this keeps a stream's state on the device between steps: the state input is
    bound to the OrtValue the previous step wrote, the state output to the stream's other
    buffer, and the two are swapped (see ``Stream._advance``). Only ``x`` goes up and ``y``
    comes down per step. States may be numpy arrays too (a fresh restore, or the rows a
    many-stream call left), which are copied up once.
    """

    bound = True

    def __init__(self, session, x: str, y: str, state_in, state_out, device: str = "cpu"):
        super().__init__(session, x, y, state_in, state_out)
        self._session, self._x, self._y = session, x, y
        self._state_in, self._state_out = tuple(state_in), tuple(state_out)
        kind, _, index = device.partition(":")
        self.device = (kind, int(index or 0))
        self._io = session.io_binding()

    def ortvalue(self, array):
        """``array`` copied to this runner's device."""
        return ort.OrtValue.ortvalue_from_numpy(array, *self.device)

    def empty(self, shape, dtype=None):
        """An uninitialised float32 OrtValue of ``shape`` on this runner's device."""
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype or np.float32,
                                                         *self.device)

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
        self._session.run_with_iobinding(io)
        y = io.get_outputs()[0].numpy()  # (batch, time, targets) on the host
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        return y, out


def to_host(value):
    """A state tensor as a numpy array, wherever it lives."""
    return value.numpy() if isinstance(value, ort.OrtValue) else value
