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
    kind = framing.get("target_kind")
    residual = framing.get("target_features") if kind in ("residual", "seasonal") else None
    difference = None
    if framing.get("difference"):
        difference = "state" if window == 1 and carry_state else "window"
    seasonal = None
    if kind == "seasonal":
        if not (window == 1 and carry_state):
            raise ExportError("a seasonal-target model streams one reading at a time, carrying "
                              "the last season's readings: export it in sequence mode (no "
                              "--window, no --no-carry-state)")
        seasonal = {"season": int(framing["season"]), "horizon": int(sidecar["horizon"])}
    linear = framing.get("linear") if residual is not None else None
    if linear is not None and difference != "state":
        raise ExportError("a model with a linear path reads the change of every reading, "
                          "carrying the previous one: export it in sequence mode (no "
                          "--window, no --no-carry-state)")
    if residual is None and difference is None:
        return None
    return {"residual": None if residual is None else [int(i) for i in residual],
            "difference": difference, "seasonal": seasonal, "linear": linear}


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
        start = node("Gather", ["x", index], "fc_y_last", axis=2)     # (b, T, targets), raw
        if wrap.get("seasonal"):
            start = _seasonal(graph, node, const, len(residual), state, **wrap["seasonal"])
            meta["seasonal"] = json.dumps(wrap["seasonal"])
        if wrap.get("linear"):
            start = _linear(graph, node, const, features, len(residual), start, state,
                            **wrap["linear"])
            meta["linear"] = json.dumps(wrap["linear"])
        node("Add", ["fc_y_change", start], "y")
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


def _seasonal(graph, node, const, targets: int, state: list, season: int,
              horizon: int) -> str:
    """Nodes from ``fc_y_last`` to ``fc_y_start``, the seasonal target's start: the reading
    plus ``y[t+h-m] - y[t-m]``; adds the ``prev`` state of the last season's readings.

    The state holds the last ``m`` target readings, each with a flag (1: a real reading), as
    ``(batch, m * (targets + 1))``; zeros are a fresh stream. A chunk of ``T`` readings is
    appended to it, ``H = (b, m + T, targets + 1)``: step ``t`` finds ``y[t-m]`` in row ``t``
    and ``y[t+h-m]`` in row ``t+h``. Until a season was seen (row ``t`` not a real reading)
    the change is 0, the trainer's rule, so the start is the last reading.
    """
    m, k = season, targets
    width = m * (k + 1)
    spec = StateSpec.for_layer(_next_index(state), "last season's readings", "prev", width)
    state.append(spec)
    (held,), (carried,) = spec.inputs, spec.outputs
    graph.input.append(helper.make_tensor_value_info(held, TensorProto.FLOAT, ["batch", width]))
    graph.output.append(helper.make_tensor_value_info(carried, TensorProto.FLOAT,
                                                      ["batch", width]))
    axis1 = const("fc_s_axis1", np.array([1], np.int64))
    axis2 = const("fc_s_axis2", np.array([2], np.int64))
    zero = const("fc_s_zero", np.array([0], np.int64))
    node("Reshape", [held, const("fc_s_shape3", np.array([-1, m, k + 1], np.int64))],
         "fc_s_held")                                                  # (b, m, k + 1)
    node("Shape", ["fc_y_last"], "fc_s_ylast_shape")                   # [b, T, k]
    node("Slice", ["fc_s_ylast_shape", zero, const("fc_s_two", np.array([2], np.int64))],
         "fc_s_bt")
    node("Concat", ["fc_s_bt", const("fc_s_one", np.array([1], np.int64))], "fc_s_flag_shape",
         axis=0)
    node("Expand", [const("fc_s_ones", np.ones((1, 1, 1), np.float32)), "fc_s_flag_shape"],
         "fc_s_flags")                                                 # (b, T, 1)
    node("Concat", ["fc_y_last", "fc_s_flags"], "fc_s_new", axis=2)    # (b, T, k + 1)
    node("Concat", ["fc_s_held", "fc_s_new"], "fc_s_hist", axis=1)     # (b, m + T, k + 1)
    end = np.array([horizon - m if horizon < m else INT_MAX], np.int64)
    node("Slice", ["fc_s_hist", zero, const("fc_s_minus_m", np.array([-m], np.int64)), axis1],
         "fc_s_back")                                                  # (b, T, k + 1): y[t-m]
    node("Slice", ["fc_s_hist", const("fc_s_h", np.array([horizon], np.int64)),
                   const("fc_s_end", end), axis1], "fc_s_then")        # y[t+h-m]
    reads, flag = const("fc_s_k", np.array([k], np.int64)), const("fc_s_k1", np.array([k + 1],
                                                                                 np.int64))
    node("Slice", ["fc_s_back", zero, reads, axis2], "fc_s_back_y")    # (b, T, k)
    node("Slice", ["fc_s_back", reads, flag, axis2], "fc_s_back_flag")  # (b, T, 1)
    node("Slice", ["fc_s_then", zero, reads, axis2], "fc_s_then_y")    # (b, T, k)
    node("Sub", ["fc_s_then_y", "fc_s_back_y"], "fc_s_change")
    node("Greater", ["fc_s_back_flag", const("fc_s_half", np.array(0.5, np.float32))],
         "fc_s_known")
    node("Where", ["fc_s_known", "fc_s_change", const("fc_s_nothing", np.array(0.0, np.float32))],
         "fc_s_change_known")                                          # 0 before a season
    node("Slice", ["fc_s_hist", const("fc_s_last_m", np.array([-m], np.int64)),
                   const("fc_s_inf", np.array([INT_MAX], np.int64)), axis1], "fc_s_kept")
    node("Reshape", ["fc_s_kept", const("fc_s_shape2", np.array([-1, width], np.int64))],
         carried)                                                      # (b, m * (k + 1))
    return node("Add", ["fc_y_last", "fc_s_change_known"], "fc_y_start")


