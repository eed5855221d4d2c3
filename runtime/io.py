"""The runtime's I/O under faults: lines in as they arrive, answers out whole, signals seen.

:class:`LineReader` cuts a file descriptor into batches of lines *as they arrive*: it never
holds a complete line back waiting for more. :class:`Output` hands every byte of a batch's
answers to the OS before it returns, and reopens its file for log rotation. :class:`Signals`
turns SIGINT/SIGTERM into a flag and a wake-up pipe, so that a reader blocked on a quiet
sensor, or a writer waiting on a slow reader, sees the signal at once; SIGHUP runs a hook
between batches instead (``lstm-run``: save the state, reopen ``-o``). The rule these serve
("answers first, then the state that counts them") is :func:`runtime.serve.serve`'s.

>>> r, w = os.pipe()
>>> _ = os.write(w, b"a,1\\nb,2\\npartial"); os.close(w)
>>> [[(n, raw) for n, raw in batch] for batch in LineReader(r).batches()]
[[(1, b'a,1'), (2, b'b,2')], [(3, b'partial')]]
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import lines as fmt
from .errors import LstmEdgeError

TOO_LONG = None    # what LineReader yields in place of the bytes of an over-long line
BOM = b"\xef\xbb\xbf"    # UTF-8's byte-order mark, which Excel's "CSV UTF-8" starts with


class Unterminated(bytes):
    """The input's last line, which ended without a newline: whole, or cut short by a feed
    that stopped in the middle of writing it (a killed ``tail -f``, a logger mid-line).
    Nothing in its bytes tells the two apart; ``lstm-run --state`` does not commit it."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum



# ---- waiting ---------------------------------------------------------------------------

class Waiter:
    """Wait until some of a fixed set of descriptors can be read or written.

    ``select.poll`` registered once where there is one (POSIX): ~0.35 µs a call where
    ``select.select`` spends ~1 µs building its sets, twice per live line (issue 24);
    ``select.select`` elsewhere. A descriptor whose other end is gone (hang-up, error) counts
    as ready, as ``select`` has it, so that the read or write that follows says so.

    >>> r, w = os.pipe(); _ = os.write(w, b"x")
    >>> Waiter(read=[r], write=[w]).wait(0) == {r, w}
    True
    """

    def __init__(self, read=(), write=()):
        self.read, self.write = list(read), list(write)
        self.poll = select.poll() if hasattr(select, "poll") else None
        if self.poll is not None:
            for fd in self.read:
                self.poll.register(fd, select.POLLIN)
            for fd in self.write:
                self.poll.register(fd, select.POLLOUT)

    def wait(self, timeout: float | None = None) -> set[int]:
        """The ready descriptors, after at most ``timeout`` seconds (None: until one is)."""
        if self.poll is None:
            readable, writable, _ = select.select(self.read, self.write, [], timeout)
            return {*readable, *writable}
        return {fd for fd, _ in self.poll.poll(None if timeout is None else timeout * 1e3)}


# ---- reading ---------------------------------------------------------------------------

HANGUP = getattr(signal, "SIGHUP", None)     # none on Windows


