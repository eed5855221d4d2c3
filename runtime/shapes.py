"""Shape mismatches explained in the words users search for.

Most people arrive here with a model trained on windows and an array of the wrong rank.
One function, :func:`shape_problem`, says what the model reads in ``(samples, timesteps,
features)`` terms, what it got, and the one-line fix; the trainer and the runtime both
raise their shape errors through :func:`check_shape`.

>>> print(shape_problem((1000, 24), (None, 24, 1)))
expected (samples, timesteps, features) = (n, 24, 1), got (1000, 24) — add a features axis: x.reshape(1000, 24, 1)
>>> shape_problem((5, 24, 3), (None, 24, 3)) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ShapeError

# The names of the axes, by how many axes the expected shape has.
AXES = {
    3: ("samples", "timesteps", "features"),
    2: ("samples", "features"),
    1: ("features",),
}


def _fmt(shape: Sequence[int | None]) -> str:
    dims = ["n" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _names(axes: int) -> str:
    return "(" + ", ".join(AXES[axes]) + ("," if axes == 1 else "") + ")"


def _matches(got: Sequence[int], expected: Sequence[int | None]) -> bool:
    return len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))


def _hint(got: tuple[int, ...], expected: tuple[int | None, ...], feature_names) -> str:
    """The most likely fix for ``got`` against ``expected`` (same conventions as shape_problem)."""
    want_feat = expected[-1]
    named = f" ({', '.join(feature_names)})" if feature_names else ""
    if len(got) == len(expected) - 1:
        # (n, 24) for (n, 24, 1): the features axis of a univariate series is missing.
        if want_feat == 1 and _matches(got, expected[:-1]):
            return f"add a features axis: x.reshape({', '.join(map(str, got))}, 1)"
        # (24, 3) for (n, 24, 3): one window without its samples axis.
        if _matches(got, expected[1:]):
            return f"add a samples axis for a single one: x.reshape(1, {', '.join(map(str, got))})"
        if _matches(got, expected[:-1]):
            return (f"the features axis is missing: the model reads {want_feat} features{named} "
                    f"at every timestep")
        if len(expected) == 3 and len(got) == 2 and (want_feat is None or got[1] == want_feat):
            steps = expected[1] if expected[1] is not None else "look_back"
            return (f"these are single samples, not windows: make windows of {steps} consecutive "
                    f"samples, or feed the samples one at a time to a stream")
    if len(got) == len(expected):
        if len(got) >= 2 and _matches(got[:-2] + (got[-1], got[-2]), expected):
            axes = list(range(len(got)))
            axes[-2], axes[-1] = axes[-1], axes[-2]
            return f"the last two axes look swapped: x.transpose({', '.join(map(str, axes))})"
        if want_feat is not None and got[-1] != want_feat:
            return f"the model reads {want_feat} features{named} per timestep, got {got[-1]}"
        if len(expected) == 3 and expected[1] is not None and got[1] != expected[1]:
            return f"the model reads windows of {expected[1]} timesteps, got {got[1]}"
    if len(got) > len(expected):
        return f"x has {len(got) - len(expected)} axis too many; squeeze or reshape it"
    return f"reshape x to {_fmt(expected)}"


def shape_problem(got: Sequence[int], expected: Sequence[int | None],
                  feature_names: Sequence[str] | None = None) -> str | None:
    """Explain why an array of shape ``got`` does not fit ``expected``, or None if it does.

    Parameters
    ----------
    got : the array's shape.
    expected : the shape the model reads, one entry per axis named in ``AXES``
        (3 axes: samples, timesteps, features; 2: samples, features; 1: features);
        ``None`` where any size is fine.
    feature_names : names of the features, to say which ones the model reads.
    """
    got, expected = tuple(int(d) for d in got), tuple(expected)
    if _matches(got, expected):
        return None
    return (f"expected {_names(len(expected))} = {_fmt(expected)}, got {_fmt(got)}"
            f" — {_hint(got, expected, feature_names)}")


def check_shape(got: Sequence[int], expected: Sequence[int | None],
                feature_names: Sequence[str] | None = None, *, what: str = "") -> None:
    """Raise :class:`ShapeError` with :func:`shape_problem`'s message when ``got`` does not fit."""
    problem = shape_problem(got, expected, feature_names)
    if problem is not None:
        raise ShapeError(f"{what}: {problem}" if what else problem)
