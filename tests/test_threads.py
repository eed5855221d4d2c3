"""Many-stream calls on more threads: only from BATCH_THREADS_FROM streams, same answers."""

import numpy as np

import runtime
from runtime.device import BATCH_THREADS_FROM, BatchThreads
from helpers import ROOT

WATER = ROOT / "exported" / "water-flow.onnx"


def test_a_large_call_runs_on_the_twin_with_the_answers_of_one_thread():
    auto = runtime.load(WATER, device="cpu")
    twin = BatchThreads.of(auto.session)
    assert twin is not None
    one = runtime.load(WATER, device="cpu", session_options=runtime.device.SessionConfig(
        threads=1).options())                                        # ready-made: no twin
    assert BatchThreads.of(one.session) is None
    n = BATCH_THREADS_FROM
    x = (100 + np.random.default_rng(0).standard_normal((3, n, 1))).astype(np.float32)
    a, b = [auto.stream() for _ in range(n)], [one.stream() for _ in range(n)]
    auto.step([auto.stream()], x[0, :1])                              # one stream: one thread
    assert twin._run is None
    for k in range(3):
        # Threads split the sums differently: equal within float32 rounding, not bit for bit.
        np.testing.assert_allclose(auto.step(a, x[k]), one.step(b, x[k]), rtol=1e-6)
    assert twin._run is not None
    for sa, sb in zip(a[:5], b[:5]):
        np.testing.assert_allclose(sa.state["in_h0"], sb.state["in_h0"], rtol=1e-5, atol=1e-6)


def test_no_twin_where_threads_were_chosen():
    assert BatchThreads.of(runtime.load(WATER, device="cpu", threads=2).session) is None
