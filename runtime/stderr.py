"""stderr that can never take the answers down.

The answers go to stdout; warnings, ``line N:`` complaints and ``Error:`` lines go to stderr.
A stderr that was closed at start (``2>&-``), or whose reader went away (``2> >(head -c
100)``), costs those messages and nothing else: :func:`ensure` gives a closed descriptor 2
a ``/dev/null`` (so no file the program opens later becomes descriptor 2, and ``sys.stderr``
is never None), and :func:`warn` points descriptor 2 at ``/dev/null`` at the first write
that fails, so neither that write, nor a later one, nor Python's flush at exit raises.
Without this, the broken pipe of a warning is taken for stdout's, and the run ends with no
answers.
"""

from __future__ import annotations

import os
import sys

import click


def ensure() -> None:
    """Make descriptor 2 and ``sys.stderr`` usable: ``/dev/null`` where they are closed."""
    try:
        os.fstat(2)
    except OSError:
        _devnull()
    if sys.stderr is None:
        # Python found descriptor 2 closed at start; what holds it now (/dev/null opened by
        # a library, or ours) is no stderr: Python's messages go to /dev/null of their own.
        sys.stderr = open(os.devnull, "w")


def warn(message: str) -> None:
    """One line on stderr; where stderr is gone, the message (and every later one) is
    dropped."""
    try:
        click.echo(message, err=True)
    except (OSError, ValueError):        # BrokenPipeError, EBADF, a closed sys.stderr
        gone()


def gone() -> None:
    """A write to stderr failed: point descriptor 2 at ``/dev/null`` for the rest of the run."""
    _devnull()
    try:
        sys.stderr.flush()               # what was buffered goes to /dev/null, not at exit
    except (OSError, ValueError, AttributeError):
        pass


def _devnull() -> None:
    """Point descriptor 2 at ``/dev/null``."""
    fd = os.open(os.devnull, os.O_RDWR)
    if fd != 2:
        os.dup2(fd, 2)
        os.close(fd)


class Command(click.Command):
    """A click command whose stderr is made usable (:func:`ensure`) before click parses the
    options: else click writes a usage error to stdout when stderr is closed."""

    def main(self, *args, **kwargs):
        ensure()
        return super().main(*args, **kwargs)
