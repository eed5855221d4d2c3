"""Keep TensorFlow's native start-up noise off stderr, and every real problem on it.

TensorFlow's C++ side writes to file descriptor 2 directly, some of it before its logging is
set up (so ``TF_CPP_MIN_LOG_LEVEL`` cannot stop it): "All log messages before
absl::InitializeLog()", "Could not find cuda drivers", "failed call to cuInit" (GPUs are
hidden on purpose: see :func:`trainer.cli.quiet_tensorflow`) and a "NodeDef mentions
attribute use_unbounded_threadpool" line on every fit. None of it is a problem, and a user
who reads ``E0000 ... failed call to cuInit`` thinks something broke.

:func:`filter_stderr` points descriptor 2 at a pipe read by a small child process that drops
the lines matching :data:`NOISE` and copies every other line to the real stderr. A child,
not a thread: if TensorFlow aborts the process, the child still passes on what it wrote.
``TF_CPP_MIN_LOG_LEVEL=0`` (asking for TensorFlow's info logs) turns the filter off.

>>> is_noise("I0000 00:00:1795320011.826594    8277 port.cc:153] oneDNN custom operations are on.")
True
>>> is_noise("E0000 00:00:1.0    8277 some_kernel.cc:12] Out of memory"), is_noise("Error: bad")
(False, False)
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys

# A native log line: severity, date, time, thread, file:line] message (absl's format).
_NATIVE = r"[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] "

NOISE = [re.compile(p) for p in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\] ",          # every info line
    _NATIVE + r"failed call to cuInit",                       # GPUs hidden on purpose
    _NATIVE + r"Could not find cuda drivers",
    _NATIVE + r"Unable to register cu(DNN|FFT|BLAS) factory",
    _NATIVE + r"NodeDef mentions attribute use_unbounded_threadpool",
    _NATIVE + r"TF-TRT Warning: Could not find TensorRT",
    _NATIVE + r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow",
)]


def is_noise(line: str) -> bool:
    """Whether one stderr line is known TensorFlow start-up noise."""
    return any(p.match(line) for p in NOISE)


_child: subprocess.Popen | None = None
_saved_fd: int | None = None


def filter_stderr() -> None:
    """Route descriptor 2 through the noise filter until the process exits (once)."""
    global _child, _saved_fd
    if _child is not None or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.fstat(2)                 # a closed stderr has no noise to filter
        read, write = os.pipe()
        saved = os.dup(2)
        child = subprocess.Popen([sys.executable, "-S", "-c", _CHILD], stdin=read,
                                 stdout=saved, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:             # no pipe or no process to spare: noise is better than nothing
        return
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    _child, _saved_fd = child, saved
    atexit.register(_restore)


def is_terminal() -> bool:
    """Whether the real stderr, the one the filter passes lines on to, is a terminal."""
    try:
        return os.isatty(_saved_fd if _child is not None else 2)
    except OSError:
        return False


def _restore() -> None:
    """Give descriptor 2 back and wait until the child has passed on everything."""
    global _child
    if _child is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):     # AttributeError: no sys.stderr
        pass
    os.dup2(_saved_fd, 2)           # the pipe's last write end closes: the child sees EOF
    try:
        _child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    _child = None


# The child: a plain line filter, started with -S so that it costs a few milliseconds. It
# ignores SIGINT (Ctrl-C reaches the whole process group) and ends when the pipe closes.
_CHILD = f"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = [re.compile(p) for p in {[p.pattern for p in NOISE]!r}]
out = sys.stdout.buffer
for raw in sys.stdin.buffer:
    if not any(p.match(raw.decode("utf-8", "replace")) for p in noise):
        out.write(raw)
        out.flush()
"""
