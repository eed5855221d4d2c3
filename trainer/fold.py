"""Graph passes that make the exported forecast framing cheap to run, answers unchanged.

:mod:`trainer.forecast_graph` builds the framing from plain, readable pieces; run one
reading at a time, every node costs ONNX Runtime about 0.4 µs, and the bundled model's 17
framing nodes cost more than half of what its whole plain LSTM step costs. :func:`fold`
rewrites those pieces into fewer nodes that compute the same numbers, after the graph is
built and before the export check (which therefore vouches for the folded graph). Each
pass matches one pattern exactly and leaves the graph as it is where the pattern does not
match.

- ``prev`` state (differenced sequence models), 15 nodes -> 8. The readings are padded with
  a column of ones, ``xa = [x, 1]`` (b, T, F + 1), and the carried ``in_x = [prev, flag]``
  is put in front of them on the time axis, ``z`` (b, T + 1, F + 1). Then
  ``out_x = z[:, -1]`` is ``[last reading, 1]``, and ``before = z[:, :-1]`` holds every
  reading's predecessor with its flag: ``prev`` and the flag for the first, 1 for the
  others. ``(xa - before) * flag`` is each difference, the first one 0 on a fresh stream
  (flag 0), exactly; its last column is 0 and meets a zero column added to the recurrent
  layer's input weights ``W``, so the layer reads the differences as before; a linear
  path's MatMul reads ``gated`` with a zero row added to its weights, its other nodes
  ``gated[..., :F]``: the same differences. The flag and ``out_x`` are Gathers, which cost
  ONNX Runtime about half what a Slice does.
  Exact for the flags a stream carries, 0 and 1 (docs/contract.md).
- Residual add-back: ``Gather(x, target_features)`` is dropped where it selects every
  feature in order (one feature that is also the target, as in the bundled model).
- Linear path of one lag: its bias joins the head's bias (one Add fewer; the sum is
  rounded in another order, within a few float32 ulps of ``y``).

The input scaling and the output de-scaling are already folded into the first layer's and
the head's weights by :mod:`trainer.graph` wherever that is exact.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

RECURRENT = ("LSTM", "GRU", "RNN")
# What forecast_graph's sequence-mode differencing emits: the pass replaces exactly these.
PREV_NODES = Counter({"Slice": 5, "Squeeze": 2, "Unsqueeze": 1, "Concat": 2, "Greater": 1,
                      "Where": 1, "Shape": 1, "Expand": 1, "Sub": 1})


def fold(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with the framing folded (in place; returned for chaining).

    >>> m = helper.make_model(helper.make_graph([], "g", [], []))
    >>> len(fold(m).graph.node)
    0
    """
    for fold_pass in (_fold_previous_reading, _fold_residual, _fold_linear_bias):
        trial = onnx.ModelProto()
        trial.CopyFrom(proto)
        if fold_pass(trial.graph):
            _prune(trial.graph)
            proto.CopyFrom(trial)
    return proto


# --------------------------------------------------------------------------- prev state

def _fold_previous_reading(graph) -> bool:
    """Rewrite the ``prev`` state's nodes (see the module's docstring); False: no match."""
    # The previous reading is the first ``prev`` state (forecast_graph builds it first); a
    # seasonal or linear path's states come after it. Anything else fails the checks below.
    held = [i for i in graph.input if i.name == "in_x0"]
    if len(held) != 1 or "x" not in {i.name for i in graph.input}:
        return False
    held_name = held[0].name
    carried = "out_x" + held_name[len("in_x"):]
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    old_carrier = producers.get(carried)
    change = _difference_output(graph, consumers)
    if old_carrier is None or change is None:
        return False
    transpose, layer = change
    features = _width(graph, "x")
    weights = _initializer(graph, layer.input[1])
    if features is None or weights is None or weights.shape[-1] != features \
            or len(consumers.get(layer.input[1], [])) != 1:
        return False
    inits, node = _builder(graph, "fold_prev")
    xa = node("Pad", ["x", inits("pads", np.array([0, 0, 0, 0, 0, 1], np.int64)),
                      inits("one", np.array(1.0, np.float32))])               # (b, T, F + 1)
    axis1 = inits("axis1", np.array([1], np.int64))
    first = node("Unsqueeze", [held_name, axis1])                             # (b, 1, F + 1)
    z = node("Concat", [first, xa], axis=1)                                    # (b, T + 1, F + 1)
    before = node("Slice", [z, inits("zero", np.array([0], np.int64)),
                            inits("minus1", np.array([-1], np.int64)), axis1])
    # A Gather of one column costs ONNX Runtime about half what a Slice does (no starts,
    # ends and axes to read): the flags, (b, T, 1).
    flag = node("Gather", [before, inits("flag", np.array([features], np.int64))], axis=2)
    change_all = node("Sub", [xa, before])                                     # (b, T, F + 1)
    gated = node("Mul", [change_all, flag])
    old, transpose.input[0] = transpose.input[0], gated
    _feed_other_readers(graph, node, inits, old, gated, features)
    for k, name in enumerate(old_carrier.output):
        if name == carried:
            old_carrier.output[k] = "fold_prev_replaced"     # the old value: now feeds nothing
    graph.node.append(helper.make_node("Gather", [z, inits("last", np.array(-1, np.int64))],
                                       [carried], name="fold_prev_out", axis=1))  # (b, F + 1)
    if Counter(n.op_type for n in _dead(graph)) != PREV_NODES:
        return False
    padded = np.concatenate([weights, np.zeros(weights.shape[:-1] + (1,), weights.dtype)], -1)
    _set_initializer(graph, layer.input[1], padded)                # W: (dirs, gates, F + 1)
    return True


