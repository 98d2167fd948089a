"""The argument checks every flowlib module shares, each written once.

Each check returns the value in its plain Python type, or raises
:class:`~flowlib.core.FlowInputError` with a message that names the call (``who``), the
argument and what was expected::

    n = integer(n, "couplings", "realnvp_vector")           # an int >= 1
    T = number(T, "temperature", "sample", minimum=0.0)     # a finite float >= 0

Booleans are refused where a number is expected (``True`` is an ``int`` to Python, but
``lr=True`` is a mistake, never a learning rate); NumPy integers and floats are accepted.

This module sits below every other one: it imports nothing from flowlib but the error class,
which is defined here and re-exported by :mod:`flowlib.core`.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["FlowInputError", "integer", "number", "fraction", "choice", "flag", "event_shape", "renamed",
           "inputs_checked", "checking_inputs"]


class FlowInputError(ValueError):
    """Raised when a flow, a model or a training call gets input it cannot use.

    The message always names the layer or call and what it expected.
    """


def integer(value: Any, name: str, who: str, minimum: int | None = 1) -> int:
    """``value`` as an ``int``, checked to be a whole number >= ``minimum`` (None: no bound).

    >>> integer(3, "layers", "mlp")
    3
    >>> integer(0, "layers", "mlp")
    Traceback (most recent call last):
    ...
    flowlib._checks.FlowInputError: mlp: layers must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = "" if minimum is None else f" >= {minimum}"
        raise FlowInputError(f"{who}: {name} must be an integer{bound}, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise FlowInputError(f"{who}: {name} must be an integer >= {minimum}, got {value}")
    return value


def number(value: Any, name: str, who: str, *, minimum: float | None = None,
           maximum: float | None = None, strict: bool = False, finite: bool = True) -> float:
    """``value`` as a ``float`` in [minimum, maximum] (open ends with ``strict=True``).

    ``finite=False`` lets +-inf through (NaN never passes).

    >>> number(0.5, "lr", "fit", minimum=0.0, strict=True)
    0.5
    >>> number(True, "lr", "fit")
    Traceback (most recent call last):
    ...
    flowlib._checks.FlowInputError: fit: lr must be a real number, got True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FlowInputError(f"{who}: {name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise FlowInputError(f"{who}: {name} must be a finite number, got {value}")
    low_bad = minimum is not None and (value <= minimum if strict else value < minimum)
    high_bad = maximum is not None and (value >= maximum if strict else value > maximum)
    if low_bad or high_bad:
        lo = "" if minimum is None else (f"> {minimum}" if strict else f">= {minimum}")
        hi = "" if maximum is None else (f"< {maximum}" if strict else f"<= {maximum}")
        raise FlowInputError(f"{who}: {name} must be a number {' and '.join(b for b in (lo, hi) if b)}, "
                             f"got {value}")
    return value


def fraction(value: Any, name: str, who: str) -> float:
    """A number in [0, 1] (a position along a path, a share of the data)."""
    return number(value, name, who, minimum=0.0, maximum=1.0)


def choice(value: Any, name: str, choices: Sequence[Any], who: str) -> Any:
    """``value`` if it is one of ``choices``.

    >>> choice("cosine", "schedule", ("cosine", "constant"), "fit")
    'cosine'
    """
    # ``in`` alone would accept True for 1 and 1.0 for 1: compare types too.
    if not any(value == c and type(value) is type(c) for c in choices):
        shown = ", ".join(repr(c) for c in choices)
        raise FlowInputError(f"{who}: {name} must be one of {shown}, got {value!r}")
    return value


def flag(value: Any, name: str, who: str) -> bool:
    """A real ``bool`` (``1`` or ``"yes"`` are refused: they usually mean a misplaced argument)."""
    if not isinstance(value, bool):
        raise FlowInputError(f"{who}: {name} must be True or False, got {value!r}")
    return value


def event_shape(shape: Any, who: str) -> tuple[int, ...]:
    """An event shape: an int ``d`` (vectors) or a non-empty sequence of sizes >= 1."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        sizes = tuple(shape)
    except TypeError:
        raise FlowInputError(f"{who}: expected an event shape (an int or a tuple of sizes), "
                             f"got {shape!r}") from None
    if not sizes or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        raise FlowInputError(f"{who}: expected a non-empty event shape of positive sizes, got {shape!r}")
    return tuple(int(s) for s in sizes)


# -- renamed keywords -----------------------------------------------------------------------
def renamed(old: dict[str, Any], names: dict[str, str | None], who: str,
            stacklevel: int = 3) -> dict[str, Any]:
    """The deprecated keywords ``old`` (a function's ``**kwargs``) as ``{new name: value}``.

    ``names`` maps each old keyword to its new spelling, or to ``None`` for one that is now
    ignored. Each use warns with a :class:`DeprecationWarning` that names the new spelling
    (``stacklevel=3``: the warning points at the caller of the function that calls this). A
    keyword in neither list is a ``TypeError``, as Python gives for an unknown keyword.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     renamed({"bins": 17}, {"bins": "grey_levels"}, "nice_image")
    {'grey_levels': 17}
    """
    new: dict[str, Any] = {}
    for key, value in old.items():
        if key not in names:
            raise TypeError(f"{who}() got an unexpected keyword argument {key!r}")
        spelling = names[key]
        if spelling is None:
            warnings.warn(f"{who}: the keyword {key}= is deprecated and ignored", DeprecationWarning,
                          stacklevel=stacklevel)
            continue
        warnings.warn(f"{who}: the keyword {key}= is deprecated, use {spelling}= (the same meaning)",
                      DeprecationWarning, stacklevel=stacklevel)
        new[spelling] = value
    return new


# -- data the caller has already checked ----------------------------------------------------
# A context variable, not a flag on the model: code that checked its data once (fit, at its
# door) can skip the per-call checks without changing any model, and other threads are unaffected.
_INPUTS_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("flowlib_inputs_checked",
                                                                       default=False)


@contextmanager
def inputs_checked() -> Iterator[None]:
    """Inside this block models skip the data checks at their door (as ``validate=False`` would).

    For code that has checked its data once already: the checks read the values (finiteness,
    grey levels), which on a GPU synchronises at every call. No model is changed; the block
    holds for this thread (or task) only.

    >>> checking_inputs()
    True
    >>> with inputs_checked():
    ...     checking_inputs()
    False
    """
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def checking_inputs() -> bool:
    """False inside :func:`inputs_checked`: what a model's ``validate`` flag is and-ed with."""
    return not _INPUTS_CHECKED.get()
