"""The save ledger on its own: answers first, then the state that counts them.

Every case drives :class:`runtime.ledger.SaveLedger` the way ``serve`` does (stepped, answered,
delivered or not, saved) with an injected clock, and checks what a save may write.
"""

from __future__ import annotations

from runtime.ledger import SaveLedger


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(ledger: SaveLedger, keys, lines: int, delivered_total: int | None) -> None:
    """One batch: its sensors stepped, its lines answered, delivered unless None."""
    ledger.stepped(keys)
    ledger.answered(lines)
    if delivered_total is not None:
        ledger.delivered(delivered_total)


def test_a_save_counts_only_delivered_answers():
    ledger = SaveLedger(Clock())
    batch(ledger, {"a", "b"}, 2, None)
    assert ledger.pending() == (set(), set(), None)          # answers not out: nothing
    ledger.delivered(3)
    assert ledger.pending() == ({"a", "b"}, set(), 3)
    ledger.saved()
    assert ledger.pending() == (set(), set(), 3)


def test_a_batch_whose_answers_were_not_written_keeps_its_sensors_out():
    ledger = SaveLedger(Clock())
    batch(ledger, {"a"}, 1, 2)
    batch(ledger, {"a", "b"}, 2, None)                       # the write raised
    keys, _, lines = ledger.pending()
    assert keys == set() and lines is None                   # "a" is in flight again
    batch(ledger, {"c"}, 1, None)
    assert ledger.pending()[0] == set()
    ledger.saved()                                           # a save at exit changes nothing
    assert ledger.inflight == {"a", "b", "c"} and ledger.changed == {"a"}


def test_dropped_sensors_go_with_the_next_save():
    ledger = SaveLedger(Clock())
    batch(ledger, {"a"}, 1, 2)
    ledger.drop("old")
    assert ledger.pending() == ({"a"}, {"old"}, 2)
    ledger.saved()
    assert ledger.pending() == (set(), set(), 2)


def test_a_save_is_due_by_lines_or_by_time_with_a_change():
    clock = Clock()
    ledger = SaveLedger(clock)
    assert not ledger.due(every=3, interval=1.0)
    batch(ledger, {"a"}, 2, 2)
    assert not ledger.due(every=3, interval=1.0)             # 2 lines, no time passed
    batch(ledger, {"a"}, 1, 3)
    assert ledger.due(every=3, interval=0)                   # 3 lines
    ledger.saved()
    clock.now += 5
    assert not ledger.due(every=0, interval=1.0)             # time passed, nothing changed
    batch(ledger, {"b"}, 1, 4)
    assert ledger.due(every=0, interval=1.0) and not ledger.due(every=0, interval=0)
    clock.now += 0.5
    ledger.saved()
    assert not ledger.due(every=0, interval=1.0)
