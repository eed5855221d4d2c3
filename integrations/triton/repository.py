"""A Triton Inference Server model repository for an exported model, with implicit state.

The contract's state tensors (``in_h0`` -> ``out_h0``, batch first) map one to one onto Triton's
implicit state (``sequence_batching { state [...] }``): Triton keeps each sequence's state,
feeds a zero state on its first request (``initial_state { zero_data }``) and each output
state back as the next request's input state. One sequence is one sensor (``sequence_id`` =
sensor id), so Triton carries per-sensor state the way :class:`runtime.Stream` does.

The exported graph runs unchanged inside a graph written for Triton (:func:`triton_graph`):

- Every mode: a guard. Triton cannot refuse a request as ``lstm-run`` does, so a request
  whose readings are not all finite (a NaN: a missing reading) is not fed: ``y`` is NaN and
  every state comes back as it came in. Finite readings are answered bit for bit as before.
- ``sequence`` mode: a request carries one or more readings.
- ``window`` and ``stateful`` modes need the last ``window`` readings as well, carried as
  state: ``in_window`` ``(batch, window - 1, features)`` is a shift register the new reading
  is appended to, ``in_count`` counts readings up to ``window``, and the recurrent layers run
  over the whole window, from a zero state (``window``) or from the carried one
  (``stateful``). A request carries exactly one reading; ``warmup`` says the window has not
  filled yet, and ``y`` is NaN then, as the runtime gives None.
- ``lstm_edge.state_slots`` B > 1 (Keras ``stateful=True`` of batch B): each recurrent state
  is ``(batch, B, units)`` and ``in_slot`` says which slot the next full window runs from.

Imports onnx, numpy and the runtime only (no TensorFlow, nothing of the trainer): ``lstm-triton``
works on a runtime install with the ``[triton]`` extra. Before writing, the exported file is
loaded as ``lstm-run`` loads it (:func:`runtime.load`), so what ``lstm-run`` refuses (a
custom-op domain, a broken contract) is refused here too, and the graph written is loaded by
ONNX Runtime as Triton's backend will load it.
Triton's schema: ``model_config.proto`` (triton-inference-server/common); the checks in
:func:`check_served` follow what the ONNX Runtime backend and the sequence batcher validate
at load (state dims without the batch axis, one zero ``initial_state`` with a name, every
graph input fed by an input, a state or a control).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import PREFIX, X, Y, ModelInfo, derive_state
from runtime.errors import LstmEdgeError
from runtime.io import replace_file

from . import INSTANCE_KINDS, TritonError, TritonOptions

TRITON_KEY = PREFIX + "triton"     # metadata of a Triton variant graph (docs/contract.md)
WINDOW_IN, WINDOW_OUT = "in_window", "out_window"
COUNT_IN, COUNT_OUT = "in_count", "out_count"
WARMUP = "warmup"
_TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64",
                 TensorProto.INT32: "TYPE_INT32", TensorProto.BOOL: "TYPE_BOOL"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Served:
    """What the repository's graph takes and gives, as Triton sees it."""

    mode: str                             # the model's streaming mode
    variant: bool                         # True: one reading per request (window, slots)
    window: int                           # readings one prediction is made from
    states: list = field(default_factory=list)   # (input name, output name) pairs
    outputs: list = field(default_factory=list)  # graph outputs the client gets
    x_dims: list = field(default_factory=list)   # x's shape past the batch axis (None: any)
    slots: int = 1                        # state slots per sensor (lstm_edge.state_slots)


