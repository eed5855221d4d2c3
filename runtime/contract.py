"""The streaming ONNX contract, version 1: names, metadata keys and their defaults.

The exporter writes these and the runtime reads them; this module is the one place both
sides take them from (the trainer may import the runtime, never the other way round).
See docs/contract.md for the prose; it is the one source of truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import ContractError

VERSION = 1
PREFIX = "lstm_edge."
X, Y = "x", "y"

# Recurrent layer kinds and the state tensors each one carries, in order. ``prev`` is not a
# layer: a differenced sequence model carries its previous reading (docs/contract.md).
STATE_TENSORS = {"lstm": ("h", "c"), "gru": ("h",), "rnn": ("h",), "prev": ("x",)}


@dataclass(frozen=True)
class StateSpec:
    """The state of one recurrent layer: ``in_h{i}``/``in_c{i}`` in, ``out_*`` out."""

    layer: str                 # the Keras layer's name
    kind: str                  # "lstm" | "gru" | "rnn" | "prev" (the previous reading)
    units: int                 # width of each state tensor: (batch, units)
    inputs: tuple[str, ...]    # graph input names, e.g. ("in_h0", "in_c0")
    outputs: tuple[str, ...]   # graph output names, e.g. ("out_h0", "out_c0")

    @classmethod
    def for_layer(cls, index: int, layer: str, kind: str, units: int) -> "StateSpec":
        parts = STATE_TENSORS[kind]
        return cls(layer, kind, int(units), tuple(f"in_{p}{index}" for p in parts),
                   tuple(f"out_{p}{index}" for p in parts))

    def to_json(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "units": self.units,
                "inputs": list(self.inputs), "outputs": list(self.outputs)}


BLOCK_KINDS = ("forecast", "reconstruction")


@dataclass(frozen=True)
class Block:
    """``lstm_edge.block``: ``y``'s last axis holds ``steps`` rows of ``names``, step-major.

    ``forecast``: ``y[..., s * K + k]`` is name *k*, *s* + 1 readings ahead of the window's
    last reading. ``reconstruction``: it rebuilds feature *k* at window position *s* (0 =
    the oldest reading of the window).

    >>> Block("forecast", 2, ("t", "rh")).columns()
    ('t+1', 'rh+1', 't+2', 'rh+2')
    """

    kind: str
    steps: int
    names: tuple[str, ...]

    @property
    def outputs(self) -> int:
        return self.steps * len(self.names)

    def columns(self) -> tuple[str, ...]:
        """One name per output column: ``name+s`` (s readings ahead) or ``name@s`` (window
        position s), in y's order."""
        if self.kind == "forecast":
            return tuple(f"{n}+{s + 1}" for s in range(self.steps) for n in self.names)
        return tuple(f"{n}@{s}" for s in range(self.steps) for n in self.names)

    @classmethod
    def from_json(cls, text: str) -> "Block":
        data = json.loads(text)
        block = cls(str(data["kind"]), int(data["steps"]), tuple(map(str, data["names"])))
        if block.kind not in BLOCK_KINDS or block.steps < 1 or not block.names:
            raise ValueError(f"expected kind {' or '.join(BLOCK_KINDS)}, steps >= 1 and "
                             f"names, got {data}")
        return block


