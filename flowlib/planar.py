"""Planar and radial flows (Rezende & Mohamed, 2015), defined in the generative direction.

Both were introduced as maps z -> x that are cheap to apply and whose log-determinant
is cheap (a rank-one or radial update of the identity), which is all reverse-KL training
(variational inference, fitting an energy) needs: draw z, push it to x, score it. In
flowlib's contract this generative map is therefore :meth:`inverse`.

The density direction x -> z (:meth:`forward`, needed by ``log_prob`` of data) has no
closed form for the planar flow: it is solved numerically, exactly up to ~1e-7, by a
scalar safeguarded Newton iteration. The radial flow's inverse reduces to a quadratic
equation and is solved in closed form.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import integer
from flowlib.core import Flow, FlowInputError
from flowlib.elementwise import solve_monotone

__all__ = ["Planar", "Radial"]


class Planar(Flow):
    """The planar flow x = z + u_hat * tanh(w . z + b) (Rezende & Mohamed, 2015).

    It bends space along the single direction w, moving points along u_hat. By the matrix
    determinant lemma its Jacobian I + u_hat h'(w.z + b) w^T has

        log|det dx/dz| = log|1 + (w . u_hat) h'(w . z + b)|,   h = tanh, 0 < h' <= 1.

    Generative direction: :meth:`inverse` (z -> x) is this closed form.

    Invertibility: projecting on w gives w.x = a + (w.u_hat) tanh(a + b) with a = w.z,
    which is increasing in a, hence the map a bijection, when w.u_hat >= -1. The paper
    enforces it by using, instead of the raw parameter u,

        u_hat = u + (m(w.u) - w.u) w / ||w||^2,    m(s) = -1 + softplus(s) > -1,

    so w.u_hat = m(w.u) > -1 for every value of the parameters (the default). The
    log-determinant uses w.u_hat = m(w.u) itself, exact for every w != 0 however small; at
    w = 0 the map is a translation, u_hat = u and the log-determinant is exactly 0.
    ``Planar(dim, enforce_invertibility=False)`` uses u itself, for teaching: then
    :meth:`is_invertible` / :meth:`invertibility_report` tell whether w.u >= -1 holds,
    :meth:`forward` raises FlowInputError when it does not, and :meth:`inverse` warns
    (the map is still defined, but it folds space and log p_Z - logdet is not a density).

    Density direction: :meth:`forward` (x -> z) has NO closed form (``numerical_forward
    = True``). It solves the scalar equation w.x = a + (w.u_hat) tanh(a + b) for a on the
    exact bracket |a - w.x| <= |w.u_hat| with :func:`flowlib.elementwise.solve_monotone`
    (Newton safeguarded by bisection, to ~1e-7 relative), then z = x - u_hat tanh(a + b).
    Gradients pass through the solution by the implicit function theorem.

    >>> layer = Planar(2)
    >>> _ = [p.data.normal_() for p in layer.parameters()]     # any parameters: still invertible
    >>> z = torch.randn(4, 2)
    >>> x, logdet = layer.inverse(z)           # generative direction, closed form
    >>> z_back, logdet_back = layer(x)         # density direction, solved numerically
    >>> torch.allclose(z_back, z, atol=1e-5), torch.allclose(logdet_back, -logdet, atol=1e-5)
    (True, True)
    """

    numerical_forward: ClassVar[bool] = True

    def __init__(self, dim: int, enforce_invertibility: bool = True) -> None:
        dim = integer(dim, "dim", "Planar")
        super().__init__((dim,))
        self.enforce_invertibility = bool(enforce_invertibility)
        # ||w|| ~ 1 and u small: at initialisation the map is a mild contraction along w.
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.u = nn.Parameter(0.1 * torch.randn(dim) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> Tensor:
        """The vector actually used: the reparameterised u (or u itself in raw mode)."""
        return self._coefficients()[0]

    def _coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        """u_hat, c = w . u_hat and 1 + c, the latter computed without cancellation.

        With the reparameterisation, c = w.u_hat is m(w.u) = softplus(w.u) - 1 exactly for
        every w != 0, so it is returned as that (1 + c = softplus(w.u), which stays accurate
        and > 0 even when c rounds to -1), never recomputed from u_hat. Then
        1 + c h' = (1 - h') + (1 + c) h' is a sum of non-negative terms, so the
        log-determinant never becomes log(0) by rounding.

        At w = 0 the formula for u_hat is 0/0; the map there is x = z + u tanh(b), a
        translation, so u_hat = u and c = 0 exactly (logdet 0). (The paper's u_hat is not
        continuous at w = 0: its correction has norm |m(w.u) - w.u| / ||w||, which grows
        without bound as w -> 0; for every w != 0 it is computed exactly, with no epsilon in
        the denominator, as (w / ||w||) / ||w|| after scaling w by its largest entry, so that
        ||w||^2 cannot underflow. In float32 u_hat itself overflows only once ||w|| < 1e-38.)
        """
        wu = torch.dot(self.w, self.u)
        if not self.enforce_invertibility:
            return self.u, wu, 1 + wu
        scale = self.w.detach().abs().max()
        nonzero = scale > 0
        # The double torch.where: the w = 0 branch never sees a division by 0, in value or gradient.
        w_scaled = self.w / torch.where(nonzero, scale, torch.ones_like(scale))
        norm_scaled = torch.linalg.vector_norm(w_scaled)
        safe = torch.where(nonzero, norm_scaled, torch.ones_like(norm_scaled))
        w_over_norm2 = (w_scaled / safe) / (safe * torch.where(nonzero, scale, torch.ones_like(scale)))
        softplus = F.softplus(wu)
        u_hat = self.u + torch.where(nonzero, softplus - 1 - wu, torch.zeros_like(wu)) * w_over_norm2
        one_plus_c = torch.where(nonzero, softplus, torch.ones_like(softplus))
        return u_hat, one_plus_c - 1, one_plus_c

    def w_dot_u_hat(self) -> float:
        """w . u_hat as a Python float (the quantity of the invertibility condition)."""
        with torch.no_grad():
            return float(torch.dot(self.w, self.u_hat()))

    def is_invertible(self) -> bool:
        """True when w . u_hat >= -1, the paper's sufficient condition for a bijection.

        Always true with ``enforce_invertibility=True`` (w.u_hat = -1 + softplus(w.u) > -1,
        even where rounding makes the float equal to -1). Reads the parameters (a GPU sync),
        so it is checked inside :meth:`forward` only in raw mode.
        """
        return self.enforce_invertibility or self.w_dot_u_hat() >= -1.0

    def invertibility_report(self) -> str:
        """A sentence saying whether the map is invertible, which condition holds or fails, by how much."""
        c = self.w_dot_u_hat()
        name = "w.u_hat" if self.enforce_invertibility else "w.u"
        if self.is_invertible():
            how = ("enforced by the reparameterisation u_hat = u + (m(w.u) - w.u) w/||w||^2"
                   if self.enforce_invertibility else "raw parameters, not enforced")
            return (f"Planar: invertible: {name} = {c:.4g} >= -1 (margin {c + 1:.4g}; {how}); "
                    f"x -> z is increasing along w.")
        return (f"Planar: NOT invertible: {name} = {c:.4g} < -1 (violated by {-1 - c:.4g}). "
                f"Along w the map a -> a + ({c:.4g}) tanh(a + b) decreases near a = -b, so it folds "
                f"space: some x have several preimages and log p_Z(z) - log|det| is not a density. "
                f"Use Planar(dim, enforce_invertibility=True).")

    def _check_invertible(self, direction: str) -> None:
        # Only in raw (teaching) mode: with the reparameterisation it holds by construction
        # and we avoid reading parameters on every call.
        if self.enforce_invertibility or self.is_invertible():
            return
        msg = self.invertibility_report()
        if direction == "forward":
            raise FlowInputError(
                f"Planar.forward: the inverse x -> z does not exist because the condition "
                f"w.u >= -1 fails. {msg}"
            )
        warnings.warn(f"Planar.inverse: {msg}", RuntimeWarning, stacklevel=3)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The generative map x = z + u_hat tanh(w.z + b), log|det dx/dz| (closed form)."""
        self.check_input(z, "inverse")
        self._check_invertible("inverse")
        u_hat, _, one_plus_c = self._coefficients()
        h = torch.tanh(z @ self.w + self.b)
        x = z + h.unsqueeze(1) * u_hat
        # 1 + c h'(.) with h' = 1 - h^2, written as h^2 + (1 + c) h' (see _coefficients).
        logdet = torch.log(torch.abs(h * h + one_plus_c * (1 - h * h)))
        return x, logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The density map z = f^{-1}(x), solved numerically (see the class docstring)."""
        self.check_input(x, "forward")
        self._check_invertible("forward")
        u_hat, c, one_plus_c = self._coefficients()
        y = x @ self.w

        def g(a: Tensor) -> tuple[Tensor, Tensor]:
            h = torch.tanh(a + self.b)
            return a + c * h - y, h * h + one_plus_c * (1 - h * h)

        # |tanh| <= 1, so the solution a lies within |c| of y: an exact bracket.
        spread = c.detach().abs()
        guess = y - c * torch.tanh(y + self.b)
        a = solve_monotone(g, y - spread, y + spread, init=guess, tol=1e-7)
        h = torch.tanh(a + self.b)
        z = x - h.unsqueeze(1) * u_hat
        logdet = -torch.log(torch.abs(h * h + one_plus_c * (1 - h * h)))
        return z, logdet

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, enforce_invertibility={self.enforce_invertibility}"


class Radial(Flow):
    """The radial flow x = z + beta h(alpha, r) (z - z0), r = ||z - z0||, h = 1/(alpha + r).

    It contracts (beta < 0) or expands (beta > 0) space around the point z0 (Rezende &
    Mohamed, 2015). With d the dimension and h' = -1/(alpha + r)^2,

        log|det dx/dz| = (d - 1) log(1 + beta h) + log(1 + beta h + beta h' r)
                       = (d - 1) log(1 + beta h) + log(1 + alpha beta h^2).

    Generative direction: :meth:`inverse` (z -> x) is this closed form. It is a bijection
    when beta >= -alpha, enforced by alpha = softplus(alpha_raw) > 0 and
    beta = -alpha + softplus(beta_raw).

    Density direction: :meth:`forward` (x -> z). Taking norms, rho = ||x - z0|| =
    r (1 + beta / (alpha + r)), i.e. r^2 + (alpha + beta - rho) r - alpha rho = 0: a
    quadratic with exactly one root r >= 0 (the product of the roots is -alpha rho <= 0),
    computed in the cancellation-free form; then z - z0 = (x - z0) / (1 + beta h(r)).
    So, unlike the planar flow, this direction is closed form (``numerical_forward =
    False``) although the flow was defined generatively.

    >>> layer = Radial(2)
    >>> _ = [p.data.normal_() for p in layer.parameters()]
    >>> z = torch.randn(4, 2)
    >>> x, logdet = layer.inverse(z)
    >>> z_back, logdet_back = layer(x)         # closed form in this direction too
    >>> torch.allclose(z_back, z, atol=1e-5), torch.allclose(logdet_back, -logdet, atol=1e-5)
    (True, True)
    """

    numerical_forward: ClassVar[bool] = False

    def __init__(self, dim: int) -> None:
        dim = integer(dim, "dim", "Radial")
        super().__init__((dim,))
        self.z0 = nn.Parameter(torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(0.1 * torch.randn(()))

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """alpha > 0 and beta > -alpha from the raw parameters."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def is_invertible(self) -> bool:
        """Always True: beta > -alpha holds by the parameterisation."""
        return True

    def invertibility_report(self) -> str:
        with torch.no_grad():
            alpha, beta = (float(t) for t in self.alpha_beta())
        return (f"Radial: invertible: beta = {beta:.4g} >= -alpha = {-alpha:.4g} "
                f"(margin {beta + alpha:.4g}; enforced by beta = -alpha + softplus(beta_raw)).")

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1.0 / (alpha + r)
        d = self.event_shape[0]
        return (d - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The generative map x = z + beta h(alpha, r)(z - z0), log|det dx/dz| (closed form)."""
        self.check_input(z, "inverse")
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = torch.linalg.vector_norm(diff, dim=1)
        x = z + (beta / (alpha + r)).unsqueeze(1) * diff
        return x, self._logdet(r, alpha, beta)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The density map z = f^{-1}(x): the positive root of a quadratic in r = ||z - z0||."""
        self.check_input(x, "forward")
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        rho = torch.linalg.vector_norm(diff, dim=1)
        p = alpha + beta - rho
        root = torch.sqrt(p * p + 4 * alpha * rho)
        # r = (-p + root)/2 cancels when p > 0; there use the equal form 2 alpha rho/(p + root).
        # Both denominators are > 0 where they are selected (alpha + beta > 0).
        r = torch.where(p > 0, 2 * alpha * rho / (p + root).clamp_min(torch.finfo(x.dtype).tiny),
                        0.5 * (root - p))
        z = self.z0 + diff / (1 + beta / (alpha + r)).unsqueeze(1)
        return z, -self._logdet(r, alpha, beta)
