"""``lstm-run --info`` says one true thing per streaming mode, state slots and mask.

The contract's table of modes (docs/contract.md, "Streaming modes" and
``lstm_edge.state_slots``): a stream of B slots starts reading (or window) j from the state
j - B left, one slot from the one before, a window model from zeros; a masked reading is not
fed (``lstm_edge.mask_value``) and answered as the contract's row says for the mode.
"""

from __future__ import annotations

import pytest

from helpers import run, tiny_onnx, with_props


def info(path) -> dict[str, str]:
    """``--info``'s rows, by name (the first of each)."""
    out, _ = run([path, "--info"])
    rows: dict[str, str] = {}
    for line in out.splitlines():
        name, _, text = line.partition("  ")
        rows.setdefault(name.strip(), text.strip())
    return rows


# (window, carry_state, state_slots): the words of the streaming row, and of no other mode
MODES = {
    "sequence": ((1, True, None), "sequence: each reading is fed once, from the state the "
                                  "reading before left (1 step per reading)"),
    "sequence, Keras stateful batch 1": ((1, True, "1"), "sequence: each reading is fed once, "
                                         "from the state the reading before left"),
    "sequence, Keras stateful batch 2": ((1, True, "2"), "sequence: each reading is fed once, "
                                         "from the state reading j-2 left (2 state slots"),
    "window": ((3, False, None), "window: each prediction reads the last 3 readings from a "
                                 "zero state"),
    "stateful": ((3, True, None), "stateful: each prediction reads the last 3 readings from "
                                  "the state the previous window ended in"),
    "stateful, 4 slots": ((3, True, "4"), "stateful: each prediction reads the last 3 readings "
                                          "from the state window j-4 ended in (4 state slots"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_the_streaming_row_says_where_each_step_starts(tmp_path, mode):
    (window, carry, slots), words = MODES[mode]
    path = tiny_onnx(tmp_path / "m.onnx", window=window, carry_state=carry)
    if slots is not None:
        path = with_props(path, state_slots=slots)
    rows = info(path)
    assert rows["streaming"].startswith(words), rows
    several = slots not in (None, "1") and carry
    # one slot: no row that says otherwise; several: the slots row agrees with the mode row
    assert ("state slots" in rows) == several, rows
    if several:
        what = "window" if window > 1 else "reading"
        assert f"{what} j continues {what} j-{slots}" in rows["state slots"], rows
    carried = "never carried" not in rows["state"]
    assert carried == carry, rows            # a window model's state starts from zeros


MASKS = {
    # (window, carry_state, state_slots): what a masked reading gets
    "sequence": ((1, True, None), "not fed (the state stays), and answered with the previous "
                                  "answer again (before the first reading fed: Keras's answer "
                                  "for nothing fed (temperature 119.5))"),
    "Keras stateful, one reading per sample": ((1, True, "1"), "not fed (the state stays), and "
                                               "answered with Keras's answer for nothing fed "
                                               "(temperature 119.5)"),
    "window": ((3, False, None), "each window runs its unmasked readings only; a window of "
                                 "masked readings only is answered with Keras's answer for "
                                 "nothing fed (temperature 119.5)"),
    "stateful": ((3, True, "1"), "a window of masked readings only is answered with Keras's "
                                 "answer for nothing fed (temperature 119.5), and the carried "
                                 "state stays"),
}


@pytest.mark.parametrize("mode", list(MASKS))
def test_a_masking_model_says_what_is_masked_and_what_it_answers(tmp_path, mode):
    (window, carry, slots), words = MASKS[mode]
    path = with_props(tiny_onnx(tmp_path / "m.onnx", window=window, carry_state=carry),
                      mask_value="[0.0, -1.5]", mask_answer="[119.5]",
                      **({} if slots is None else {"state_slots": slots}))
    mask = info(path)["mask"]
    assert mask.startswith("a reading of temperature = 0, humidity = -1.5 (every feature"), mask
    assert words in mask, mask


def test_an_old_masking_file_says_its_answer_is_empty(tmp_path):
    path = with_props(tiny_onnx(tmp_path / "m.onnx"), mask_value="[0.0, 0.0]")
    mask = info(path)["mask"]
    assert "an empty answer, since the file predates lstm_edge.mask_answer; re-export" in mask
    assert "mask" not in info(tiny_onnx(tmp_path / "plain.onnx"))


def test_a_previous_reading_state_counts_values_not_units():
    """The bundled model's prev state holds its last reading and a flag, not learnt units."""
    from helpers import WATER_MODEL
    out, _ = run([WATER_MODEL, "--info"])
    states = [line for line in out.splitlines() if line.startswith("state")]
    assert any("LSTM 'lstm_0', 32 units" in s for s in states), states
    assert any("PREV 'previous reading', 2 carried values: in_x0 -> out_x0" in s
               for s in states), states
