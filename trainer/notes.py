"""What the exporter decides about how a model will stream, and notes on suspicious shapes.

:func:`state_slots` reads the batch size a ``stateful=True`` layer was built with: in Keras,
``model.predict(X, batch_size=B)`` after ``reset_states()`` runs row *i* of each batch from
the state row *i* of the previous batch ended in, so over consecutive sliding windows window
*j* continues window *j - B*, not *j - 1*. A stream reproduces that with *B* state slots
(``lstm_edge.state_slots``, docs/contract.md). :func:`shape_notes` are printed by
``lstm-export`` as notes, never errors: shapes that are legal but often a mistake.
"""

from __future__ import annotations

from .errors import ExportError
from .graph import is_recurrent

LONG_WINDOW = 100   # a window model rerunning this many readings per prediction gets a note


def state_slots(model, layers, sidecar: dict | None, info, override: int | None):
    """The ``lstm_edge.state_slots`` to write, or None outside stateful mode.

    The project's own ``lstm-train --mode stateful`` trains contiguous blocks, one per batch
    row, and validates with a batch-1 copy carrying the state from each window to the next:
    its files keep one slot whatever batch size the model was fit with.
    """
    stateful_mode = info.streaming_mode == "stateful"
    if override is not None:
        if not info.carry_state:
            raise ExportError(f"--state-slots applies to a stream that carries its state "
                              f"(stateful mode, or a stateful model of one timestep); this "
                              f"export is {info.streaming_mode} mode (window={info.window}, "
                              f"carry_state=false); drop --state-slots")
        if override < 1:
            raise ExportError(f"--state-slots must be at least 1, got {override}")
        return int(override)
    if not info.carry_state or (sidecar or {}).get("mode") in ("stateful", "sequence"):
        return 1 if stateful_mode else None
    if any(getattr(layer, "stateful", False) for layer in layers if is_recurrent(layer)):
        # Keras predict(X, batch_size=B) carries row i of a batch into row i of the next,
        # whether a sample is a window or (window 1) a single reading.
        # Written for one slot too: Model.predict then carries the state as Keras does.
        return int(model.inputs[0].shape[0] or 1)
    return 1 if stateful_mode else None


def shape_notes(shape, sidecar: dict | None, info, tokens: bool, window_given) -> list[str]:
    """Notes on a model's input shape ``(batch, time, features)`` and the window written."""
    notes = []
    time_axis = shape[1]
    features = 1 if tokens else shape[-1]
    look_back = (sidecar or {}).get("look_back")
    if time_axis == 1 and features > 1:
        notes.append(
            f"the model reads (samples, timesteps, features) = (n, 1, {features}): "
            f"{features} features at each of 1 timestep, i.e. a window of one reading of "
            f"{features} values, so every reading of the stream must carry {features} "
            f"values. If those are the last {features} values of one series (the tutorials' "
            f"reshape(n, 1, look_back)), retrain on x.reshape(n, {features}, 1) with "
            f"keras.Input(({features}, 1)): a window of {features} readings of 1 feature")
    if look_back and time_axis and int(look_back) != int(time_axis):
        notes.append(
            f"the model declares {time_axis} timesteps but its training sidecar says "
            f"look_back={look_back}; the file's window is {info.window}"
            f"{' (given)' if window_given is not None else ' (the sidecar wins)'}; "
            f"--window N overrides it")
    elif (info.streaming_mode in ("window", "stateful") and window_given is None
          and info.window > 1
          and not (sidecar or {}).get("mode") and time_axis):
        notes.append(
            f"{info.streaming_mode} mode: each prediction reads the last {info.window} "
            f"readings, as the model's declared input (n, {time_axis}, {features}) says; if "
            f"it was trained on windows of another length, export with --window N (or run "
            f"with lstm-run --window N)")
    if info.streaming_mode == "window" and info.window >= LONG_WINDOW:
        notes.append(
            f"window mode with a window of {info.window} readings: every new reading reruns "
            f"all {info.window} from a zero state ({info.window} steps per prediction); a "
            f"model trained on whole sequences streams at one step per reading with "
            f"--window 1 --carry-state")
    slots = int(info.extra.get("state_slots", 1))
    if slots > 1:
        notes.append(
            f"the stateful layer was built with batch size {slots}: Keras's "
            f"predict(X, batch_size={slots}) after reset_states() continues window j from "
            f"window j-{slots}, so the stream keeps {slots} state slots and does the same; "
            f"--state-slots 1 carries the state from each window to the next instead")
    return notes


def sequence_notes(shape, sidecar: dict | None, info, window_given, layers=()) -> list[str]:
    """A note for a model run in sequence mode that may have been trained on windows.

    A model that answers once per sequence built on ``keras.Input((None, F))`` infers
    sequence mode: nothing in it says the window its ``create_dataset`` cut, so the stream
    equals Keras on the whole history. (A fixed time axis infers window mode, return
    sequences or not: see :func:`window_notes`.)
    """
    time_axis = shape[1]
    if (info.streaming_mode != "sequence" or window_given is not None
            or (sidecar or {}).get("mode")):
        return []
    if not time_axis:
        recurrent = [layer for layer in layers if is_recurrent(layer)]
        last = recurrent[-1] if recurrent else None
        if last is None or last.return_sequences or getattr(last, "stateful", False):
            return []
        dims = ", ".join(map(str, shape[1:])) + ("," if len(shape) == 2 else "")
        return [f"sequence mode: the model reads sequences of any length "
                f"(keras.Input(({dims}))) and answers once per sequence (its last "
                f"recurrent layer {last.name!r} does not return sequences), so the file "
                f"streams it as one long sequence since the last reset: each answer equals "
                f"Keras on the whole history, not on a window; a model trained on windows of "
                f"N readings (a create_dataset model) must be exported with --window N "
                f"--no-carry-state"]
    return []


def window_notes(shape, sidecar: dict | None, info, window_given, layers=()) -> list[str]:
    """A note for a model of a fixed window whose last recurrent layer returns sequences
    (the TF tutorial's wide-window model): it streams in window mode, each reading answered
    with the last timestep of Keras's answer for the window ending there."""
    recurrent = [layer for layer in layers if is_recurrent(layer)]
    if (info.streaming_mode != "window" or window_given is not None or not recurrent
            or not recurrent[-1].return_sequences or (sidecar or {}).get("mode")):
        return []
    w = info.window
    return [f"window mode: the model reads windows of {w} readings and answers every "
            f"timestep of each (return_sequences=True), and Keras's predict runs windows of "
            f"{w} only, so each reading is answered with the last timestep of "
            f"model.predict(the {w} readings ending there), from a zero state (runtime "
            f"Model.predict gives that timestep, (samples, targets)); a model trained on whole "
            f"sequences streams one step per reading, carrying its state, with --window 1 "
            f"--carry-state"]
