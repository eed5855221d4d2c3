"""State slots: a stream whose window ``j`` continues window ``j - B``, as Keras batches do.

``lstm_edge.state_slots`` (docs/contract.md, "Streaming modes") gives ``B``, the batch size a
stateful Keras model predicted with. A file with ``B = 1`` streams through a plain
:class:`~runtime.stream.Stream`; ``Model.stream()`` makes a :class:`SlotStream` otherwise,
so that the one-slot hot path pays nothing for slots.
"""

from __future__ import annotations

import numpy as np

from .device import to_host
from .stream import Stream


class SlotStream(Stream):
    """A stream carrying ``B > 1`` state slots (``Model.slots``, ``lstm_edge.state_slots``).

    Keras ``predict(X, batch_size=B)`` on a stateful model runs the windows in batches of
    ``B``, row ``i`` of a batch continuing from row ``i`` of the batch before: window ``j``
    continues window ``j - B``, not ``j - 1``. This stream's ``j``-th full window (counted
    from its first full window) starts from slot ``j mod B`` and leaves its final state
    there, which gives the same numbers on consecutive sliding windows. ``_state`` is the
    slot the next full window starts from (slot ``_slot``), so the code shared with
    :class:`Stream` (many-stream calls, ``state``) reads the right one; ``_rest`` holds the
    other ``B - 1`` slots in the order they come next. A stream with one slot is a plain
    :class:`Stream`, whose steps pay nothing for this.
    """

    __slots__ = ("_rest", "_slot")

    def reset(self) -> None:
        super().reset()
        self._rest = (self.model._zero_state,) * (self.model.slots - 1)
        self._slot = 0

    @property
    def slot(self) -> int:
        """The slot (0 to B - 1) the next full window starts from."""
        return self._slot

    def _slots(self, state):
        """Slot ``k`` at ``k`` (the ring holds them from ``_slot`` on), and the next slot."""
        count, ring = self.model.slots, (state, *self._rest)   # slots _slot, _slot + 1, ..
        order = [ring[(k - self._slot) % count] for k in range(count)]
        return [tuple(to_host(t) for t in r) for r in order], self._slot

    def _load(self, slots, nxt) -> None:
        count, self._slot = len(slots), nxt
        self._state = slots[nxt]
        self._rest = tuple(slots[(nxt + i) % count] for i in range(1, count))

    def _turn(self, new) -> None:
        """The window just run leaves ``new`` in its slot; the next window takes the next one."""
        rest = self._rest
        self._state, self._rest = rest[0], rest[1:] + (new,)
        self._slot = (self._slot + 1) % self.model.slots

    def _call(self, buf):
        y = super()._call(buf)
        # A copy: the step binding's set the state is in is written again by a later call.
        self._turn(tuple(np.array(to_host(s)) for s in self._state))
        return y

    def _advance_masked(self, buf, masked):
        y = super()._advance_masked(buf, masked)
        self._turn(self._state)
        return y

    def _step_masked(self, x):
        if self.model.window == 1 and self.model._masked_one(x):
            self._turn(self._state)            # a masked window of one: its slot's state stays
        return super()._step_masked(x)

    def _feed_sequence(self, xs):
        return self._feed_each(xs)

    def _feed_stateful(self, xs):
        return self._feed_each(xs)

    def _feed_each(self, xs):
        """One step per reading: all of the chunk, or none of it."""
        model = self.model
        one = self._step_masked if model._mask is not None else self._advance
        saved = (tuple(np.array(to_host(s)) for s in self._state), self._rest, self._slot,
                 self._buf, self._steps, self._pred)
        ys = np.full((len(xs), model.n_targets), np.nan, np.float32)
        try:
            for i, x in enumerate(xs):
                y = one(x)
                if y is not None:
                    ys[i] = y
        except BaseException:
            (self._state, self._rest, self._slot, self._buf, self._steps, self._pred) = saved
            raise
        return ys
