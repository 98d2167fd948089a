"""What the graded exercises of the course are checked with, and how a student's answer is used later.

The lectures' test cells follow four rules, and this module is the one place that keeps them:

* **A hint, never a raw error.** A wrong answer often fails before any ``assert`` is reached
  (a shape mismatch, a ``NaN``). Inside ``with hint("..."):`` any such error becomes an
  ``AssertionError`` that says the written hint first and what was raised after it.
* **Checked against autograd or hand values**, not against flowlib's own layer:
  :func:`autograd_logabsdet` differentiates the student's map itself.
* **Written, not called.** :func:`calls_into_flowlib` lists the flowlib functions a call
  reached, so a test can refuse an answer that only calls the library's implementation.
* **Vectorised when the text says so.** :func:`torch_calls` counts the torch operations a call
  makes; a loop over the batch makes that count grow with the batch (:func:`check_vectorised`).

And one rule for the rest of the lecture: **the student's function is used later**, so a wrong
answer shows in a figure too. ``yours_or_reference(student_fn, flowlib_fn, "Exercise 2")``
returns a function that calls the student's; while that still raises ``NotImplementedError``
(the exercise is not done yet) it says so once and uses flowlib's reference instead.

>>> double = yours_or_reference(lambda x: 2 * x, lambda x: x + x, "Exercise 0")
>>> double(3)
6
>>> with hint("return one value per point"):
...     torch.zeros(3) @ torch.zeros(2)
Traceback (most recent call last):
AssertionError: return one value per point
(your code raised RuntimeError: inconsistent tensor size, ...)
"""

from __future__ import annotations

import math  # noqa: F401 - used by the doctest
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from flowlib._checks import FlowInputError

__all__ = ["hint", "check_close", "check_choice", "autograd_logabsdet", "torch_calls", "check_vectorised",
           "calls_into_flowlib", "check_own_work", "yours_or_reference"]

_PACKAGE = Path(__file__).resolve().parent


@contextmanager
def hint(message: str) -> Iterator[None]:
    """Turn any error raised inside into an ``AssertionError`` that starts with ``message``.

    ``NotImplementedError`` (the stub of an unsolved exercise) passes through unchanged, and so
    does an ``AssertionError`` (a check that already says what is wrong).
    """
    try:
        yield
    except (NotImplementedError, AssertionError):
        raise
    except Exception as error:  # noqa: BLE001 - every error of the student's code becomes the hint
        raise AssertionError(f"{message}\n(your code raised {type(error).__name__}: {error})") from None


