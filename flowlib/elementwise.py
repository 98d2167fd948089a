"""Elementwise monotone maps: the flows of the 1D lecture.

Each acts on every coordinate separately, so its Jacobian is diagonal and
log|det dz/dx| = sum_i log|f'(x_i)|.

Some monotone maps have no closed-form inverse; :func:`solve_monotone` inverts any
increasing scalar function on a known bracket (safeguarded Newton: a Newton step when it
stays inside the bracket, a bisection step otherwise), elementwise over a whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import integer
from flowlib.core import Flow, sum_except_batch

__all__ = ["Affine", "SinhArcsinh", "MixtureLogisticCDF", "solve_monotone"]


class Affine(Flow):
    """z = exp(log_scale) * x + shift, per coordinate; log|dz/dx| = sum log_scale.

    The simplest flow: with a standard-normal base it is a Gaussian with mean
    -shift/scale and standard deviation 1/scale.

    >>> layer = Affine(1)
    >>> _ = layer.log_scale.data.fill_(0.6931472)     # log 2: z = 2 x
    >>> z, logdet = layer(torch.tensor([[1.5]]))
    >>> round(z.item(), 4), round(logdet.item(), 4)
    (3.0, 0.6931)
    """

    def __init__(self, dim: int = 1) -> None:
        dim = integer(dim, "dim", "Affine")
        super().__init__((dim,))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        z = x * torch.exp(self.log_scale) + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x = (z - self.shift) * torch.exp(-self.log_scale)
        return x, (-self.log_scale.sum()).expand(z.shape[0])


class SinhArcsinh(Flow):
    """The sinh-arcsinh map (Jones & Pewsey 2009, "Sinh-arcsinh distributions", Biometrika 96(4)).

    Skew and tail weight in one monotone map:

    z = sinh(delta * asinh(x) - epsilon),     delta = exp(log_delta) > 0
    dz/dx = delta * cosh(delta * asinh(x) - epsilon) / sqrt(1 + x^2)
    x = sinh((asinh(z) + epsilon) / delta)

    epsilon moves mass to one side (skew); delta < 1 gives heavier tails to p_X when the
    base is Gaussian, delta > 1 lighter ones.

    >>> layer = SinhArcsinh(1)                 # epsilon = 0, delta = 1: the identity
    >>> x = torch.tensor([[-2.0], [0.5]])
    >>> z, logdet = layer(x)
    >>> torch.allclose(z, x, atol=1e-6), torch.allclose(logdet, torch.zeros(2), atol=1e-6)
    (True, True)
    """

    def __init__(self, dim: int = 1) -> None:
        dim = integer(dim, "dim", "SinhArcsinh")
        super().__init__((dim,))
        self.epsilon = nn.Parameter(torch.zeros(dim))
        self.log_delta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        delta = torch.exp(self.log_delta)
        a = delta * torch.asinh(x) - self.epsilon
        z = torch.sinh(a)
        # log cosh(a) = |a| + log1p(exp(-2|a|)) - log 2 stays finite for large |a|.
        log_cosh = a.abs() + torch.log1p(torch.exp(-2 * a.abs())) - 0.6931471805599453
        log_dzdx = self.log_delta + log_cosh - 0.5 * torch.log1p(x * x)
        return z, sum_except_batch(log_dzdx)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x, logdet = self._inverse(z)
        return x, logdet

    def _inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        delta = torch.exp(self.log_delta)
        b = (torch.asinh(z) + self.epsilon) / delta
        x = torch.sinh(b)
        log_cosh = b.abs() + torch.log1p(torch.exp(-2 * b.abs())) - 0.6931471805599453
        log_dxdz = -self.log_delta + log_cosh - 0.5 * torch.log1p(z * z)
        return x, sum_except_batch(log_dxdz)


def solve_monotone(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    lo: Tensor,
    hi: Tensor,
    init: Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 100,
) -> Tensor:
    """Solve g(a) = 0 elementwise for an increasing g, given lo <= root <= hi.

    ``fn(a)`` returns ``(g(a), g'(a))``. Each iteration takes the Newton step
    a - g(a)/g'(a) where it lands inside the current bracket and bisects otherwise, then
    shrinks the bracket with the sign of g: so it converges like Newton near the root and
    can never diverge (Press et al., Numerical Recipes, "rtsafe").

    The iterations run without autograd. The returned root then gets ONE more Newton step
    with autograd on: since g(a*) = 0, its derivative is exactly the implicit-function
    derivative da*/dtheta = -(dg/dtheta) / g'(a*), so gradients flow to the inputs and the
    parameters as if the inverse had a closed form.

    On a CPU the loop stops once every step is below ``tol * (1 + |a|)``; on other devices it
    runs all ``max_iter`` iterations, because checking convergence would read the tensor and
    stall the GPU pipeline (cheap: each iteration is a few elementwise kernels).
    """
    with torch.no_grad():
        lo, hi = torch.broadcast_tensors(lo.detach(), hi.detach())
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        a = 0.5 * (lo + hi) if init is None else torch.minimum(torch.maximum(init.detach(), lo), hi)
        # Below a few ulps the Newton steps only jitter; do not ask for more than the dtype holds.
        tol = max(tol, 8 * torch.finfo(a.dtype).eps)
        check = a.device.type == "cpu"
        # The step before last, as in rtsafe: a Newton step is only taken when it lands
        # strictly inside the bracket AND shrinks at least twice as fast as that step.
        # Accepting any in-bracket step (even one on an endpoint) lets the iterate bounce
        # between the two ends forever without shrinking the bracket.
        step_old = hi - lo
        step = step_old
        for _ in range(max_iter):
            g, dg = fn(a)
            lo = torch.where(g < 0, a, lo)
            hi = torch.where(g > 0, a, hi)
            newton = a - g / dg
            ok = (
                (newton > lo) & (newton < hi) & torch.isfinite(newton)
                & ((2 * g).abs() <= (step_old * dg).abs())
            )
            a_new = torch.where(ok, newton, 0.5 * (lo + hi))
            step_old, step = step, (a_new - a).abs()
            scale = tol * (1 + a_new.abs())
            done = check and bool(((step <= scale) | (hi - lo <= scale)).all())
            a = a_new
            if done:
                break
    g, dg = fn(a)
    return a - g / dg


class MixtureLogisticCDF(Flow):
    """z = logit(F(x)), F(x) = sum_k pi_k sigmoid((x - mu_k) / s_k): a map from R onto R.

    The CDF of a mixture of K logistics is increasing, and the logit turns its (0, 1) range
    back into the real line, so the layer is a flexible monotone map of each coordinate
    (the elementwise core of Flow++, Ho et al., 2019). With u_k = (x - mu_k)/s_k,

        log F     = logsumexp_k(log pi_k + logsigmoid(u_k))
        log(1-F)  = logsumexp_k(log pi_k + logsigmoid(-u_k))
        z         = log F - log(1 - F)
        log dz/dx = logsumexp_k(log pi_k + logsigmoid(u_k) + logsigmoid(-u_k) - log s_k)
                    - log F - log(1 - F)

    all in log space, so nothing under- or overflows far in the tails (there z grows
    linearly, like the outermost component's u_k).

    The INVERSE has no closed form: :meth:`inverse` solves z(x) = z per element with
    :func:`solve_monotone` to about 1e-6 (float32) on the exact bracket
    min_k(mu_k + s_k z) <= x <= max_k(mu_k + s_k z), which holds because F lies between
    the smallest and the largest of the component CDFs. Hence ``numerical_inverse = True``.
    Parameters, per coordinate and component: mixture logits, locations mu, log scales.

    >>> layer = MixtureLogisticCDF(2, components=3)
    >>> x = torch.tensor([[-5.0, 0.3], [2.0, 6.0]])
    >>> z, logdet = layer(x)
    >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-4)   # the numerical inverse, tails included
    True
    """

    numerical_inverse: ClassVar[bool] = True

    def __init__(self, dim: int = 1, components: int = 4) -> None:
        dim = integer(dim, "dim", "MixtureLogisticCDF")
        k = integer(components, "components", "MixtureLogisticCDF")
        super().__init__((dim,))
        self.components = k
        self.logits = nn.Parameter(torch.zeros(dim, k))
        # Spread the components over [-1, 1] so that they do not all start in one place.
        self.loc = nn.Parameter(torch.linspace(-1.0, 1.0, k).repeat(dim, 1) if k > 1 else torch.zeros(dim, 1))
        self.log_scale = nn.Parameter(torch.zeros(dim, k))

    def _logs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log F(x), log(1 - F(x)), log F'(x), each shaped like x."""
        log_pi = F.log_softmax(self.logits, dim=-1)
        u = (x.unsqueeze(-1) - self.loc) * torch.exp(-self.log_scale)
        ls_pos, ls_neg = F.logsigmoid(u), F.logsigmoid(-u)
        log_cdf = torch.logsumexp(log_pi + ls_pos, dim=-1)
        log_sf = torch.logsumexp(log_pi + ls_neg, dim=-1)
        log_pdf = torch.logsumexp(log_pi + ls_pos + ls_neg - self.log_scale, dim=-1)
        return log_cdf, log_sf, log_pdf

    def _map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_cdf, log_sf, log_pdf = self._logs(x)
        return log_cdf - log_sf, log_pdf - log_cdf - log_sf

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        z, log_dzdx = self._map(x)
        return z, sum_except_batch(log_dzdx)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        ends = self.loc + torch.exp(self.log_scale) * z.unsqueeze(-1)
        lo, hi = ends.min(dim=-1).values, ends.max(dim=-1).values
        guess = (F.softmax(self.logits, dim=-1) * ends).sum(dim=-1)

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            zx, log_dzdx = self._map(x)
            return zx - z, torch.exp(log_dzdx)

        x = solve_monotone(g, lo, hi, init=guess, tol=1e-7)
        _, log_dzdx = self._map(x)
        return x, -sum_except_batch(log_dzdx)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, components={self.components}"