@dataclass
class TritonReport:
    """What :func:`write_repository` wrote."""

    folder: Path            # DIR/<name>
    name: str
    served: Served
    config: str             # the config.pbtxt text
    options: TritonOptions

    def summary(self) -> str:
        """The CLI's report: where, how the model is served, and what a client sends."""
        s, o = self.served, self.options
        shape = ", ".join(["1"] + ["n" if d is None else str(d) for d in s.x_dims])
        per_request = (f"{'one reading' if s.variant else 'one or more readings'} "
                       f"(x: [{shape}] per sensor and request)")
        how = (f" (window {s.window}, carried in Triton state)" if s.window > 1 else "")
        if s.slots > 1:
            how += f" ({s.slots} state slots per sensor, carried in Triton state)"
        lines = [f"wrote {self.folder / 'config.pbtxt'} and {self.folder / '1' / 'model.onnx'}",
                 f"mode:    {s.mode}{how}: the exported graph, unchanged, inside a graph "
                 f"written for Triton",
                 f"request: {per_request}; outputs {', '.join(s.outputs)}",
                 ("state:   " + ", ".join(f"{a} -> {b}" for a, b in s.states)
                  + " (zero at sequence start)") if s.states else "state:   none",
                 f"batcher: oldest, max_batch_size {o.max_batch_size}, "
                 f"{o.max_candidate_sequences} sequences, queue delay {o.max_queue_delay_us} us, "
                 f"idle {o.idle_seconds:g} s",
                 f"serve:   tritonserver --model-repository {self.folder.parent}"]
        if s.window > 1:
            lines.append(f"warm-up: the first {s.window - 1} readings of a sequence give "
                         f"warmup=true and y=NaN")
        lines.append("missing: a request with a NaN or inf reading is not fed: y NaN, the "
                     "sensor's state unchanged (docs/triton.md)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading

def read_model(model) -> tuple[onnx.ModelProto, ModelInfo]:
    """An exported file (path, bytes or ModelProto) and its contract metadata."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        try:
            proto = (onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray))
                     else onnx.load(str(model)))
        except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
            raise TritonError(f"{model}: cannot be read as an ONNX file ({type(exc).__name__}); "
                              f"give a file written by lstm-export") from None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        info = ModelInfo.from_metadata(props)
    except ValueError as exc:
        raise TritonError(str(exc)) from None
    if not info.state and TRITON_KEY not in props:
        shapes = {v.name: _dims(v) for v in proto.graph.input}
        info = dataclasses.replace(info, state=derive_state(shapes))
    return proto, info


def _dims(value: onnx.ValueInfoProto) -> list:
    """Shape of a graph tensor: ints, or None for a dynamic axis."""
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def _elem(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def _refuse_unsupported(info: ModelInfo) -> None:
    problems = []
    if "mask_value" in info.extra:
        problems.append(f"it has a Masking layer (lstm_edge.mask_value "
                        f"{info.extra['mask_value']}): the runtime does not feed a masked "
                        f"reading, Triton would; drop masked readings in the client and serve "
                        f"with lstm-run, or retrain without Masking")
    if problems:
        raise TritonError("this model cannot be served by Triton as exported: "
                          + "; ".join(problems))


# --------------------------------------------------------------------------- the served graph

def serving_graph(proto: onnx.ModelProto, info: ModelInfo) -> tuple[onnx.ModelProto, Served]:
    """The graph Triton runs (:func:`triton_graph`) and how it is served."""
    proto, served = _serving_graph(proto, info)
    served.x_dims = next((_dims(v)[1:] for v in proto.graph.input if v.name == X), [])
    return proto, served


def _serving_graph(proto, info):
    _refuse_unsupported(info)
    props = {p.key: p.value for p in proto.metadata_props}
    if TRITON_KEY in props:                           # already written for Triton: as it is
        meta = json.loads(props[TRITON_KEY])
        states = [(s["input"], s["output"]) for s in meta["state"]]
        states += [pair for spec in info.state for pair in zip(spec.inputs, spec.outputs)]
        outputs = [Y] + ([WARMUP] if meta.get("warmup") else [])
        one = meta.get("readings", "one") == "one"    # files before "readings": one reading
        return proto, Served(meta["mode"], one, int(meta["window"]), states, outputs,
                             slots=int(meta.get("slots", 1)))
    variant = triton_graph(proto, info)
    return _serving_graph(variant, read_model(variant)[1])


def triton_graph(proto: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """The graph Triton runs: the exported graph inside a guard, with the window as state.

    Every mode: a request (a row of the batch) whose readings are not all finite is not fed:
    its ``y`` is NaN and every state it carries comes back as it came in, as ``lstm-run``
    leaves a stream whose reading it refused (the graph cannot raise). ``sequence`` mode
    (one slot): otherwise the exported graph as it is, one or more readings per request.

    ``window``/``stateful`` modes, and ``sequence`` mode with ``state_slots`` B > 1 (a window
    of one reading): one reading per request. Inputs ``x`` ``(batch, 1, features)``,
    ``in_window`` ``(batch, window - 1, features)``, ``in_count`` ``(batch, 1)`` and, when
    the state is carried, the recurrent state inputs; outputs ``y`` ``(batch, 1, targets)``
    (NaN while warming up), ``warmup`` ``(batch, 1)`` bool, ``out_window``, ``out_count``
    and the recurrent state outputs. The exported graph runs inside it unchanged over the
    window ``concat(in_window, x)``; a window of 1 needs no buffer. With B > 1 slots every
    recurrent state is ``(batch, B, units)``, slot k in row k, and ``in_slot``/``out_slot``
    ``(batch, 1)`` is the slot the stream's next full window starts from (docs/contract.md,
    "State slots"): the window runs from that slot and leaves its state there.

    The pieces are added in this order, which fixes the order of the nodes and constants
    written (:class:`_Wrapper`): the guard (:func:`_guard`), the window register
    (:func:`_window_register`), ``y``, the recurrent state (:func:`_carried_states`,
    :func:`_slot_states` or :func:`_zero_states`), then :func:`_assemble`.
    """
    slots = info.state_slots if info.carry_state else 1
    sequence = info.streaming_mode == "sequence" and slots == 1
    _refuse_other_state(info, slots, sequence)
    graph = proto.graph
    inputs, outputs = _graph_io(graph)
    p = _prefix(graph)
    x = inputs[X]
    x_dims = _dims(x)                                  # [batch, time, F] or [batch, time]
    reading = ["batch", x_dims[1] if sequence else 1] + x_dims[2:]   # x of one request
    rename = _renames(info, slots, p)
    body = [_renamed(node, rename) for node in graph.node]
    w = _Wrapper(p, next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))

    ok = _guard(w, _elem(x), reading)                  # (batch, 1) bool
    nan = w.const("nan", np.float32(np.nan))
    if sequence:                                       # x and y as the file has them
        w.inputs, w.outputs = [x], [outputs[Y]]
    else:
        w.inputs = [helper.make_tensor_value_info(X, _elem(x), reading)]
        w.outputs = [helper.make_tensor_value_info(Y, TensorProto.FLOAT,
                                                   ["batch", 1] + _dims(outputs[Y])[2:])]
    if info.window > 1:
        fed, y_run = _window_register(w, info.window, x_dims, _elem(x), ok, rename)
    else:
        fed, y_run = ok, rename[Y]
    w.node("Where", [w.unsqueeze(fed, [2], p + "fed3"), y_run, nan], Y)  # (batch, 1 or time, T)
    if info.carry_state and slots == 1:
        _carried_states(w, info, inputs, outputs, fed, rename)
    elif info.carry_state:
        _slot_states(w, info, slots, fed, rename)
    else:
        _zero_states(w, info, rename)
    return _assemble(proto, info, w, body, slots, sequence)


@dataclass
class _Wrapper:
    """The Triton graph being built around the exported one: its added nodes and interface.

    Nodes whose output is named ``<prefix>pre_...`` run before the exported graph's, every
    other node after; constants are kept in the order they are first made.
    """

    prefix: str                           # no tensor name of the exported graph starts with it
    opset: int                            # of the default domain: Unsqueeze/ReduceSum axes
    pre: list = field(default_factory=list)      # nodes before the exported graph's
    post: list = field(default_factory=list)     # nodes after it
    inits: dict = field(default_factory=dict)    # constant name -> array
    inputs: list = field(default_factory=list)   # the graph's inputs (ValueInfoProto)
    outputs: list = field(default_factory=list)  # the graph's outputs (ValueInfoProto)
    states: list = field(default_factory=list)   # Triton state pairs the wrapper adds

    def const(self, name: str, array) -> str:
        """A constant (an initializer) named ``<prefix><name>``; returns its name."""
        self.inits[self.prefix + name] = np.asarray(array)
        return self.prefix + name

    def node(self, op: str, ins: list, out: str, **attrs) -> str:
        """A node with one output, before or after the exported graph's; returns ``out``."""
        (self.pre if out.startswith(self.prefix + "pre_") else self.post).append(
            helper.make_node(op, ins, [out], **attrs))
        return out

    def unsqueeze(self, name: str, axes: list, out: str) -> str:
        """Unsqueeze at ``axes``: an input from opset 13, an attribute before it."""
        if self.opset >= 13:
            return self.node("Unsqueeze", [name, self.const("axes" + "".join(map(str, axes)),
                                                            axes)], out)
        return self.node("Unsqueeze", [name], out, axes=axes)


