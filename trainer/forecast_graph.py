"""The forecast framing in the ONNX graph: differenced inputs before the network, the
residual add-back after it (see :mod:`trainer.forecast` for what they are and why).

:func:`apply` wraps the graph :func:`trainer.graph.emit` made, whatever its layers: the
network's ``x`` becomes an inner tensor fed from the differencing nodes, its ``y`` an inner
tensor the target's current reading is added to. Both work on raw units (before the input
scaling, after the output de-scaling), so a consumer still feeds readings and reads values.

- Residual: ``y = y_change + Gather(x, target_features, axis=2)``: no state, one op.
- Differencing, windows (``window``/``stateful`` mode): inside one call,
  ``d[t] = x[t] - x[t-1]`` with ``d[0] = 0`` ("no change"): the window holds
  ``look_back + 1`` readings; no state.
- Differencing, sequence mode: the previous reading is state, ``in_x{i}``/``out_x{i}`` of
  ``(batch, features + 1)``: the reading, then a flag that is 1 once a reading was seen. A
  fresh stream (zeros) has no previous reading; its first difference is 0, "no change", the
  trainer's rule for the first row of a series; a previous reading of 0 (flag 1) is real.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import StateSpec
from .errors import ExportError

INT_MAX = np.iinfo(np.int64).max


def plan(sidecar: dict | None, window: int, carry_state: bool) -> dict | None:
    """What to wrap, from the trainer's sidecar: ``{"residual": [...], "difference": ...}``.

    ``difference`` is ``"state"`` for a model that streams one reading per step (the previous
    reading must be carried), ``"window"`` where each call holds a whole window, else None.
    """
    framing = (sidecar or {}).get("forecast") or {}
    residual = framing.get("target_features") if framing.get("target_kind") == "residual" else None
    difference = None
    if framing.get("difference"):
        difference = "state" if window == 1 and carry_state else "window"
    if residual is None and difference is None:
        return None
    return {"residual": None if residual is None else [int(i) for i in residual],
            "difference": difference}


def apply(graph: onnx.GraphProto, state: list, extra: dict, wrap: dict | None, *,
          features: int, outputs: int, tokens: bool) -> tuple:
    """``(graph, state, metadata)`` with the framing of ``wrap`` (from :func:`plan`) built in.

    ``extra`` is what the emitter reported (e.g. ``mask_value``); ``metadata`` holds the new
    ``lstm_edge.*`` keys, for the record: ``residual`` and ``difference``.
    """
    if not wrap:
        return graph, state, {}
    if tokens:
        raise ExportError("the sidecar asks for a residual or differenced model, but the model "
                          "reads token ids; re-train it with --target-kind level")
    if wrap["difference"] and "mask_value" in extra:
        raise ExportError("a differenced model cannot also mask readings (a masked reading "
                          "has no difference); re-train it without --difference")
    pre, post, inits = [], [], []
    state, meta = list(state), {}

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    if wrap["difference"]:
        _rename_input(graph, "x", "fc_x_change")
        _difference(graph, _adder(pre), const, features, wrap["difference"], state)
        meta["difference"] = json.dumps(wrap["difference"])
    if wrap["residual"] is not None:
        residual = wrap["residual"]
        if len(residual) != outputs or not all(0 <= i < features for i in residual):
            raise ExportError(f"the sidecar's target_features {residual} do not fit a model "
                              f"with {features} features and {outputs} outputs")
        _rename_output(graph, "y", "fc_y_change")
        node = _adder(post)
        index = const("fc_target_features", np.asarray(residual, np.int64))
        node("Gather", ["x", index], "fc_y_last", axis=2)             # (b, T, targets), raw
        node("Add", ["fc_y_change", "fc_y_last"], "y")
        meta["residual"] = json.dumps({"target_features": residual})
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(pre + body + post)
    graph.initializer.extend(inits)
    return graph, state, meta


def _adder(nodes: list):
    """A function appending one node to ``nodes``, named after its output."""
    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=f"fc_{output}", **attrs))
        return output
    return node


def _difference(graph, node, const, features: int, kind: str, state: list) -> None:
    """Nodes from raw ``x`` to ``fc_x_change``; sequence mode adds the ``prev`` state."""
    one, zero, minus = (const("fc_axis1", np.array([1], np.int64)),
                        const("fc_zero", np.array([0], np.int64)),
                        const("fc_minus1", np.array([-1], np.int64)))
    node("Slice", ["x", zero, minus, one], "fc_x_head")                 # (b, T-1, F)
    if kind == "window":
        node("Slice", ["x", zero, one, one], "fc_x_start")             # (b, 1, F): d[0] = 0
    else:
        spec = StateSpec.for_layer(_next_index(state), "previous reading", "prev", features + 1)
        state.append(spec)
        (held,), (carried,) = spec.inputs, spec.outputs
        graph.input.append(helper.make_tensor_value_info(held, TensorProto.FLOAT,
                                                         ["batch", features + 1]))
        graph.output.append(helper.make_tensor_value_info(carried, TensorProto.FLOAT,
                                                          ["batch", features + 1]))
        width = const("fc_width", np.array([features], np.int64))
        after = const("fc_width1", np.array([features + 1], np.int64))
        node("Slice", [held, zero, width, one], "fc_prev")             # (b, F)
        node("Slice", [held, width, after, one], "fc_seen")            # (b, 1)
        node("Greater", ["fc_seen", const("fc_half", np.array(0.5, np.float32))], "fc_known")
        node("Slice", ["x", zero, one, one], "fc_x0")                  # (b, 1, F)
        node("Squeeze", ["fc_x0", one], "fc_x0_flat")                  # (b, F)
        node("Where", ["fc_known", "fc_prev", "fc_x0_flat"], "fc_start")   # fresh: no change
        node("Unsqueeze", ["fc_start", one], "fc_x_start")             # (b, 1, F)
        node("Slice", ["x", minus, const("fc_end", np.array([INT_MAX], np.int64)), one],
             "fc_x_last")                                              # (b, 1, F)
        node("Squeeze", ["fc_x_last", one], "fc_x_last_flat")          # (b, F)
        node("Shape", ["fc_seen"], "fc_seen_shape")
        node("Expand", [const("fc_one", np.ones((1, 1), np.float32)), "fc_seen_shape"],
             "fc_ones")                                                # (b, 1)
        node("Concat", ["fc_x_last_flat", "fc_ones"], carried, axis=1)  # (b, F + 1)
    node("Concat", ["fc_x_start", "fc_x_head"], "fc_x_before", axis=1)   # (b, T, F)
    node("Sub", ["x", "fc_x_before"], "fc_x_change")


def _next_index(state: list) -> int:
    return sum(1 for s in state if s.kind == "prev")


def _rename_input(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = new


def _rename_output(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, name in enumerate(n.output):
            if name == old:
                n.output[k] = new
