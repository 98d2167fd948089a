"""flowlib.grading: the tools the exercises are checked with must catch what they claim to catch."""

from __future__ import annotations

import pytest
import torch

from flowlib import grading
from flowlib.coupling import AffineCoupling
from flowlib.multiscale import squeeze
from flowlib.nets import MLP


def test_hint_turns_errors_into_the_written_hint() -> None:
    with pytest.raises(AssertionError, match=r"^use the batch axis\n\(your code raised RuntimeError"):
        with grading.hint("use the batch axis"):
            torch.zeros(2, 3) @ torch.zeros(2, 3)
    with pytest.raises(NotImplementedError):  # the stub of an unsolved exercise stays itself
        with grading.hint("never shown"):
            raise NotImplementedError
    with pytest.raises(AssertionError, match="^own message$"):
        with grading.hint("never shown"):
            raise AssertionError("own message")


def test_check_close_names_the_shape_the_entry_and_non_finite_values() -> None:
    expected = torch.arange(6.0).reshape(2, 3)
    grading.check_close(expected.clone(), expected, "fine")
    with pytest.raises(AssertionError, match=r"expected shape \(2, 3\), got \(6,\)"):
        grading.check_close(expected.flatten(), expected, "shape")
    with pytest.raises(AssertionError, match="expected a torch.Tensor"):
        grading.check_close([0, 1], expected, "type")
    wrong = expected.clone()
    wrong[1, 2] = 9.0
    with pytest.raises(AssertionError, match=r"entry \(1, 2\): you return 9, expected 5; 1 of 6"):
        grading.check_close(wrong, expected, "value")
    wrong[0, 1] = float("nan")
    with pytest.raises(AssertionError, match=r"entry \(0, 1\) is nan"):
        grading.check_close(wrong, expected, "nan")


def test_check_choice() -> None:
    assert grading.check_choice(" B ", ["a", "b"], "pick") == "b"
    with pytest.raises(AssertionError, match=r"one of \['a', 'b'\], got 'c'"):
        grading.check_choice("c", ["a", "b"], "pick")


def test_autograd_logabsdet_matches_a_known_jacobian() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    got = grading.autograd_logabsdet(lambda v: torch.tanh(v) @ a.T, x)
    # d/dx of A tanh(x): A diag(1 - tanh^2 x)
    expected = torch.linalg.slogdet(a)[1] + torch.log1p(-torch.tanh(x) ** 2).sum(1)
    assert torch.allclose(got, expected, atol=1e-10)
    images = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)  # an image is one point too
    assert torch.allclose(grading.autograd_logabsdet(lambda v: 3 * v, images),
                          torch.full((2,), 4 * torch.log(torch.tensor(3.0)), dtype=torch.float64))
    with pytest.raises(grading.FlowInputError, match="autograd_logabsdet"):
        grading.autograd_logabsdet(lambda v: v, torch.zeros(3))


def test_check_vectorised_catches_a_loop_over_points() -> None:
    def vectorised(x: torch.Tensor) -> torch.Tensor:
        return (x**2).sum(1)

    def looped(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(row**2).sum() for row in x])

    def make(n: int) -> tuple[torch.Tensor]:
        return (torch.randn(n, 4),)

    grading.check_vectorised(vectorised, make, "fine")
    with pytest.raises(AssertionError, match="Python loop over the points"):
        grading.check_vectorised(looped, make, "loop")


def test_own_work_sees_flowlib_calls_at_any_depth() -> None:
    x = torch.randn(2, 4, 4, 4)

    def by_hand(v: torch.Tensor) -> torch.Tensor:
        n, c, h, w = v.shape
        v = v.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return v.reshape(n, 4 * c, h // 2, w // 2)

    def wrapped(v: torch.Tensor) -> torch.Tensor:
        return (lambda u: squeeze(u))(v)

    grading.check_own_work(by_hand, x)
    assert any(name.startswith("flowlib.multiscale.") for name in grading.calls_into_flowlib(wrapped, x))
    with pytest.raises(AssertionError, match="flowlib's own flowlib.multiscale"):
        grading.check_own_work(wrapped, x, message="write it yourself")
    layer = AffineCoupling(torch.tensor([1.0, 0.0]), MLP(1, 2, hidden=8))
    with pytest.raises(AssertionError, match="flowlib.coupling"):
        grading.check_own_work(layer, torch.randn(3, 2), allowed=("flowlib.nets",))
    grading.check_own_work(layer.conditioner, torch.randn(3, 1), allowed=("flowlib.nets",))


def test_yours_or_reference_uses_the_student_function_once_it_exists(capsys: pytest.CaptureFixture) -> None:
    def unsolved(x: int) -> int:
        raise NotImplementedError

    use = grading.yours_or_reference(unsolved, lambda x: -x, "Exercise 9")
    assert use(2) == -2 and use(3) == -3
    assert capsys.readouterr().out.count("Exercise 9 is not done yet") == 1
    wrong = grading.yours_or_reference(lambda x: x + 1, lambda x: -x, "Exercise 9")
    assert wrong(2) == 3  # a wrong answer is used as it is: it shows later, in the figures
    assert capsys.readouterr().out == ""
    with pytest.raises(grading.FlowInputError, match="yours_or_reference"):
        grading.yours_or_reference(3, abs, "x")