def _refuse_other_state(info: ModelInfo, slots: int, sequence: bool) -> None:
    """Refuse a variant graph for state other than LSTM/GRU/RNN (only those are rewired)."""
    kinds = {s.kind for s in info.state} - {"lstm", "gru", "rnn"}
    if kinds and not sequence:
        fix = ("serve it with lstm-run, which keeps the slots" if slots > 1 else
               "re-export it in sequence mode (lstm-export --window 1 --carry-state) to serve "
               "it with Triton")
        raise TritonError(f"the {info.streaming_mode} mode needs a Triton variant graph, which "
                          f"is built for LSTM/GRU/RNN state only, and this file also carries "
                          f"{', '.join(sorted(kinds))} state; {fix}")


def _graph_io(graph) -> tuple[dict, dict]:
    """The exported graph's inputs and outputs by name; refused without ``x`` and ``y``."""
    inputs = {v.name: v for v in graph.input}
    outputs = {v.name: v for v in graph.output}
    missing = [f"the graph has no {side} {name!r} (it has {', '.join(have)}): give a file "
               f"written by lstm-export" for side, name, have in
               (("input", X, inputs), ("output", Y, outputs)) if name not in have]
    if missing:
        raise TritonError("the Triton repository would not load: " + "; ".join(missing))
    return inputs, outputs


