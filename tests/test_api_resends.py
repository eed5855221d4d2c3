"""The order rule compares readings as the model reads them (float32), and a chunk's own
repeated position is told apart from a reading fed before."""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime import InputError
from runtime.state import order

from helpers import WATER_MODEL, run, split_lines


@pytest.fixture(scope="module")
def water():
    return runtime.load(WATER_MODEL, device="cpu")


@pytest.mark.parametrize("again", [[0.3], np.array([0.3], np.float32), np.array([0.3])])
def test_a_resend_equal_as_float32_is_a_replay(water, again):
    s = water.stream()
    first = s.step(np.array([0.1 + 0.2]), at=5)
    assert s.order(again, 5) == "replay"
    np.testing.assert_array_equal(s.step(again, at=5), first)    # its answer, not fed again
    assert s.steps == 1
    reference = water.stream()
    reference.step(np.array([0.3], np.float32))
    np.testing.assert_array_equal(s.step([1.0], at=6), reference.step([1.0]))


def test_a_resend_that_differs_as_float32_is_a_conflict_and_says_how(water):
    s = water.stream()
    s.step([0.3], at=5)
    other = float(np.nextafter(np.float32(0.3), np.float32(1)))    # one float32 step up
    with pytest.raises(InputError, match=r"\(0\.3, now 0\.30000004\)"):
        s.step([other], at=5)


def test_many_streams_and_chunks_compare_as_float32(water):
    streams = [water.stream() for _ in range(2)]
    first = water.step(streams, [[0.1 + 0.2], [7.0]], at=[1, 1])
    again = water.step(streams, [[0.3], [7.0]], at=[1, 1])
    np.testing.assert_array_equal(again, first)
    assert [s.steps for s in streams] == [1, 1]
    s = water.stream()
    ys = s.feed([[0.1 + 0.2], [0.3], [2.0]], at=[1, 1, 2])        # row 1 replays row 0
    np.testing.assert_array_equal(ys[1], ys[0])
    assert s.steps == 2


def test_a_held_gap_resent_is_a_replay(tmp_path):
    model = runtime.load(WATER_MODEL, device="cpu", missing="hold")
    s = model.stream()
    s.step([1.0], at=1)
    held = s.step([np.nan], at=2)
    np.testing.assert_array_equal(s.step([np.nan], at=2), held)
    assert s.steps == 2
    assert order(2, np.array([np.nan]), [np.nan], 2) == "replay"


def test_order_compares_token_ids_exactly():
    big = np.array([2.0 ** 24])
    assert order(1, big, big + 1, 1) == "replay"                  # float32: one value
    assert order(1, big, big + 1, 1, np.int64) == "conflict"


def test_lstm_run_answers_a_float32_equal_resend_as_a_replay():
    lines = ("Time,Water flow [l/s]\n2022-03-20T10:00:00Z,0.30000000000000004\n"
             "2022-03-20T10:00:00Z,0.3\n")
    stdout, _ = run([WATER_MODEL, "--time-column", "Time"], lines.encode())
    rows = split_lines(stdout)
    assert rows[2].split(",")[5] == "replay", stdout


def test_a_chunk_giving_one_position_twice_says_so_and_feeds_nothing(water):
    s = water.stream()
    s.feed([[1.0], [2.0], [3.0]], at=[1, 2, 8])
    with pytest.raises(InputError) as info:
        s.feed([[9.0], [10.0]], at=[9, 9])
    text = str(info.value)
    assert "rows 0 and 1 both give sequence number 9" in text
    assert "nothing from the chunk was fed" in text and "already fed" not in text
    assert (s.position, s.steps) == (8, 3)
    with pytest.raises(InputError, match=r"row 0: .*already fed.*; nothing from the chunk "
                                         r"was fed$"):
        s.feed([[4.0], [11.0]], at=[8, 10])
    assert (s.position, s.steps) == (8, 3)