def _difference_output(graph, consumers):
    """``(Transpose, recurrent layer)`` reading the differences ``Sub(x, ...)``, or None."""
    for n in graph.node:
        if n.op_type != "Sub" or n.input[0] != "x":
            continue
        users = [u for u in consumers.get(n.output[0], []) if u.op_type == "Transpose"
                 and _attr(u, "perm") == [1, 0, 2]]    # others: a linear path's (below)
        if len(users) != 1:
            continue
        layers = consumers.get(users[0].output[0], [])
        if len(layers) == 1 and layers[0].op_type in RECURRENT and \
                list(layers[0].input).index(users[0].output[0]) == 0:
            return users[0], layers[0]
    return None


def _feed_other_readers(graph, node, inits, old: str, gated: str, features: int) -> None:
    """Point every other reader of the differences ``old`` (a linear path, trainer.
    forecast_graph) at the same numbers in ``gated``, bit for bit.

    A ``MatMul`` by a constant ``(F, k)`` reads ``gated`` itself with a zero row appended to
    its weights: the last column of ``gated`` is ``(1 - flag) * flag``, 0 for the flags a
    stream carries, and meets that zero row (no node). Any other reader gets
    ``gated[..., :F]``, one Gather.
    """
    readers = [n for n in graph.node if old in n.input and not n.name.startswith("fold_")]
    change = None
    for n in readers:
        weights = _initializer(graph, n.input[1]) if n.op_type == "MatMul" \
            and list(n.input).index(old) == 0 else None
        if weights is not None and weights.ndim == 2 and weights.shape[0] == features:
            padded = np.concatenate([weights, np.zeros((1, weights.shape[1]), weights.dtype)])
            n.input[1] = inits(f"{n.input[1]}_padded", padded)                 # (F + 1, k)
            n.input[0] = gated
            continue
        if change is None:
            change = node("Gather", [gated, inits("features", np.arange(features, dtype=np.int64))],
                          axis=2)                                              # (b, T, F)
        for k, name in enumerate(n.input):
            if name == old:
                n.input[k] = change


# --------------------------------------------------------------------------- residual

def _fold_residual(graph) -> bool:
    """Drop ``Gather(x, target_features)`` where it selects every feature in order."""
    features = _width(graph, "x")
    consumers = _consumers(graph)
    for n in graph.node:
        if n.op_type != "Gather" or n.input[0] != "x" or _attr(n, "axis") != 2:
            continue
        index = _initializer(graph, n.input[1])
        users = consumers.get(n.output[0], [])
        if index is None or features is None or index.ndim != 1 \
                or not np.array_equal(index, np.arange(features)) \
                or not all(u.op_type == "Add" for u in users) or not users:
            continue
        for u in users:
            for k, name in enumerate(u.input):
                if name == n.output[0]:
                    u.input[k] = "x"
        return True
    return False


# --------------------------------------------------------------------------- linear bias