def _renames(info: ModelInfo, slots: int, p: str) -> dict:
    """New names for the exported graph's tensors that the wrapper feeds or reads.

    ``x`` becomes the window (when there is one), ``y`` and every state output an internal
    tensor the wrapper picks from, and a state input the zero state (not carried) or the
    state gathered from the slot (B > 1 slots).
    """
    rename = {X: p + "window" if info.window > 1 else X, Y: p + "y_all"}
    for name in (n for s in info.state for n in s.outputs):
        rename[name] = p + "run_" + name
    for name in (n for s in info.state for n in s.inputs):
        if not info.carry_state:
            rename[name] = p + "zero_" + name
        elif slots > 1:
            rename[name] = p + "slot_" + name
    return rename


def _guard(w: _Wrapper, x_type: int, reading: list) -> str:
    """Nodes that say which requests' readings are all finite; returns that ``(batch, 1)`` bool.

    x * 0 is 0 where x is finite, NaN where it is NaN or inf (one Mul and one ReduceSum, not
    IsNaN + IsInf + Or); a token id is always finite.
    """
    p = w.prefix
    x_float = X if x_type == TensorProto.FLOAT else \
        w.node("Cast", [X], p + "pre_x_float", to=TensorProto.FLOAT)
    zeros = w.node("Mul", [x_float, w.const("zero", np.float32(0))], p + "pre_x_zero")
    axes = list(range(1, len(reading)))
    if w.opset >= 13:
        w.node("ReduceSum", [zeros, w.const("reading_axes", axes)], p + "pre_x_sum", keepdims=1)
    else:
        w.node("ReduceSum", [zeros], p + "pre_x_sum", axes=axes, keepdims=1)
    w.node("Equal", [p + "pre_x_sum", p + "zero"], p + "pre_finite")   # (batch, 1[, 1])
    return w.node("Reshape", [p + "pre_finite", w.const("batch_1", [-1, 1])],
                  p + "pre_ok")                                          # (batch, 1)


