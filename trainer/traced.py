"""Per-step layers the table does not know, converted by tf2onnx and spliced into the graph.

A layer (or activation function) that acts on every time step on its own — a
LayerNormalization variant, UnitNormalization, a Lambda, a custom activation — is traced
as one ``tf.function`` over ``(batch, time, features)`` with
``tf2onnx.convert.from_function`` and its nodes are copied into the streaming graph under
the layer's name. Before that it is run on random data both as one sequence and as every
step on its own: a layer whose outputs differ (it mixes time steps) is refused, as is one
tf2onnx cannot convert or converts into anything but plain default-domain operators.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .errors import ExportError

_PROBE = (2, 6)  # (batch, time) of the random sequence the time-locality probe runs


def _time_local(fn, width: int, what: str) -> int:
    """Run ``fn`` on a sequence and on each step alone; return its output width."""
    x = np.random.default_rng(0).normal(size=(*_PROBE, width)).astype(np.float32)
    try:
        whole = np.asarray(fn(x))                                       # (batch, time, out)
        alone = np.asarray(fn(x.reshape(-1, 1, width)))                 # (batch*time, 1, out)
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot be traced
        raise ExportError(f"{what} cannot be run on (batch, time, {width}) sequences "
                          f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
                          f"; it cannot stream") from None
    if whole.ndim != 3 or whole.shape[:2] != _PROBE:
        raise ExportError(f"{what} turns (batch, time, {width}) into {whole.shape}: it does "
                          f"not keep the time axis, so it cannot stream")
    if not np.allclose(whole, alone.reshape(whole.shape), atol=1e-5, rtol=1e-5):
        raise ExportError(f"{what} mixes time steps (its output at one step depends on "
                          f"others), so it cannot stream")
    return int(whole.shape[-1])


def trace(g, fn, flow_name: str, width: int, name: str, what: str) -> tuple[str, int]:
    """Convert ``fn`` with tf2onnx and splice it after ``flow_name``; return (output, width)."""
    import tensorflow as tf
    import tf2onnx

    out_width = _time_local(fn, width, what)
    spec = [tf.TensorSpec([None, None, width], tf.float32, name="x")]
    try:
        proto, _ = tf2onnx.convert.from_function(tf.function(fn), input_signature=spec,
                                                 opset=g.opset)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything
        raise ExportError(f"{what} cannot be converted by tf2onnx "
                          f"({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None
    sub = proto.graph
    odd = sorted({n.op_type for n in sub.node
                  if n.domain not in ("", "ai.onnx") or any(a.g.node or a.graphs
                                                            for a in n.attribute)})
    if odd or len(sub.input) != 1 or len(sub.output) != 1:
        raise ExportError(f"{what} converts to operators a streaming graph cannot hold "
                          f"({', '.join(odd) or 'several inputs or outputs'})")
    rename = {sub.input[0].name: flow_name, "": ""}
    prefix = g.fresh(name)

    def new(old: str) -> str:
        return rename.setdefault(old, f"{prefix}/{old}")

    for init in sub.initializer:
        g.inits[new(init.name)] = numpy_helper.to_array(init)
    for node in sub.node:
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name}"
        copy.input[:] = [new(i) for i in node.input]
        copy.output[:] = [new(o) for o in node.output]
        g.nodes.append(copy)
    return new(sub.output[0].name), out_width


def emit_traced(g, layer, flow):
    """The fallback emitter: a time-local layer through tf2onnx."""
    from .graph import Flow

    flow = g.materialize(flow)
    what = f"layer {layer.name!r} ({type(layer).__name__})"
    out, width = trace(g, lambda x: layer(x, training=False), flow.name, flow.width,
                       layer.name, what)
    return Flow(out, width)
