"""Streams and threads: a stream is stepped by one thread at a time; a step of a stream that
another thread is stepping is refused in words, never lost (see ``Model``, Threads)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import runtime
from runtime import InputError

from helpers import WATER_MODEL, tiny_onnx


class Held:
    """A host runner whose next call waits until the test lets it go: a call in progress."""

    def __init__(self, runner):
        self.runner, self.entered, self.go, self.armed = runner, threading.Event(), \
            threading.Event(), False

    def run(self, x, states):
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.go.wait(20)
        return self.runner.run(x, states)


def in_progress(model, call):
    """Start ``call`` on a thread and return once it is inside its ORT call; then
    ``finish()`` lets it complete and returns what it returned (or raises)."""
    held = Held(model._host)
    model._host, held.armed = held, True
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=call()))
    thread.start()
    assert held.entered.wait(20)

    def finish():
        held.go.set()
        thread.join(20)
        model._host = held.runner
        return box.get("out")
    return finish


@pytest.fixture
def water():
    return runtime.load(WATER_MODEL, device="cpu")


def test_a_stream_in_a_group_being_stepped_is_refused_not_lost(water):
    streams = [water.stream() for _ in range(4)]
    x3, x2 = np.full((3, 1), 100.0), np.full((2, 1), 100.0)
    water.step(streams[:3], x3)
    water.step(streams[:3], x3)                   # a group now: the next call is its fast path
    finish = in_progress(water, lambda: water.step(streams[:3], x3))
    try:
        for call in (lambda: water.step(streams[2:], x2), lambda: streams[2].step([100.0]),
                     lambda: streams[2].feed([[100.0]]), lambda: water.step(streams[:3], x3)):
            with pytest.raises(InputError, match="being stepped by another call, on another "
                                                 "thread; a stream is stepped by one thread"):
                call()
    finally:
        finish()
    assert [s.steps for s in streams] == [3, 3, 3, 0]    # nothing lost, nothing doubled
    water.step(streams[2:], x2)                   # after it: fine
    assert [s.steps for s in streams] == [3, 3, 4, 1]


def test_a_stream_being_fed_is_refused_and_ends_as_one_thread_leaves_it(water):
    s = water.stream()
    chunk = 100 + np.random.default_rng(0).standard_normal((50, 1))
    finish = in_progress(water, lambda: s.feed(chunk))
    try:
        for call in (lambda: s.step(np.array([1.0])), lambda: s.step([1.0], at=3),
                     lambda: water.step([s], [[1.0]]), lambda: s.feed(chunk[:2])):
            with pytest.raises(InputError, match="another thread"):
                call()
    finally:
        ys = finish()
    reference = water.stream()
    np.testing.assert_array_equal(ys, reference.feed(chunk))
    assert s.steps == 50
    np.testing.assert_array_equal(s.step(np.array([101.0])), reference.step(np.array([101.0])))


def test_two_threads_sharing_a_stream_lose_no_reading_silently(water):
    """The tester's reproduction: a call is either refused or fully stepped."""
    streams = [water.stream() for _ in range(4)]
    done = [0] * 4
    lock = threading.Lock()

    def steps(idx):
        for _ in range(1000):
            try:
                water.step([streams[i] for i in idx], np.full((len(idx), 1), 100.0))
            except InputError as exc:
                assert "another thread" in str(exc)
                continue
            with lock:
                for i in idx:
                    done[i] += 1

    threads = [threading.Thread(target=steps, args=(idx,)) for idx in ([0, 1, 2], [2, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s.steps for s in streams] == done


def test_streams_on_their_own_threads_answer_as_one_thread_does(tmp_path):
    """What is supported: a model shared, each stream (or group) on one thread; also with
    IO binding, whose chunks (feed) share one binding."""
    model = runtime.load(tiny_onnx(tmp_path / "t.onnx"), device="cpu",
                         io_binding=True)
    xs = 20 + np.random.default_rng(1).standard_normal((4, 200, 2)).astype(np.float32)
    serial = [model.stream() for _ in range(4)]
    want = [serial[k].feed(xs[k]) for k in range(4)]
    got: dict = {}

    def run(k):
        s = model.stream()
        got[k] = np.concatenate([s.feed(xs[k][i:i + 5]) for i in range(0, 200, 5)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        np.testing.assert_array_equal(got[k], want[k])