def _window_register(w: _Wrapper, window: int, x_dims: list, x_type: int, ok: str,
                     rename: dict) -> tuple[str, str]:
    """The window as Triton state: ``in_window`` shift register, ``in_count``, ``warmup``.

    The exported graph runs over ``concat(in_window, x)``; a refused reading is neither kept
    in the register nor counted. Returns the ``(batch, 1)`` bool "a full window was run"
    and the exported ``y``'s last step ``(batch, 1, T)``.
    """
    p = w.prefix
    buf = ["batch", window - 1] + x_dims[2:]          # (batch, window - 1, F)
    w.inputs += [helper.make_tensor_value_info(WINDOW_IN, x_type, buf),
                 helper.make_tensor_value_info(COUNT_IN, TensorProto.FLOAT, ["batch", 1])]
    w.outputs += [helper.make_tensor_value_info(WARMUP, TensorProto.BOOL, ["batch", 1]),
                  helper.make_tensor_value_info(WINDOW_OUT, x_type, buf),
                  helper.make_tensor_value_info(COUNT_OUT, TensorProto.FLOAT, ["batch", 1])]
    w.states += [{"input": WINDOW_IN, "output": WINDOW_OUT},
                 {"input": COUNT_IN, "output": COUNT_OUT}]
    big, one = w.const("big", [np.iinfo(np.int64).max]), w.const("one_i", [1])
    full = w.const("w", np.float32(window))
    # (batch, window - 1, F) ++ (batch, 1, F) -> (batch, window, F)
    w.pre.append(helper.make_node("Concat", [WINDOW_IN, X], [rename[X]], axis=1))
    shifted = w.node("Slice", [rename[X], one, big, w.const("axis1", [1])], p + "shifted")
    ok_buf = ok if len(buf) == 2 else w.unsqueeze(ok, [2], p + "ok3")
    w.node("Where", [ok_buf, shifted, WINDOW_IN], WINDOW_OUT)       # a refused reading
    w.node("Add", [COUNT_IN, w.const("one", np.float32(1))], p + "count")  # is not kept
    w.node("Min", [p + "count", full], p + "count_new")             # (batch, 1)
    w.node("Where", [ok, p + "count_new", COUNT_IN], COUNT_OUT)
    ready = w.node("GreaterOrEqual", [COUNT_OUT, full], p + "ready")
    w.node("Not", [ready], WARMUP)
    fed = w.node("And", [ready, ok], p + "fed")                     # a window was run
    y_last = w.node("Slice", [rename[Y], w.const("minus1", [-1]), big, p + "axis1"],
                    p + "y_last")
    return fed, y_last


def _carried_states(w: _Wrapper, info: ModelInfo, inputs: dict, outputs: dict, fed: str,
                    rename: dict) -> None:
    """One slot: each recurrent state as the file has it, moved on only where ``fed``."""
    for spec in info.state:
        for name_in, name_out in zip(spec.inputs, spec.outputs):
            w.inputs.append(inputs[name_in])
            w.outputs.append(outputs[name_out])
            # The state moves on only where a window was run, as in the runtime.
            w.node("Where", [fed, rename[name_out], name_in], name_out)


def _slot_states(w: _Wrapper, info: ModelInfo, slots: int, fed: str, rename: dict) -> None:
    """B > 1 slots: states ``(batch, B, units)``; the window runs from slot ``in_slot``.

    The slot's row is gathered as the exported graph's state input, its new state written
    back to that row only where a window was run (``fed3``, made for ``y``), and ``out_slot``
    moves on to the next slot.
    """
    p = w.prefix
    slot_idx = w.node("Cast", ["in_slot"], p + "pre_slot_idx", to=TensorProto.INT64)
    w.unsqueeze("in_slot", [2], p + "slot3")                          # (batch, 1, 1)
    w.node("Equal", [w.const("slot_range", np.arange(slots, dtype=np.float32)
                             .reshape(1, slots, 1)), p + "slot3"], p + "slot_mask")
    w.node("And", [p + "slot_mask", p + "fed3"], p + "slot_write")      # (batch, B, 1)
    for spec in info.state:
        for name_in, name_out in zip(spec.inputs, spec.outputs):
            dims = ["batch", slots, spec.units]
            w.inputs.append(helper.make_tensor_value_info(name_in, TensorProto.FLOAT, dims))
            w.outputs.append(helper.make_tensor_value_info(name_out, TensorProto.FLOAT, dims))
            w.states.append({"input": name_in, "output": name_out})
            w.pre.append(helper.make_node("GatherND", [name_in, slot_idx], [rename[name_in]],
                                          batch_dims=1))               # (batch, units)
            w.unsqueeze(rename[name_out], [1], p + "run1_" + name_out)   # (batch, 1, units)
            w.node("Where", [p + "slot_write", p + "run1_" + name_out, name_in], name_out)
    _slot_pointer(w, info.window, slots, fed)


