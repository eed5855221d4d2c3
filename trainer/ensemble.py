"""A deep ensemble as one model: K networks of different seeds, averaged, merged into one
wider network that streams like any other.

K members of the same shape (``ModelConfig``) run side by side: member *k*'s units are the
*k*-th block of every gate of a layer K times as wide, its recurrent weights a block of a
block-diagonal matrix (a member never reads another's state), and the head averages the
members' heads. The merged model computes exactly the mean of the members' predictions,
and it is one chain of layers: the exporter emits it as it emits any model, one fused
operator per layer whose state is ``K * units`` wide (docs/contract.md needs nothing new).
Averaging seeds is the deep ensemble of Lakshminarayanan et al. 2017 (arXiv:1612.01474),
here without the variance head. It costs K times the training, and per reading a recurrent
matrix K² times as large.

>>> a, b = np.ones((1, 2 * 2)), 2 * np.ones((1, 2 * 2))   # two members' (in, gates * units)
>>> kernel_blocks([a, b], gates=2, shared=True).tolist()   # each gate: a's 2 units, then b's
[[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]]
>>> kernel_blocks([a, b], gates=2, shared=False).tolist()  # each member reads its own block
[[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0, 2.0]]
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .model import ModelConfig, build_model

GATES = {"lstm": 4, "gru": 3}   # weight blocks along a recurrent layer's last axis


def merge(members: list, cfg: ModelConfig, look_back: int, n_features: int, n_targets: int,
          batch_size: int | None = None):
    """One Keras model computing the mean of ``members`` (built by :func:`build_model` from
    ``cfg``); one member is returned as it is."""
    if len(members) == 1:
        return members[0]
    k = len(members)
    wide = build_model(replace(cfg, units=k * cfg.units, dense=k * cfg.dense), look_back,
                       n_features, n_targets, batch_size)
    first = True
    for layer, *parts in zip(wide.layers, *(m.layers for m in members)):
        weights = [p.get_weights() for p in parts]
        if not weights[0]:
            continue
        if layer.name == "head":             # the mean of the members' heads
            kernel = np.concatenate([w[0] for w in weights], axis=0) / k
            layer.set_weights([kernel, np.mean([w[1] for w in weights], axis=0)])
            continue
        gates = GATES.get(cfg.cell, 1) if layer.name != "hidden" else 1
        merged = []
        for i in range(len(weights[0])):
            arrays = [w[i] for w in weights]
            if i == 0:                       # the kernel: reads the layer below
                merged.append(kernel_blocks(arrays, gates, shared=first))
            elif i == 1 and layer.name != "hidden":   # the recurrent kernel: its own state
                merged.append(kernel_blocks(arrays, gates, shared=False))
            else:                            # a bias, (gates * units,) or GRU's (2, ...)
                merged.append(bias_blocks(arrays, gates))
        layer.set_weights(merged)
        first = False
    return wide


def kernel_blocks(arrays: list, gates: int, shared: bool) -> np.ndarray:
    """The members' kernels ``(in, gates * units)`` as one ``(in or K * in, gates * K * units)``:
    gate *g* holds every member's block *g* in member order. Its rows are the layer's input:
    ``shared`` where every member reads the same (the readings), else block-diagonal, member
    *k* reading its own block of the layer below (or of its own state)."""
    k, rows = len(arrays), arrays[0].shape[0]
    units = arrays[0].shape[1] // gates
    out = np.zeros((rows if shared else k * rows, gates * k * units), arrays[0].dtype)
    for m, w in enumerate(arrays):
        read = slice(None) if shared else slice(m * rows, (m + 1) * rows)
        for g in range(gates):
            out[read, (g * k + m) * units:(g * k + m + 1) * units] = w[:, g * units:(g + 1) * units]
    return out


def bias_blocks(arrays: list, gates: int) -> np.ndarray:
    """The members' biases ``(..., gates * units)`` as one ``(..., gates * K * units)``, gate
    blocks as in :func:`kernel_blocks` (GRU's ``(2, 3 * units)`` keeps its first axis)."""
    k = len(arrays)
    units = arrays[0].shape[-1] // gates
    out = np.zeros(arrays[0].shape[:-1] + (gates * k * units,), arrays[0].dtype)
    for m, w in enumerate(arrays):
        for g in range(gates):
            out[..., (g * k + m) * units:(g * k + m + 1) * units] = w[..., g * units:(g + 1) * units]
    return out
