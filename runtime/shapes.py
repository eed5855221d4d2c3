"""Shape mismatches explained in the words users search for.

Most people arrive here with a model trained on windows and an array of the wrong rank.
One function, :func:`shape_problem`, says what the model reads in ``(samples, timesteps,
features)`` terms, what it got, and the one-line fix; the runtime raises its shape errors
through :func:`check_shape`. The words are Keras's: a *sample* is one window, *timesteps*
its length, *features* the values of one time step; a *reading* is one time step's feature
values, what a stream takes. A fix is only offered where it gives the same numbers: a
windows array given to a stream is pointed to ``predict``, never reshaped into readings.

>>> print(shape_problem((1000, 24), (None, 24, 1)))
expected (samples, timesteps, features) = (n, 24, 1), got (1000, 24) — add a features axis: x.reshape(1000, 24, 1)
>>> shape_problem((5, 24, 3), (None, 24, 3)) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ShapeError, counted

# The names of the axes, by how many axes the expected shape has.
AXES = {
    3: ("samples", "timesteps", "features"),
    2: ("readings", "features"),
    1: ("features",),
}
STREAMS = ("streams", "features")   # Model.step's readings: one per stream


def _fmt(shape: Sequence[int | None]) -> str:
    dims = ["n" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _names(axes: int) -> str:
    return "(" + ", ".join(AXES[axes]) + ("," if axes == 1 else "") + ")"


def _matches(got: Sequence[int], expected: Sequence[int | None]) -> bool:
    return len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))


def _these(n: int) -> str:
    return "this is 1 sample (window)" if n == 1 else f"these are {n} samples (windows)"


def _windows_hint(got: tuple[int, ...], expected: tuple[int | None, ...],
                  window: int | None) -> str | None:
    """Where readings are expected and ``got`` looks like windows: what takes windows."""
    want_feat = expected[-1]
    if len(got) == len(expected) + 1 and got[-1] == want_feat:
        if got[0] == 1 and _matches(got[1:], expected):
            return None                                    # an extra axis of 1: dropping it is exact
        if len(expected) == 1:                             # one window where a reading belongs
            return (f"this is a window of {counted(got[0], 'reading')} (timesteps, features), "
                    f"and a step takes one reading: stream.feed(window) steps through its readings, and "
                    f"model.predict(window[None]) gives Keras's prediction for this window")
        return (f"{_these(got[0])} of {counted(got[1], 'timestep')}, shaped (samples, "
                f"timesteps, features); a stream takes readings, one row per time step, not "
                f"windows: model.predict(X) gives what Keras's model.predict(X) gives, or "
                f"feed the stream the series the windows were cut from, shape (n, {want_feat})")
    if len(got) == len(expected) + 2 and got[-1] == want_feat and len(expected) == 1:
        return (f"{_these(got[0])} of {counted(got[1], 'timestep')}, and a step takes "
                f"one reading: model.predict(X) gives what Keras's model.predict(X) gives")
    if len(got) == len(expected) and len(got) == 2 and want_feat == 1 and window \
            and got[1] == window and window > 1:
        return (f"these look like {counted(got[0], 'window')} of {window} timesteps without "
                f"their features axis; a stream takes readings, one row per time step: "
                f"model.predict(X.reshape({got[0]}, {window}, 1)) gives what Keras gives for "
                f"windows, or feed the stream the series the windows were cut from, shape (n, 1)")
    return None


def _hint(got: tuple[int, ...], expected: tuple[int | None, ...], feature_names,
          window: int | None = None, readings: bool = False) -> str:
    """The most likely fix for ``got`` against ``expected`` (same conventions as shape_problem)."""
    want_feat = expected[-1]
    named = f" ({', '.join(feature_names)})" if feature_names else ""
    if readings:
        hint = _windows_hint(got, expected, window)
        if hint:
            return hint
    if not got and len(expected) == 1 and want_feat is not None:
        # 3.0 for (2,): one number where a reading holds one value per feature.
        return (f"this is one number, and the model reads {counted(want_feat, 'feature')}"
                f"{named} per reading: give one value per feature, shape ({want_feat},)")
    if len(got) == len(expected) - 1:
        # (n, 24) for (n, 24, 1): the features axis of a univariate series is missing.
        if want_feat == 1 and _matches(got, expected[:-1]):
            if len(expected) == 3 and expected[1] is None and got[1] == 1:
                # (40, 1) for (n, n, 1): 40 readings of the one feature, or 40 windows of 1
                return (f"these are {counted(got[0], 'reading')} of the one feature, or "
                        f"{counted(got[0], 'window')} of 1 timestep: as one sequence "
                        f"(each reading answered from the ones before it, as a stream does) "
                        f"x.reshape(1, {got[0]}, 1), or model.stream().feed(x); as windows "
                        f"of 1 timestep, each from a zero state, x.reshape({got[0]}, 1, 1)")
            return f"add a features axis: x.reshape({', '.join(map(str, got))}, 1)"
        # (24, 3) for (n, 24, 3): one window without its samples axis.
        if _matches(got, expected[1:]):
            return (f"add a {AXES[len(expected)][0]} axis for a single one: "
                    f"x.reshape(1, {', '.join(map(str, got))})")
        if _matches(got, expected[:-1]):
            return (f"the features axis is missing: the model reads {want_feat} features{named} "
                    f"at every timestep")
        if len(expected) == 3 and len(got) == 2 and (want_feat is None or got[1] == want_feat):
            steps = expected[1] if expected[1] is not None else "look_back"
            return (f"these are readings (one row per time step), not windows: make windows of "
                    f"{steps} consecutive readings, or feed the readings to a stream "
                    f"(model.stream().feed(x))")
    if len(got) == len(expected):
        if len(got) >= 2 and _matches(got[:-2] + (got[-1], got[-2]), expected):
            axes = list(range(len(got)))
            axes[-2], axes[-1] = axes[-1], axes[-2]
            return f"the last two axes look swapped: x.transpose({', '.join(map(str, axes))})"
        if want_feat is not None and got[-1] != want_feat:
            return (f"the model reads {counted(want_feat, 'feature')}{named} per timestep, got "
                    f"{got[-1]}")
        if len(expected) == 3 and expected[1] is not None and got[1] != expected[1]:
            return f"the model reads windows of {expected[1]} timesteps, got {got[1]}"
    if len(expected) == 3 and len(got) == 1 and want_feat == 1:
        steps = expected[1] if expected[1] is not None else "look_back"
        return (f"this is a series of readings, not windows: make windows of {steps} "
                f"consecutive readings, or feed the series to a stream "
                f"(model.stream().feed(x[:, None]))")
    if len(got) > len(expected):
        extra = len(got) - len(expected)
        if all(d == 1 for d in got[:extra]) and _matches(got[extra:], expected):
            return f"x has {extra} axis too many, of size 1: drop it with x.reshape{_fmt(got[extra:])}"
        return f"x has {extra} axis too many"
    return f"the model reads arrays of {len(expected)} axes, {_names(len(expected))}"


def _streams_hint(got: tuple[int, ...], expected: tuple[int | None, ...]) -> str | None:
    """Model.step's readings ``(streams, features)``, one per stream: how many ``got`` holds
    against how many streams (windows and swapped axes: :func:`_hint`)."""
    streams, want_feat = int(expected[0] or 0), expected[1]
    wanted = f"shape ({streams}, {want_feat}), row i the reading of streams[i]"
    if (len(got) == 2 and got[1] == want_feat) or (len(got) == 1 and want_feat == 1):
        if got[0] != streams:
            return (f"{counted(got[0], 'reading')} for {counted(streams, 'stream')}: give one "
                    f"reading per stream, {wanted}")
        return None                                        # (3,) for (3, 1): a features axis
    if got == (want_feat,) and streams == 1:
        return f"add a streams axis for the one stream: x.reshape(1, {want_feat})"
    if got == (want_feat,):
        return f"this is one reading, and each of the {streams} streams takes one: give {wanted}"
    if len(got) < 2:
        return f"give one reading per stream, {wanted}"
    return None


def shape_problem(got: Sequence[int], expected: Sequence[int | None],
                  feature_names: Sequence[str] | None = None, *,
                  axes: Sequence[str] | None = None, window: int | None = None) -> str | None:
    """Explain why an array of shape ``got`` does not fit ``expected``, or None if it does.

    Parameters
    ----------
    got : the array's shape.
    expected : the shape the model reads, one entry per axis named in ``AXES``
        (3 axes: samples, timesteps, features; 2: readings, features; 1: features);
        ``None`` where any size is fine.
    feature_names : names of the features, to say which ones the model reads.
    axes : other names for the axes, e.g. ``("samples", "timesteps")`` for token ids.
    window : the model's window, where readings are expected (a stream's chunk or step):
        an array of windows is then recognised and pointed to ``predict``.

    >>> print(shape_problem((44, 3, 1), (None, 1), window=3))  # doctest: +NORMALIZE_WHITESPACE
    expected (readings, features) = (n, 1), got (44, 3, 1) — these are 44 samples (windows)
    of 3 timesteps, shaped (samples, timesteps, features); a stream takes readings, one row
    per time step, not windows: model.predict(X) gives what Keras's model.predict(X) gives,
    or feed the stream the series the windows were cut from, shape (n, 1)
    """
    got, expected = tuple(int(d) for d in got), tuple(expected)
    if _matches(got, expected):
        return None
    names = "(" + ", ".join(axes) + ")" if axes else _names(len(expected))
    readings = window is not None
    hint = _streams_hint(got, expected) if tuple(axes or ()) == STREAMS else None
    return (f"expected {names} = {_fmt(expected)}, got {_fmt(got)}"
            f" — {hint or _hint(got, expected, feature_names, window, readings)}")


def check_shape(got: Sequence[int], expected: Sequence[int | None],
                feature_names: Sequence[str] | None = None, *, what: str = "",
                axes: Sequence[str] | None = None, window: int | None = None) -> None:
    """Raise :class:`ShapeError` with :func:`shape_problem`'s message when ``got`` does not fit."""
    problem = shape_problem(got, expected, feature_names, axes=axes, window=window)
    if problem is not None:
        raise ShapeError(f"{what}: {problem}" if what else problem)