def _slot_pointer(w: _Wrapper, window: int, slots: int, fed: str) -> None:
    """``in_slot`` -> ``out_slot`` ``(batch, 1)``: the next slot, mod B, where ``fed``."""
    p = w.prefix
    w.inputs.append(helper.make_tensor_value_info("in_slot", TensorProto.FLOAT, ["batch", 1]))
    w.outputs.append(helper.make_tensor_value_info("out_slot", TensorProto.FLOAT, ["batch", 1]))
    w.states.append({"input": "in_slot", "output": "out_slot"})
    one = p + "one" if window > 1 else w.const("one", np.float32(1))   # the register's "one"
    w.node("Add", ["in_slot", one], p + "slot_next")
    w.node("GreaterOrEqual", [p + "slot_next", w.const("slots", np.float32(slots))],
           p + "slot_wrap")
    w.node("Where", [p + "slot_wrap", p + "zero", p + "slot_next"], p + "slot_ring")
    w.node("Where", [fed, p + "slot_ring", "in_slot"], "out_slot")


def _zero_states(w: _Wrapper, info: ModelInfo, rename: dict) -> None:
    """State not carried: every window runs from a ``(batch, units)`` zero state."""
    p = w.prefix
    batch = p + "pre_batch"
    w.pre += [helper.make_node("Shape", [X], [p + "pre_shape"]),
              helper.make_node("Gather", [p + "pre_shape", w.const("zero_i", [0])], [batch])]
    for spec in info.state:
        for name in spec.inputs:                       # (batch, units) zeros: a fresh state
            size = p + "size_" + name
            w.pre += [helper.make_node("Concat", [batch, w.const("units_" + name, [spec.units])],
                                       [size], axis=0),
                      helper.make_node("ConstantOfShape", [size], [rename[name]],
                                       value=numpy_helper.from_array(np.zeros(1, np.float32)))]