def _fold_linear_bias(graph) -> bool:
    """Add the linear path's bias to the head's: one Add fewer.

    The graph sums ``y = Transpose(head + b_head) + (start + (term + b_linear))`` (the
    one-lag linear path of :mod:`trainer.forecast_graph`); both biases are constants of the
    last axis, which the Transpose leaves in place, so ``b_head + b_linear`` is added once.
    Not bit for bit (the sum is rounded in another order): within a few float32 ulps of y.
    """
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    final = producers.get("y")
    if final is None or final.op_type != "Add" or "y" not in {o.name for o in graph.output}:
        return False
    head = linear = None
    for name in final.input:
        n = producers.get(name)
        perm = _attr(n, "perm") if n is not None and n.op_type == "Transpose" else None
        if perm and perm[-1] == len(perm) - 1:                    # the last axis stays last
            head = _constant_add(graph, producers, consumers, n.input[0])
        elif n is not None and n.op_type == "Add":
            linear = next((c for c in (_constant_add(graph, producers, consumers, i)
                                       for i in n.input) if c is not None), None)
    if head is None or linear is None or head[0] is linear[0]:
        return False
    (_, b_head), (add, b_linear) = head, linear
    a, b = _initializer(graph, b_head), _initializer(graph, b_linear)
    if a.ndim != 1 or a.shape != b.shape or len(consumers.get(b_head, [])) != 1:
        return False
    _set_initializer(graph, b_head, (a.astype(np.float64) + b).astype(a.dtype))
    kept = next(i for i in add.input if i != b_linear)
    for n in consumers.get(add.output[0], []):
        for k, name in enumerate(n.input):
            if name == add.output[0]:
                n.input[k] = kept
    return True


def _constant_add(graph, producers, consumers, name: str):
    """``(Add node, constant)`` where ``name`` is ``Add(tensor, constant)`` read once."""
    n = producers.get(name)
    if n is None or n.op_type != "Add" or len(consumers.get(name, [])) != 1:
        return None
    const = [i for i in n.input if _initializer(graph, i) is not None]
    return (n, const[0]) if len(const) == 1 else None


# --------------------------------------------------------------------------- helpers

def _builder(graph, prefix: str):
    """``(const, node)``: add an initializer / a node named ``prefix_*``; return its name."""
    count = [0]

    def const(name, array):
        full = f"{prefix}_{name}"
        if full not in {i.name for i in graph.initializer}:
            graph.initializer.append(numpy_helper.from_array(array, full))
        return full

    def node(op, inputs, **attrs):
        count[0] += 1
        out = f"{prefix}_{op.lower()}{count[0]}"
        graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    return const, node


def _consumers(graph) -> dict:
    out: dict = {}
    for n in graph.node:
        for name in n.input:
            out.setdefault(name, []).append(n)
    return out


def _attr(node, name):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _width(graph, name: str) -> int | None:
    """The fixed last dimension of graph input ``name``, or None."""
    value = next((i for i in graph.input if i.name == name), None)
    dims = value.type.tensor_type.shape.dim if value is not None else []
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None


def _initializer(graph, name: str) -> np.ndarray | None:
    found = next((i for i in graph.initializer if i.name == name), None)
    return None if found is None else numpy_helper.to_array(found)


def _set_initializer(graph, name: str, array: np.ndarray) -> None:
    found = next(i for i in graph.initializer if i.name == name)
    found.CopyFrom(numpy_helper.from_array(array, name))


def _dead(graph) -> list:
    """The nodes none of whose outputs a graph output needs (copies, in graph order)."""
    nodes = [copy_node(n) for n in graph.node]
    live = _live(graph, nodes)
    return [n for k, n in enumerate(nodes) if k not in live]


def _live(graph, nodes: list) -> set:
    """Indices into ``nodes`` of those a graph output needs."""
    producers = {o: k for k, n in enumerate(nodes) for o in n.output}
    todo, seen, live = [o.name for o in graph.output], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        k = producers.get(name)
        if k is not None and k not in live:
            live.add(k)
            todo.extend(i for i in nodes[k].input if i)
    return live


def copy_node(node) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _prune(graph) -> None:
    """Drop dead nodes and unused initializers; order the nodes so each follows its inputs."""
    nodes = [copy_node(n) for n in graph.node]
    live = _live(graph, nodes)
    nodes = [n for k, n in enumerate(nodes) if k in live]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    known = {i.name for i in graph.input} | {i.name for i in keep} | {""}
    ordered = []
    while nodes:
        ready = [n for n in nodes if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("the folded graph has a cycle")
        for n in ready:
            known.update(n.output)
        ordered += ready
        nodes = [n for n in nodes if not any(n is r for r in ready)]
    kept = [onnx.TensorProto() for _ in keep]
    for new, old in zip(kept, keep):
        new.CopyFrom(old)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(ordered)