class Signals:
    """SIGINT/SIGTERM as a flag, plus a pipe that wakes :class:`LineReader` out of select.

    The handler only records the signal: a model call or a snapshot being written is never
    cut in half. The reader checks the flag between reads, and the wake-up pipe
    (``signal.set_wakeup_fd``) makes sure a reader blocked on a quiet sensor sees it at once.
    SIGHUP ends nothing: :meth:`check` runs ``on_hangup`` (once for any number of SIGHUPs
    that came since the last check) at the same safe points, where no batch is half answered.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hangups = 0                 # SIGHUPs not yet handled
        self.on_hangup: Callable[[], None] | None = None   # what a SIGHUP does, set by serve()
        self._pipe = os.pipe()
        self._wake_r: int | None = self._pipe[0]
        self._wake_w = self._pipe[1]
        self._old_fd: int | None = None
        os.set_blocking(self._wake_w, False)
        self._old: dict[int, Any] = {}     # signal -> the handler it had

    def __enter__(self) -> "Signals":
        for sig in (signal.SIGINT, signal.SIGTERM, HANGUP):
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)
        try:
            self._old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        except ValueError:      # Windows takes sockets only: signals then wait for a line
            self._old_fd, self._wake_r = None, None
        return self

    def __exit__(self, *exc) -> None:
        if self._wake_r is not None and self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._pipe[0])
        os.close(self._pipe[1])

    def _handle(self, signum, frame) -> None:
        if signum == HANGUP:
            self.hangups += 1
        else:
            self.signum = signum

    @property
    def wake_fd(self) -> int | None:
        """The descriptor that becomes readable when a signal arrives (None: not available)."""
        return self._wake_r

    def check(self) -> None:
        """Run ``on_hangup`` if SIGHUP came; raise :class:`Interrupted` if SIGINT/SIGTERM did."""
        if self.hangups and self.on_hangup is not None:
            self.hangups = 0
            self.on_hangup()
        if self.signum is not None:
            raise Interrupted(self.signum)


class LineReader:
    """Batches of ``(line_number, bytes)`` from a file descriptor, as soon as lines complete.

    Each read takes what the descriptor has (up to ``block`` bytes) and yields every line it
    completed, so a line from a live sensor is answered before the next one arrives. With
    ``gather`` (a file whose whole content is there), reads go on until ``block`` bytes are in
    hand, for fewer, larger batches. A line longer than ``max_line`` bytes yields
    ``TOO_LONG`` (``None``) instead of its bytes, and is never held in memory whole; where
    its first ``max_line`` bytes hold a carriage return (a file whose lines end in CR alone
    is one line here), those bytes, cut before their last CR, come as a :class:`lines.LongLine`,
    which the line formats refuse naming the CR endings and their conversion. With
    ``tick`` (seconds), a descriptor quiet that long yields an empty batch, so that the
    caller can do what is due on a quiet feed (``lstm-run --save-interval``).

    A UTF-8 byte-order mark that starts the input is no part of line 1, and is left out:
    left to the caller, taking it off would lose what the line is (:class:`Unterminated`, a
    :class:`lines.LongLine`).
    """

    def __init__(self, fd: int, *, block: int = 1 << 16, gather: bool = False,
                 max_line: int = fmt.MAX_LINE, signals: Signals | None = None,
                 tick: float | None = None):
        self.fd, self.block, self.gather, self.max_line = fd, block, gather, max_line
        self.signals = signals
        self.tick = tick
        self.line = 0          # number of the last line yielded
        self.bytes = 0         # bytes read so far
        self._waiter: Waiter | None = None

    def _read(self, patient: bool = False) -> bytes | None:
        """The next bytes (b"" at the end); None when ``tick`` passed first (unless
        ``patient``)."""
        wake = self.signals.wake_fd if self.signals is not None else None
        if wake is not None or self.tick is not None:
            if self.signals is not None:
                self.signals.check()
            if self._waiter is None:
                self._waiter = Waiter(read=[self.fd] if wake is None else [self.fd, wake])
            while True:   # wait, so that a signal wakes a reader waiting on a quiet pipe
                try:
                    ready = self._waiter.wait(self.tick)
                except InterruptedError:   # pragma: no cover - PEP 475 retries
                    ready = set()          # at worst an early, empty batch
                if wake is not None and wake in ready:
                    os.read(wake, 512)
                if self.signals is not None:
                    self.signals.check()
                if self.fd in ready:
                    break
                if not ready and not patient:
                    return None                  # quiet for tick seconds
        data = os.read(self.fd, self.block)
        self.bytes += len(data)
        return data

    def batches(self) -> Iterator[list[tuple[int, bytes | None]]]:
        pending = b""          # the start of a line whose end has not arrived yet
        skipping = False       # inside an over-long line that has been reported already
        start = True           # before the input's first line: a BOM there is left out
        eof = False
        while not eof:
            got = self._read()
            if got is None:
                yield []                  # a quiet feed: the caller's turn
                continue
            data = got
            while self.gather and data and len(data) < self.block:
                more = self._read(patient=True)
                assert more is not None
                if not more:
                    eof = True
                    break
                data += more
            eof = eof or not data
            if skipping:
                end = data.find(b"\n")
                if end < 0 and not eof:
                    continue
                data, skipping = (data[end + 1:] if end >= 0 else b""), False
            if start:
                head = pending + data
                if len(head) < len(BOM) and BOM.startswith(head) and not eof:
                    pending = head           # a BOM's first bytes, or a one-byte file so far
                    continue
                pending, data, start = b"", head.removeprefix(BOM), False
            parts = (pending + data).split(b"\n")
            pending = parts.pop()
            if eof and pending:
                parts.append(Unterminated(pending))
                pending = b""
            batch: list[tuple[int, bytes | None]] = []
            for raw in parts:
                self.line += 1
                batch.append((self.line, raw if len(raw) <= self.max_line else
                              self._too_long(raw)))
            if len(pending) > self.max_line:
                self.line += 1
                batch.append((self.line, self._too_long(pending)))
                pending, skipping = b"", True
            if batch:
                yield batch

    def _too_long(self, line: bytes) -> fmt.LongLine | None:
        """What stands for a line over ``max_line`` bytes: ``TOO_LONG``, or where a CR in its
        first ``max_line`` bytes may end lines, those bytes up to their last CR."""
        cr = line.rfind(b"\r", 0, self.max_line)
        return TOO_LONG if cr < 0 else fmt.LongLine(line[:cr])



# ---- writing ---------------------------------------------------------------------------

class OutputError(LstmEdgeError):
    """The answers cannot be written (a full disk, a closed stdout)."""


class OutputStalled(Exception):
    """A signal came and the reader did not take the rest of the answers within the grace."""


class Output:
    """Where answers go: every byte of each batch handed to the OS before ``write`` returns.

    ``os.write`` may write less than it is given (a pipe whose reader is slow, a signal in
    the middle); the rest is written until none is left, the same whether stdout is
    Python's buffered writer or, with ``PYTHONUNBUFFERED``, a raw file. Waiting for room
    goes through ``select`` with the signal wake-up pipe, so SIGINT/SIGTERM is seen while a
    reader is slow; from then on the reader has ``GRACE`` seconds to take what is left,
    and after that the batch counts as not delivered (:class:`OutputStalled`).


    A file is opened with ``O_APPEND``, so every write lands at its current end: after
    logrotate's ``copytruncate`` the answers go on at the start of the emptied file instead
    of at the old offset behind a hole of NUL bytes. ``append`` keeps what the file holds
    (a restarted service); otherwise it is emptied first. :meth:`reopen` follows a rename.
    """

    GRACE = 2.0     # seconds a reader gets, after a signal, to take the rest of a batch

    def __init__(self, path: str, signals: Signals | None = None, append: bool = False):
        self.to_stdout = path == "-"
        self.signals = signals
        self.deadline: float | None = None
        self.stream = None      # a stdout with no descriptor (click's CliRunner): written to
        self._waiter: Waiter | None = None     # for the output and the signals' wake-up pipe
        try:
            if self.to_stdout and sys.stdout is None:        # started with fd 1 closed
                raise OSError(9, "it is closed")
            if self.to_stdout:
                try:
                    sys.stdout.flush()       # anything printed before goes first
                    self.fd = sys.stdout.fileno()
                except (OSError, ValueError, AttributeError):    # io.UnsupportedOperation too
                    self.fd, self.stream = -1, sys.stdout.buffer
                else:
                    os.fstat(self.fd)
            else:
                self.fd = self._open(path, truncate=not append, read=append)
        except OSError as exc:
            raise OutputError(f"cannot write {'stdout' if self.to_stdout else path}: "
                              f"{exc.strerror or exc}; check that it is open and writable") \
                from None
        self.path = "stdout" if self.to_stdout else path
        self.note = self._mend() if append and not self.to_stdout else None

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        # backslashreplace: no text can stop the answers (runtime.lines already gives UTF-8)
        data = memoryview(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
        if self.stream is not None:
            self.stream.write(data)
            self.stream.flush()
            return
        try:
            while data:
                try:
                    n = os.write(self.fd, data[:self._room()])
                except BlockingIOError:        # a non-blocking descriptor we were given
                    select.select([], [self.fd], [])
                    continue
                data = data[n:]
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the answers to {self.path}: "
                              f"{exc.strerror or exc}; free disk space or write elsewhere "
                              f"with -o (a restart answers again, identically, the readings "
                              f"since the state's last save)") from None

    def _room(self) -> int | None:
        """Wait until the output takes bytes; how many may go without blocking (None: all)."""
        signals = self.signals
        if signals is None or signals.wake_fd is None:
            return None
        wake = signals.wake_fd
        if self._waiter is None:
            self._waiter = Waiter(read=[wake], write=[self.fd])
        while self.deadline is None and signals.signum is None:
            ready = self._waiter.wait()
            if self.fd in ready:
                return None
            os.read(wake, 512)
        if self.deadline is None:
            self.deadline = time.monotonic() + self.GRACE
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([], [self.fd], [], left)[1]:
            raise OutputStalled()
        return select.PIPE_BUF      # fits in a pipe that select called writable

    def _mend(self) -> str | None:
        """Cut an appended file's last line if it lacks its newline; what was done, or None.

        Such a line is an answer a failed write cut short (a full disk): its reading was
        not saved as fed, so it is answered again whole, and what follows must not be
        glued to its end.
        """
        size = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return None
        start = size
        while start > 0:          # back to the last newline, a block at a time
            block = os.pread(self.fd, min(1 << 16, start), max(0, start - (1 << 16)))
            cut = block.rfind(b"\n")
            if cut >= 0:
                start = max(0, start - len(block)) + cut + 1
                break
            start -= len(block)
        try:
            os.ftruncate(self.fd, start)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: its last line lacks its newline, an "
                              f"answer cut short, and cutting it failed: {exc.strerror or exc}"
                              f"; remove the line by hand") from None
        return (f"{self.path} ended in an answer cut short ({size - start} bytes without a "
                f"newline, left by a failed write); removed, its line is answered again whole")

    @staticmethod
    def _open(path: str, truncate: bool, read: bool = False) -> int:
        flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_APPEND \
            | getattr(os, "O_BINARY", 0)
        return os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o666)

    def reopen(self) -> bool:
        """Write to the ``-o`` path afresh (log rotation); False where the output is stdout.

        A file renamed away is closed and a new one created at the path; a file still there
        (``copytruncate``) is appended to, never emptied. Call it between batches.
        """
        if self.to_stdout:
            return False
        try:
            fd = self._open(self.path, truncate=False)
        except OSError as exc:
            raise OutputError(f"cannot reopen {self.path} after SIGHUP: {exc.strerror or exc}; "
                              f"the answers before it are in the file it had, and the state "
                              f"counts them") from None
        os.close(self.fd)
        self.fd, self._waiter = fd, None
        return True

    def close(self) -> None:
        if not self.to_stdout:
            os.close(self.fd)

    def lost(self) -> None:
        """The reader went away: point the descriptor at /dev/null so no later flush fails."""
        if self.fd < 0:
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fd)
        os.close(devnull)
        try:
            sys.stdout.flush()
        except (OSError, ValueError, AttributeError):
            pass


def replace_file(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename, so that a
    reader finds the old file or the new one, never half of one. Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