def _linear(graph, node, const, features: int, targets: int, start: str, state: list,
            weights, bias) -> str:
    """Nodes adding the linear path to the start: ``sum_j d[t-j] @ W[j] + b`` on the raw
    changes the differencing made (see :meth:`trainer.forecast.Framing.with_linear`).

    With ``p > 1`` lags the last ``p - 1`` changes are carried as a ``prev`` state,
    ``(batch, (p - 1) * features)``, oldest first; zeros, a fresh stream, read as "no
    change", the trainer's rule before the series' first row.
    """
    w, b = _linear_weights(weights, bias, features, targets)
    lags = len(w)
    if lags == 1:
        node("MatMul", ["fc_x_change", const("fc_l_w0", w[0])], "fc_l_lag0")   # (b, T, k)
        node("Add", ["fc_l_lag0", const("fc_l_bias", b)], "fc_l_term")
        return node("Add", [start, "fc_l_term"], "fc_y_linear_start")
    width = (lags - 1) * features
    spec = StateSpec.for_layer(_next_index(state), "last changes", "prev", width)
    state.append(spec)
    (held,), (carried,) = spec.inputs, spec.outputs
    graph.input.append(helper.make_tensor_value_info(held, TensorProto.FLOAT, ["batch", width]))
    graph.output.append(helper.make_tensor_value_info(carried, TensorProto.FLOAT,
                                                      ["batch", width]))
    node("Reshape", [held, const("fc_l_shape3", np.array([-1, lags - 1, features], np.int64))],
         "fc_l_held")
    node("Concat", ["fc_l_held", "fc_x_change"], "fc_l_hist", axis=1)     # (b, p-1+T, F)
    # One convolution over time does every lag at once (a node per lag costs more): step t
    # reads history rows t .. t+p-1, d[t-p+1] .. d[t], so tap i holds W[p-1-i].
    kernel = np.stack([w[lags - 1 - i].T for i in range(lags)], axis=-1)   # (k, F, p)
    node("Transpose", ["fc_l_hist"], "fc_l_hist_t", perm=[0, 2, 1])        # (b, F, p-1+T)
    node("Conv", ["fc_l_hist_t", const("fc_l_kernel", kernel), const("fc_l_bias", b)],
         "fc_l_conv")                                                      # (b, k, T)
    node("Transpose", ["fc_l_conv"], "fc_l_term", perm=[0, 2, 1])         # (b, T, k)
    # The last p - 1 rows: one Gather of constant (negative) rows costs less than a Slice.
    node("Gather", ["fc_l_hist", const("fc_l_keep", np.arange(1 - lags, 0, dtype=np.int64))],
         "fc_l_kept", axis=1)                                              # (b, p - 1, F)
    node("Reshape", ["fc_l_kept", const("fc_l_shape2", np.array([-1, width], np.int64))],
         carried)                                                          # (b, (p-1) * F)
    return node("Add", [start, "fc_l_term"], "fc_y_linear_start")


def _linear_weights(weights, bias, features: int, targets: int):
    """The sidecar's weights ``(lags, features, targets)`` and bias, checked: untrusted."""
    try:
        w, b = np.asarray(weights, np.float32), np.asarray(bias, np.float32)
    except (TypeError, ValueError):
        w = b = np.full((0,), np.nan, np.float32)
    if w.ndim != 3 or not 1 <= len(w) <= 64 or w.shape[1:] != (features, targets) \
            or b.shape != (targets,) or not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise ExportError(f"the sidecar's linear path has weights of shape {list(w.shape)} and "
                          f"bias {list(b.shape)}; a model with {features} features and "
                          f"{targets} targets needs finite numbers of shape [lags, {features}, "
                          f"{targets}] (1 to 64 lags) and [{targets}]: re-train it")
    return w, b


def linear_reference(change: np.ndarray, held: np.ndarray | None, weights,
                     bias) -> tuple[np.ndarray, np.ndarray | None]:
    """What :func:`_linear` adds, in numpy, for the raw changes ``(b, T, F)`` the graph
    differenced, after ``held`` (None: fresh): the term ``(b, T, k)`` and the changes
    handed on (None for one lag)."""
    w = np.asarray(weights, np.float32)
    lags, features, _ = w.shape
    b, steps, _ = change.shape
    held = np.zeros((b, (lags - 1) * features), np.float32) if held is None else held
    hist = np.concatenate([held.reshape(b, lags - 1, features), change], axis=1)
    term = sum(hist[:, lags - 1 - j:lags - 1 - j + steps] @ w[j] for j in range(lags))
    carried = hist[:, steps:].reshape(b, -1) if lags > 1 else None
    return term + np.asarray(bias, np.float32), carried


def seasonal_reference(raw: np.ndarray, held: np.ndarray | None, season: int,
                       horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_seasonal` computes, in numpy: the change added to the reading and the
    state handed on, for raw target readings ``(b, T, k)`` after ``held`` (None: fresh)."""
    b, steps, k = raw.shape
    m = season
    held = np.zeros((b, m * (k + 1)), np.float32) if held is None else held
    new = np.concatenate([raw, np.ones((b, steps, 1), np.float32)], axis=2)
    hist = np.concatenate([held.reshape(b, m, k + 1), new], axis=1)    # (b, m + T, k + 1)
    back, then = hist[:, :steps], hist[:, horizon:horizon + steps]
    change = np.where(back[..., k:] > 0.5, then[..., :k] - back[..., :k], np.float32(0))
    return change, hist[:, -m:].reshape(b, m * (k + 1))


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