@dataclass(frozen=True)
class ModelInfo:
    """What an exported file says about itself; defaults are the contract's."""

    state: tuple[StateSpec, ...]
    contract: int = VERSION
    window: int = 1                       # readings one prediction is made from
    carry_state: bool = True              # whether a call starts from the last call's state
    state_slots: int = 1                  # B: window j continues window j - B (Keras batch B)
    features: tuple[str, ...] = ()        # input column names, in order ("" where unknown)
    targets: tuple[str, ...] = ()         # output names, in order
    horizon: int = 1                      # steps ahead that y predicts
    scaler: dict | None = None            # {"x": {"mean", "std"}, "y": {...}}, for the record
    parity: dict | None = None            # what the export check measured
    source: dict | None = None            # {"file", "sha256"} of the Keras model
    extra: dict = field(default_factory=dict)  # other lstm_edge.* keys, kept verbatim

    @property
    def block(self) -> Block | None:
        """``lstm_edge.block`` (None: y holds one step of ``targets``)."""
        text = self.extra.get("block")
        return None if text is None else Block.from_json(text)

    @property
    def answers_last(self) -> bool:
        """``lstm_edge.answers`` is ``last``: Keras's ``predict`` on a sequence answered its last
        timestep only (absent: every timestep)."""
        return self.extra.get("answers") == "last"

    @property
    def answers_every(self) -> bool:
        """``lstm_edge.answers`` is ``every`` (``window`` mode): Keras's ``predict`` on a
        window answered every timestep of it (absent: its last alone)."""
        return self.extra.get("answers") == "every"

    @property
    def keras_stateful(self) -> bool:
        """The Keras model was ``stateful=True`` (``lstm_edge.state_slots`` written, 1 too):
        its ``predict`` carries the state from batch to batch, one reading per sample
        included."""
        return "state_slots" in self.extra

    @property
    def streaming_mode(self) -> str:
        """The contract's three modes in one word (see :func:`streaming_mode`)."""
        return streaming_mode(self.window, self.carry_state)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` of an ONNX file, all values strings."""
        meta = {
            "contract": str(self.contract),
            "state": json.dumps([s.to_json() for s in self.state]),
            "window": str(self.window),
            "carry_state": "true" if self.carry_state else "false",
            "features": json.dumps(list(self.features)),
            "targets": json.dumps(list(self.targets)),
            "horizon": str(self.horizon),
        }
        for key in ("scaler", "parity", "source"):
            if getattr(self, key) is not None:
                meta[key] = json.dumps(getattr(self, key))
        meta.update(self.extra)
        if self.state_slots != 1:               # absent means 1: one-slot files stay as they were
            meta["state_slots"] = str(self.state_slots)
        return {PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ModelInfo":
        """Parse ``metadata_props``; a missing key takes the contract's default.

        ``state`` may come back empty when the file has no ``lstm_edge.state``: the caller
        then derives it from the graph's ``in_*``/``out_*`` names.
        """
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        # state_slots stays in extra too: code that reads it from there (written before the
        # field existed) must keep seeing it, or it would take a B-slot file for a 1-slot one.
        slots_text = ours.get("state_slots")

        def parse(key, convert, default):
            if key not in ours:
                return default
            try:
                return convert(ours.pop(key))
            except (ValueError, TypeError, KeyError) as exc:
                raise ContractError(f"metadata {PREFIX}{key} cannot be read ({exc}); "
                                    f"re-export the model with lstm-export") from None

        state = parse("state", lambda v: tuple(
            StateSpec(d["layer"], d["kind"], int(d["units"]), tuple(d["inputs"]),
                      tuple(d["outputs"])) for d in json.loads(v)), ())
        info = cls(
            state=state,
            contract=parse("contract", int, VERSION),
            window=parse("window", int, 1),
            carry_state=parse("carry_state", _parse_bool, True),
            state_slots=parse("state_slots", int, 1),
            features=tuple(parse("features", json.loads, ())),
            targets=tuple(parse("targets", json.loads, ())),
            horizon=parse("horizon", int, 1),
            scaler=parse("scaler", json.loads, None),
            parity=parse("parity", json.loads, None),
            source=parse("source", json.loads, None),
            extra={**ours, **({} if slots_text is None else {"state_slots": slots_text})},
        )
        try:
            info.block                          # noqa: B018 - parsed to refuse a bad one here
        except (ValueError, TypeError, KeyError) as exc:
            raise ContractError(f"metadata {PREFIX}block cannot be read ({exc}); re-export "
                                f"the model with lstm-export") from None
        answers = info.extra.get("answers")
        allowed = "every" if info.streaming_mode == "window" else "last"
        if answers is not None and answers != allowed:
            raise ContractError(f"metadata {PREFIX}answers must be \"{allowed}\" or absent in "
                                f"{info.streaming_mode} mode, got {answers!r}; re-export the "
                                f"model with lstm-export")
        if info.contract > VERSION:
            raise ContractError(f"the file is written for contract version {info.contract}, "
                                f"this runtime reads up to {VERSION}; upgrade lstm-edge")
        if info.window < 1:
            raise ContractError(f"metadata {PREFIX}window must be at least 1, got {info.window}")
        if info.state_slots < 1:
            raise ContractError(f"metadata {PREFIX}state_slots must be at least 1 (the batch size "
                                f"of a stateful layer), got {info.state_slots}; re-export the "
                                f"model with lstm-export")
        return info


def streaming_mode(window: int, carry_state: bool) -> str:
    """``"sequence"``, ``"window"`` or ``"stateful"``: docs/contract.md's streaming modes.

    Not carrying state is ``window`` mode whatever the window, 1 included (each reading then
    runs alone from a zero state), which is what the runtime does.

    >>> streaming_mode(1, True), streaming_mode(24, False), streaming_mode(24, True)
    ('sequence', 'window', 'stateful')
    >>> streaming_mode(1, False)
    'window'
    """
    if not carry_state:
        return "window"
    return "sequence" if window == 1 else "stateful"


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return lowered in ("true", "1")


def derive_state(graph_inputs) -> tuple[StateSpec, ...]:
    """State specs from a graph's ``in_h{i}``/``in_c{i}`` input names, for files without metadata.

    Parameters
    ----------
    graph_inputs : mapping of input name to shape (a sequence whose entries are ints, or
        strings/None for dynamic axes), e.g. ``{"x": ["batch", "time", 3], "in_h0": ["batch", 8]}``.

    Returns
    -------
    One spec per recurrent layer, in index order: ``lstm`` where the layer has a cell state,
    otherwise ``rnn`` (a GRU and a SimpleRNN cannot be told apart by their names); then one
    ``prev`` spec per ``in_x{i}`` (a differenced model's previous reading). ``units`` is the
    state's second axis, 0 where the graph leaves it dynamic.

    >>> [s.kind for s in derive_state({"x": [1, 1, 2], "in_h0": [1, 4], "in_c0": [1, 4],
    ...                                "in_h1": [1, 3], "in_x0": [1, 3]})]
    ['lstm', 'rnn', 'prev']
    """
    def units(name):
        shape = list(graph_inputs[name])
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else 0

    specs, index = [], 0
    while f"in_h{index}" in graph_inputs:
        kind = "lstm" if f"in_c{index}" in graph_inputs else "rnn"
        specs.append(StateSpec.for_layer(index, f"layer{index}", kind, units(f"in_h{index}")))
        index += 1
    index = 0
    while f"in_x{index}" in graph_inputs:
        specs.append(StateSpec.for_layer(index, "previous reading", "prev", units(f"in_x{index}")))
        index += 1
    return tuple(specs)
