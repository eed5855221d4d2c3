"""The live view of ``lstm-run --progress``: one status line on stderr, never on stdout.

The serve loop calls a :class:`Progress` after every batch; it redraws at most once per
``every`` seconds. On a terminal the line is redrawn in place (and cleared before any other
message, so the per-line complaints stay readable); elsewhere (a log file) each update is a
line of its own.

>>> import io
>>> out = io.StringIO()
>>> view = Progress(out, every=0, tty=False)
>>> class Server: lines, errors, sensors, saved_at = 10, 1, {"a": 0, "b": 0}, None
>>> view(Server())
>>> out.getvalue().split(" lines")[0]
'lstm-run: 10'
"""

from __future__ import annotations

import os
import sys
import time

from . import stderr

CLEAR = "\r\x1b[K"     # back to the start of the line and erase it (every ANSI terminal)


class Progress:
    """Lines/s, sensors, errors and the last --state save, to ``out`` (stderr by default)."""

    def __init__(self, out=None, *, every: float = 1.0, tty: bool | None = None,
                 state: bool = False):
        self.out = out if out is not None else sys.stderr
        self.every = every                  # seconds between redraws at most
        self.tty = self.out.isatty() if tty is None else tty
        self.state = state                  # whether --state was given (else "no --state")
        self.start = self._last = time.monotonic()
        self._last_lines = 0
        self._shown = False                 # a status line is on screen, not yet ended
        self._server = None

    def __call__(self, server) -> None:
        """Take the server's counts after a batch; redraw when ``every`` seconds have passed."""
        self._server = server
        now = time.monotonic()
        if now - self._last >= self.every:
            self._draw(server, now)

    def line(self, server, now: float) -> str:
        """The status line, e.g. ``lstm-run: 1,200 lines (240/s), 3 sensors, 0 errors, ...``."""
        elapsed = max(now - self._last, 1e-9)
        rate = (server.lines - self._last_lines) / elapsed
        if not self.state:
            saved = "no --state"
        elif server.saved_at is None:
            saved = "not saved yet"
        else:
            saved = (f"last save {time.strftime('%H:%M:%S', time.localtime(server.saved_at))}"
                     f" ({time.time() - server.saved_at:.0f} s ago)")
        return (f"lstm-run: {server.lines:,} lines ({rate:,.0f}/s), {len(server.sensors):,} "
                f"sensor{'s' if len(server.sensors) != 1 else ''}, {server.errors:,} "
                f"error{'s' if server.errors != 1 else ''}, {saved}")

    def _draw(self, server, now: float) -> None:
        text = self.line(server, now)
        self._last, self._last_lines = now, server.lines
        if self.tty:
            self._write(CLEAR + text)
            self._shown = True
        else:
            self._write(text + "\n")

    def warn(self, message: str) -> None:
        """Write another message on its own line, clearing the status line first."""
        if self._shown:
            self._write(CLEAR)
            self._shown = False
        self._write(message + "\n")

    def finish(self) -> None:
        """The last counts, on a line that ends, when the run is over."""
        if self._server is not None:
            now = time.monotonic()
            self._last_lines = 0                # the rate of the whole run
            self._last = self.start
            self._draw(self._server, now)
        if self._shown:
            self._write("\n")
            self._shown = False

    def _write(self, text: str) -> None:
        """Write and flush; a stderr whose reader went away costs the status, not the run."""
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            if self.out is sys.stderr:
                stderr.gone()
            self.out = open(os.devnull, "w")
