"""What a save of the ``--state`` database may count: answers first, then the state.

A sensor stepped in a batch is *in flight* until that batch's answers have been handed to
the OS; only then may a save write its row. A batch whose answers could not be written (a
reader that went away, a full disk, a stalled reader after SIGTERM) leaves its sensors in
flight, so their saved rows keep counting only answers that were delivered. The ledger
knows nothing of streams or files: :class:`runtime.serve.Server` tells it what happened and
asks it what to save and when.

>>> ledger = SaveLedger(clock=lambda: 0.0)
>>> ledger.stepped({"a", "b"}); ledger.answered(2)
>>> ledger.pending()                       # answers not out: nothing may be saved
(set(), set(), None)
>>> ledger.delivered(lines=3); ledger.pending()[0] == {"a", "b"}
True
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SaveLedger:
    """The sensors a save may write, the ones it deletes, and whether a save is due.

    Parameters
    ----------
    clock : seconds, monotonic (``time.monotonic``; tests give their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.changed: set[str] = set()    # stepped, answers delivered, not yet saved
        self.inflight: set[str] = set()   # stepped in the batch whose answers are not out
        self.dropped: set[str] = set()    # sensors dropped since the last save
        self.lines = 0                    # input lines whose answers are out
        self.unsaved = 0                  # lines answered since the last save
        self.last = clock()               # when the state was last saved (or loaded)
        self.saved_at: float | None = None   # time.time() of the last save (--progress)

    def stepped(self, keys) -> None:
        """These sensors' streams were stepped in the batch in hand."""
        self.inflight |= set(keys)

    def answered(self, lines: int) -> None:
        """The batch in hand gave ``lines`` output lines."""
        self.unsaved += lines

    def delivered(self, lines: int) -> None:
        """The batch's answers are out; ``lines`` input lines are answered in all."""
        self.changed |= self.inflight
        self.inflight.clear()
        self.lines = lines

    def drop(self, key: str) -> None:
        """A sensor was forgotten: its row goes at the next save."""
        self.dropped.add(key)

    def pending(self) -> tuple[set[str], set[str], int | None]:
        """What a save writes now: sensors to write, to delete, and the lines it counts
        (None while answers are in flight: the count is then not known)."""
        return (self.changed - self.inflight, set(self.dropped),
                None if self.inflight else self.lines)

    def saved(self) -> None:
        """What :meth:`pending` gave was committed."""
        self.changed &= self.inflight
        self.dropped.clear()
        self.unsaved, self.last = 0, self.clock()
        self.saved_at = time.time()

    def due(self, every: int, interval: float) -> bool:
        """Whether ``every`` lines (0: never) or ``interval`` seconds (0: never; only with a
        sensor changed or dropped) have passed since the last save."""
        if every and self.unsaved >= every:
            return True
        return bool(interval) and bool(self.changed or self.dropped) \
            and self.clock() - self.last >= interval
