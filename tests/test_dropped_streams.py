"""A full stream table: memory stays flat and drops are summarised, not one line each.

With ``--max-streams N`` a new sensor drops the least recently seen one. Without ``--state``
there is no row to delete later, so no dropped key may be kept; stderr names the first few
drops, then counts them (at 100, 1,000, ...), then one line at the end.
"""

from __future__ import annotations

import subprocess

from runtime.serve import ServeConfig, Server
from helpers import LSTM_RUN, ROOT, TIMEOUT, split_lines, tiny_onnx

N = 5000      # distinct sensors, one line each


def lines(n: int) -> bytes:
    return ("sensor,temperature,humidity\n"
            + "".join(f"s{i},{20 + i % 7},{40 + i % 3}\n" for i in range(n))).encode()


def test_without_a_state_file_no_dropped_key_is_kept(tmp_path):
    import runtime
    model = runtime.load(tiny_onnx(tmp_path / "tiny.onnx"), device="cpu")
    said: list[str] = []
    server = Server(model, ServeConfig(stream_column="sensor", max_streams=10), warn=said.append)
    batch = list(enumerate(lines(N).splitlines(), start=1))
    for start in range(0, len(batch), 500):
        server.handle(batch[start:start + 500])
        server.delivered()
    assert len(server.sensors) == 10 and server.table.drops == N - 10
    assert server.ledger.dropped == set()           # nothing grows with every sensor seen
    assert len(said) == 10 + 2                      # 10 named, then at 100 and 1,000


def test_drops_are_summarised_on_stderr(tmp_path):
    """20,000 sensors through a table of 10 (a batch's own sensors are never dropped, so how
    many go depends on where the batches fall): 10 named, a few counts, one total."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    n = 20_000
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream-column", "sensor",
                                      "--max-streams", "10"], input=lines(n),
                          capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 0 and len(split_lines(proc.stdout.decode())) == n + 1
    assert sum(line.startswith("dropped stream 's") for line in err) == 10
    counts = [line.split(" streams")[0] for line in err[10:]]
    assert counts[:2] == ["dropped 100", "dropped 1,000"] and len(err) <= 10 + 4, err
    assert err[-1].startswith("dropped ") and "streams in all" in err[-1]