def check_close(mine: object, expected: Tensor, message: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Assert that ``mine`` is a tensor of ``expected``'s shape, finite where it is, and close to it.

    The failure names the first entry that is off, with both values, then ``message``.
    """
    if not isinstance(mine, Tensor):
        raise AssertionError(f"{message}\n(expected a torch.Tensor of shape {tuple(expected.shape)}, "
                             f"got {type(mine).__name__})")
    if mine.shape != expected.shape:
        raise AssertionError(f"{message}\n(expected shape {tuple(expected.shape)}, got {tuple(mine.shape)})")
    mine = mine.detach().to(expected.dtype)
    expected = expected.detach()
    bad_finite = torch.isfinite(expected) & ~torch.isfinite(mine)
    if bool(bad_finite.any()):
        where = tuple(int(i) for i in bad_finite.nonzero()[0])
        raise AssertionError(f"{message}\n(entry {where} is {float(mine[where])}, "
                             f"expected {float(expected[where]):.6g})")
    off = (mine - expected).abs() > atol + rtol * expected.abs()
    if bool(off.any()):
        where = tuple(int(i) for i in off.nonzero()[0])
        raise AssertionError(f"{message}\n(entry {where}: you return {float(mine[where]):.6g}, "
                             f"expected {float(expected[where]):.6g}; "
                             f"{int(off.sum())} of {off.numel()} entries off)")


def check_choice(answer: object, options: Sequence[str], message: str) -> str:
    """The answer to a multiple-choice question, as one of ``options`` (case and spaces ignored)."""
    if not isinstance(answer, str) or answer.strip().lower() not in [o.lower() for o in options]:
        raise AssertionError(f"{message}\n(answer with one of {list(options)}, got {answer!r})")
    return answer.strip().lower()


def autograd_logabsdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log|det d fn(x_i) / d x_i| for each row ``x_i`` of ``x``, by autograd (brute force, for tests).

    ``fn`` maps a batch to a batch of the same shape; each point (a vector or an image) is
    differentiated alone, through a batch of one, so a map that mixes points is caught elsewhere
    (:func:`check_vectorised` and the batch-independence tests). Use float64 for tight checks.

    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> (autograd_logabsdet(lambda v: 2 * v, x) / math.log(2)).round()  # d = 3 times log 2
    tensor([3., 3., 3., 3.], dtype=torch.float64)
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise FlowInputError("autograd_logabsdet: expected a batch x of shape (n, ...), "
                             f"got {getattr(x, 'shape', x)!r}")
    out = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).squeeze(0), row)
        d = row.numel()
        out.append(torch.linalg.slogdet(jac.reshape(d, d))[1])
    return torch.stack(out)


class _Counter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def torch_calls(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """How many torch functions and tensor methods (``+`` included) one call ``fn(*args)`` makes."""
    with torch.no_grad(), _Counter() as counter:
        fn(*args, **kwargs)
    return counter.calls


def check_vectorised(fn: Callable[..., Any], make_args: Callable[[int], tuple], message: str,
                     sizes: tuple[int, int] = (3, 17)) -> None:
    """Assert that ``fn(*make_args(n))`` makes as many torch calls for both batch sizes ``n``.

    A Python loop over the points (or a comprehension) repeats its operations once per point,
    so its count grows with ``n``; a vectorised answer's count does not.
    """
    small, large = (torch_calls(fn, *make_args(n)) for n in sizes)
    if small != large:
        raise AssertionError(f"{message}\n(a batch of {sizes[0]} takes {small} torch operations, a batch of "
                             f"{sizes[1]} takes {large}: is there a Python loop over the points?)")


def calls_into_flowlib(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
    """The flowlib functions (``module.qualname``) that one call ``fn(*args)`` reached, at any depth,
    in the order they were first entered (so the outermost comes first).

    This module's own functions are not counted. Read with :func:`sys.setprofile`, so it sees
    Python functions only, which is all flowlib is.
    """
    reached: dict[str, None] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(_PACKAGE) and path != Path(__file__).resolve():
            module = ".".join(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
            reached.setdefault(f"{module}.{frame.f_code.co_qualname}")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return list(reached)


def check_own_work(fn: Callable[..., Any], *args: Any, allowed: Sequence[str] = (),
                   message: str = "") -> None:
    """Assert that ``fn(*args)`` does not call flowlib, except functions whose name starts with ``allowed``.

    ``allowed`` holds prefixes such as ``"flowlib.nets"`` (a conditioner the exercise hands in).
    """
    skip = (*allowed, "flowlib._checks", "flowlib._modules")
    used = [name for name in calls_into_flowlib(fn, *args) if not name.startswith(skip)]
    if used:
        raise AssertionError(f"{message or 'This exercise asks you to write it with torch operations.'}\n"
                             f"(your code calls flowlib's own {', '.join(used[:3])})")


def yours_or_reference(yours: Callable[..., Any], reference: Callable[..., Any],
                       exercise: str) -> Callable[..., Any]:
    """A function that calls ``yours``; while ``yours`` raises ``NotImplementedError``, ``reference``.

    The lectures use it where a later section builds on an exercise: the student's answer (right
    or wrong) is what that section runs, so a mistake shows in its figures. Until the exercise is
    done, the section still runs, on flowlib's reference, and says so once.
    """
    if not callable(yours) or not callable(reference):
        raise FlowInputError(f"yours_or_reference: expected two functions, got {type(yours).__name__} "
                             f"and {type(reference).__name__}")
    state = {"use": None}

    def call(*args: Any, **kwargs: Any) -> Any:
        if state["use"] is None:
            try:
                result = yours(*args, **kwargs)
            except NotImplementedError:
                print(f"{exercise} is not done yet: this part uses flowlib's reference instead of your code.")
                state["use"] = reference
                return reference(*args, **kwargs)
            state["use"] = yours
            return result
        return state["use"](*args, **kwargs)

    call.__name__ = getattr(yours, "__name__", "yours")
    call.__doc__ = getattr(yours, "__doc__", None)
    return call