def _assemble(proto: onnx.ModelProto, info: ModelInfo, w: _Wrapper, body: list, slots: int,
              sequence: bool) -> onnx.ModelProto:
    """The model: the wrapper's nodes around ``body``, its metadata, checked by onnx.checker.

    ``lstm_edge.state`` keeps only the recurrent state Triton carries as the file has it (one
    slot); ``lstm_edge.triton`` says how the graph is served (:func:`_serving_graph`).
    """
    graph = proto.graph
    initializers = list(graph.initializer) + [numpy_helper.from_array(a, n)
                                              for n, a in w.inits.items()]
    new_graph = helper.make_graph(w.pre + body + w.post, graph.name + "_triton", w.inputs,
                                  w.outputs, initializers)
    model = helper.make_model(new_graph, opset_imports=list(proto.opset_import),
                              producer_name="lstm-edge", ir_version=proto.ir_version)
    kept = [s.to_json() for s in info.state] if info.carry_state and slots == 1 else []
    meta = {p_.key: p_.value for p_ in proto.metadata_props}
    meta[PREFIX + "state"] = json.dumps(kept)
    meta[TRITON_KEY] = json.dumps({"mode": info.streaming_mode, "window": info.window,
                                   "state": w.states, "warmup": info.window > 1, "slots": slots,
                                   "readings": "any" if sequence else "one",
                                   "nonfinite": "not fed"})
    helper.set_model_props(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise TritonError(f"the graph written for Triton fails onnx.checker ({exc}); this is a bug "
                          f"in lstm-triton, please report it with the model") from None
    return model


def _prefix(graph) -> str:
    """A tensor-name prefix no name in the graph starts with."""
    names = {n for node in graph.node for n in (*node.input, *node.output)}
    names |= {i.name for i in graph.initializer}
    prefix = "triton_"
    while any(n.startswith(prefix) for n in names):
        prefix = "_" + prefix
    return prefix


def _renamed(node, rename: dict):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        copy.input[i] = rename.get(name, name)
    for i, name in enumerate(copy.output):
        copy.output[i] = rename.get(name, name)
    return copy


# --------------------------------------------------------------------------- config.pbtxt

def config_text(name: str, proto: onnx.ModelProto, served: Served, options: TritonOptions,
                source: str = "model") -> str:
    """``config.pbtxt`` for the served graph (protobuf text format of Triton's ModelConfig)."""
    inputs = {v.name: v for v in proto.graph.input}
    outputs = {v.name: v for v in proto.graph.output}
    state_in = {i for i, _ in served.states}

    def tensor(value):
        dims = ", ".join("-1" if d is None else str(d) for d in _dims(value)[1:])
        return (f"  {{\n    name: \"{value.name}\"\n    data_type: {_triton_type(value)}\n"
                f"    dims: [ {dims} ]\n  }}")

    def state(pair):
        value = inputs[pair[0]]
        dims = ", ".join(str(d) for d in _dims(value)[1:])
        kind = _triton_type(value)
        return (f"    {{\n      input_name: \"{pair[0]}\"\n      output_name: \"{pair[1]}\"\n"
                f"      data_type: {kind}\n      dims: [ {dims} ]\n"
                f"      initial_state: {{\n        data_type: {kind}\n        dims: [ {dims} ]\n"
                f"        zero_data: true\n        name: \"zero_{pair[0]}\"\n      }}\n    }}")

    lines = [f"# Written by lstm-triton from {source} ({served.mode} mode): one sequence per "
             f"sensor, its state kept by Triton.",
             f"name: \"{name}\"", "backend: \"onnxruntime\"",
             f"max_batch_size: {options.max_batch_size}",
             "input [", ",\n".join(tensor(v) for n, v in inputs.items() if n not in state_in),
             "]", "output [", ",\n".join(tensor(outputs[n]) for n in served.outputs), "]",
             "sequence_batching {",
             f"  max_sequence_idle_microseconds: {int(round(options.idle_seconds * 1e6))}",
             "  oldest {",
             f"    max_candidate_sequences: {options.max_candidate_sequences}",
             f"    max_queue_delay_microseconds: {options.max_queue_delay_us}",
             "  }"]
    if served.states:
        lines += ["  state [", ",\n".join(state(pair) for pair in served.states), "  ]"]
    lines.append("}")
    kind = INSTANCE_KINDS[options.instance_kind]
    if kind is not None:
        lines += ["instance_group [", f"  {{\n    kind: {kind}\n    count: {options.instances}\n"
                  f"  }}", "]"]
    return "\n".join(lines) + "\n"


def _triton_type(value) -> str:
    elem = _elem(value)
    if elem not in _TRITON_TYPES:
        raise TritonError(f"tensor {value.name!r} is "
                          f"{helper.tensor_dtype_to_np_dtype(elem).name}, which the generator "
                          f"does not map to a Triton type; re-export with lstm-export")
    return _TRITON_TYPES[elem]


def check_served(proto: onnx.ModelProto, served: Served, options: TritonOptions) -> None:
    """Refuse, listing every problem, a graph Triton's ONNX Runtime backend would not load.

    Every graph input is the request's ``x`` or a state input; every state has an output of
    the same dtype and shape; every tensor is batch first with a dynamic batch axis.
    """
    inputs = {v.name: v for v in proto.graph.input}
    outputs = {v.name: v for v in proto.graph.output}
    problems = [f"the graph has no {side} {name!r} (it has {', '.join(have)}): give a file "
                f"written by lstm-export" for side, name, have in
                (("input", X, inputs), ("output", Y, outputs)) if name not in have]
    for i, o in served.states:
        if i not in inputs or o not in outputs:
            problems.append(f"state {i} -> {o}: the graph has no "
                            f"{'input ' + i if i not in inputs else 'output ' + o}")
        elif (_elem(inputs[i]), _dims(inputs[i])) != (_elem(outputs[o]), _dims(outputs[o])):
            problems.append(f"state {i} -> {o}: input and output differ in dtype or shape")
        elif None in _dims(inputs[i])[1:]:
            problems.append(f"state {i} has a dynamic axis past the batch: {_dims(inputs[i])}")
    fed = {X} | {i for i, _ in served.states}
    problems += [f"graph input {n!r} is fed by neither the request nor a state"
                 for n in inputs if n not in fed]
    for value in [*inputs.values(), *outputs.values()]:
        dims = _dims(value)
        if not dims or dims[0] is not None:
            problems.append(f"tensor {value.name!r} is not batch first with a dynamic batch "
                            f"axis: {dims}")
    for key in ("max_batch_size", "max_candidate_sequences", "instances"):
        if getattr(options, key) < 1:
            problems.append(f"{key} must be at least 1, got {getattr(options, key)}")
    if options.max_queue_delay_us < 0 or options.idle_seconds <= 0:
        problems.append("the queue delay must be 0 or more and the idle time above 0 seconds")
    if options.instance_kind not in INSTANCE_KINDS:
        problems.append(f"instance kind must be one of {', '.join(INSTANCE_KINDS)}, "
                        f"got {options.instance_kind!r}")
    if problems:
        raise TritonError("the Triton repository would not load: " + "; ".join(problems))


def _check_loads(proto: onnx.ModelProto, served_proto: onnx.ModelProto, source: str) -> None:
    """Refuse what ``lstm-run`` refuses, and a served graph ONNX Runtime cannot load.

    The exported file goes through :func:`runtime.load`, the loader ``lstm-run`` uses (a
    custom-op domain, a broken contract: the same one line); a Triton variant graph is then
    loaded by ONNX Runtime itself, as Triton's backend will load ``1/model.onnx``.
    """
    import runtime
    from runtime.device import ORT_ERRORS, ort      # a one-line error where ORT is missing

    if served_proto is not proto or TRITON_KEY not in {p.key for p in proto.metadata_props}:
        try:
            runtime.load(proto.SerializeToString(), device="cpu")
        except LstmEdgeError as exc:
            raise TritonError(f"{source}: lstm-run refuses this file, so it is not served "
                              f"either: {exc}") from None
    if served_proto is not proto:
        try:
            ort.InferenceSession(served_proto.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        except ORT_ERRORS as exc:
            raise TritonError(f"the Triton variant of {source} does not load in ONNX Runtime "
                              f"({str(exc).splitlines()[0]}); this is a bug: report it with "
                              f"the file") from None


# --------------------------------------------------------------------------- writing

def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`runtime.io.replace_file`)."""
    try:
        replace_file(path, data)
    except OSError as exc:
        raise TritonError(f"{path}: cannot be written ({exc.strerror or exc})") from None


def write_repository(model, directory, options: TritonOptions | None = None) -> TritonReport:
    """Write ``DIR/<name>/config.pbtxt`` and ``DIR/<name>/1/model.onnx`` for an exported file.

    Parameters
    ----------
    model : the ``.onnx`` file written by ``lstm-export`` (path, bytes or ModelProto).
    directory : the model repository (created if missing; other models in it are left alone).
    options : batching, idle time, instances and the model's name.

    Raises
    ------
    TritonError : the file cannot be read, or cannot be served as it is (the message says
        what to re-export).
    """
    options = options or TritonOptions()
    proto, info = read_model(model)
    source = Path(model).name if isinstance(model, (str, os.PathLike)) else "model"
    name = options.name or (Path(model).stem if isinstance(model, (str, os.PathLike))
                            else "lstm")
    if not _NAME.match(name):
        raise TritonError(f"model name {name!r} is not a plain folder name; pass --name "
                          f"with letters, digits, '_', '-' or '.'")
    served_proto, served = serving_graph(proto, info)
    check_served(served_proto, served, options)
    _check_loads(proto, served_proto, source)
    text = config_text(name, served_proto, served, options, source)
    folder = Path(directory) / name
    _write(folder / "1" / "model.onnx", served_proto.SerializeToString())
    _write(folder / "config.pbtxt", text.encode())
    return TritonReport(folder, name, served, text, options)
