"""From discrete pixels to a continuous density: dequantization, the logit, bits per dimension.

Images are discrete: x in {0, ..., K-1}^D (K = 256 for 8-bit images, 17 for the 8x8 digits).
A continuous density p on them is meaningless (it could put infinite density on the grid
points), so we model y = (x + u) / K in [0, 1]^D with noise u in [0, 1)^D and use

    P(x) = integral over u of p(y) K^{-D} du  >=  E_{q(u|x)}[ log p(y) - D log K - log q(u|x) ]

(Jensen). With uniform noise, q = 1 (Uria et al., 2013; Theis et al., 2016): the bound is
E_u[log p(y)] - D log K. Variational dequantization (Ho et al., 2019, Flow++) learns q(u|x)
with a conditional flow, which tightens the bound and makes the density smoother.

Bits per dimension of discrete data, the usual score of image models, is

    bpd = -log2 P(x) / D = (-log p((x + u) / K) + D log K + log q(u|x)) / (D ln 2).

A model that is uniform on [0, 1]^D (p = 1) gets exactly log2 K bits/dim: 8 for 8-bit
images, log2 17 = 4.09 for the digits. Lower is better.

RealNVP (Dinh et al., 2017) models the logit of the scaled data, because coupling flows
with a Gaussian base are at ease on the real line, not on a bounded cube:
:class:`LogitPreprocess` is that map as a flow layer, with its log-determinant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import checking_inputs, event_shape, integer, renamed
from flowlib.convnets import ResNetConditioner
from flowlib.core import Compose, Flow, FlowInputError, sum_except_batch
from flowlib.coupling import AffineCoupling, Coupling, checkerboard_mask
from flowlib.metrics import bits_per_dim
from flowlib.transformers import Affine

__all__ = [
    "as_levels",
    "dequantized_bits_per_dim",
    "Dequantization",
    "UniformDequantization",
    "VariationalDequantization",
    "LogitPreprocess",
]

_LOG_2PI = math.log(2 * math.pi)


def _grey_levels(grey_levels: int | None, deprecated: dict, who: str) -> int:
    """K from ``grey_levels`` or its deprecated spelling ``levels=``, checked to be >= 2."""
    grey_levels = renamed(deprecated, {"levels": "grey_levels"}, who, stacklevel=4).get("grey_levels",
                                                                                          grey_levels)
    if grey_levels is None:
        raise TypeError(f"{who}() missing the argument grey_levels (the number K of grey levels)")
    return integer(grey_levels, "grey_levels (the number K of grey levels)", who, minimum=2)


def as_levels(x: Tensor, grey_levels: int | None = None, where: str = "as_levels",
              **deprecated: object) -> Tensor:
    """Discrete image data as float grey levels k in {0, ..., K-1}, validated.

    Accepts the levels in any dtype: the uint8 tensors of :mod:`flowlib.data`, or the same
    cast to float (``x.float()``, which ``flowlib.train.fit`` does). Intensities already scaled
    to [0, 1] are rejected (they are not integers), except the ambiguous all-0/1 image: scale
    back with ``(x * (K - 1)).round()``. Reads the values: call it once at the model's door,
    never inside a layer.
    """
    levels = _grey_levels(grey_levels, deprecated, where)
    if not isinstance(x, Tensor):
        raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise FlowInputError(f"{where}: expected integer grey levels, got dtype {x.dtype}")
    if x.numel() == 0:
        return x.to(torch.get_default_dtype())
    in_range = bool(((x >= 0) & (x <= levels - 1)).all())
    integral = not x.is_floating_point() or bool((x == x.round()).all())
    if not (in_range and integral):
        hint = ""
        if x.is_floating_point() and bool(((x >= 0) & (x <= 1)).all()):
            hint = f"; for intensities in [0, 1] pass (x * {levels - 1}).round() instead"
        raise FlowInputError(
            f"{where}: expected integer grey levels 0..{levels - 1} (any dtype, e.g. uint8 or "
            f"x.float()), got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]"
            f"{'' if integral else ' that are not all integers'}{hint}"
        )
    return x.to(torch.get_default_dtype())


def dequantized_bits_per_dim(log_p_continuous: Tensor, dim: int, grey_levels: int | None = None,
                             log_q: Tensor | float = 0.0, **deprecated: object) -> Tensor:
    """Bits per dimension of discrete data from the density of its dequantized version.

    For x in {0..K-1}^D mapped to [0, 1]^D by y = (x + u) / K,

        bpd = (-log p_cont(y) + D log K + log q(u|x)) / (D ln 2),

    with log q = 0 for uniform noise. ``log_p_continuous`` is log p_cont(y) per sample (nats).
    The same convention as :func:`flowlib.metrics.bits_per_dim` with ``grey_levels=K``, which
    does the arithmetic.

    >>> float(dequantized_bits_per_dim(torch.tensor(0.0), 784, 256))
    8.0
    """
    grey_levels = _grey_levels(grey_levels, deprecated, "dequantized_bits_per_dim")
    return bits_per_dim(log_p_continuous - log_q, dim, grey_levels=grey_levels)


class Dequantization(nn.Module):
    """Base class: ``forward(x_levels) -> (y, log_correction)`` with y in [0, 1]^D such that

        log P(x) >= E[ log p(y) + log_correction ],      log_correction = -D log K - log q(u|x).

    ``x_levels`` holds float grey levels 0..K-1 (see :func:`as_levels`). y is a
    reparameterised sample, so gradients reach the noise model.
    """

    def __init__(self, grey_levels: int | None = None, **deprecated: object) -> None:
        super().__init__()
        self.grey_levels = _grey_levels(grey_levels, deprecated, type(self).__name__)

    @property
    def levels(self) -> int:
        """Deprecated spelling of ``grey_levels``."""
        warnings.warn(f"{type(self).__name__}.levels is deprecated, use .grey_levels", DeprecationWarning,
                      stacklevel=2)
        return self.grey_levels

    def extra_repr(self) -> str:
        return f"grey_levels={self.grey_levels}"


class UniformDequantization(Dequantization):
    """y = (x + u) / K with u ~ U[0, 1)^D: q(u|x) = 1, log_correction = -D log K.

    >>> dequantize = UniformDequantization(grey_levels=4)
    >>> y, log_correction = dequantize(torch.tensor([[0.0, 3.0]]))
    >>> bool(((y >= 0) & (y < 1)).all()), bool(y[0, 1] >= 0.75)
    (True, True)
    >>> [round(v, 4) for v in log_correction.tolist()]     # -D log K = -2 log 4
    [-2.7726]
    """

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        d = math.prod(x.shape[1:])  # not x[0].numel(): an empty batch has no x[0]
        y = (x + u) / self.grey_levels
        return y, x.new_full((x.shape[0],), -d * math.log(self.grey_levels))


class VariationalDequantization(Dequantization):
    """Learned noise u ~ q(u|x) (Ho et al., 2019, section 3.1), by a flow conditioned on x.

        eps ~ N(0, I),   v = g(eps; x) (affine couplings),   u = sigmoid(v) in (0, 1)^D
        log q(u|x) = log N(eps) - log|det dv/deps| - sum log sigmoid'(v)

    ``couplings`` affine couplings (old keyword ``steps=``). The conditioning uses the
    couplings of :mod:`flowlib.coupling` on the pair
    (eps, c), c = x scaled to [-1, 1], stacked along channels: every mask is 1 on the c
    channels, so c passes through unchanged, feeds every conditioner, and adds nothing to the
    log-determinant, which is therefore log|det dv/deps| exactly. Checkerboard masks of
    alternating parity on eps. Flow++ conditions on deep features of x; here the ResNet
    conditioners compute their own from c.

    >>> dequantize = VariationalDequantization(grey_levels=17, shape=(1, 4, 4), couplings=2, hidden=8)
    >>> x = torch.randint(0, 17, (3, 1, 4, 4)).float()
    >>> y, log_correction = dequantize(x)
    >>> bool(((y * 17 >= x) & (y * 17 < x + 1)).all()), log_correction.shape
    (True, torch.Size([3]))
    """

    def __init__(self, grey_levels: int | None = None, shape: Sequence[int] | None = None,
                 couplings: int = 4, hidden: int = 32, blocks: int = 1, **deprecated: object) -> None:
        new = renamed(deprecated, {"levels": "grey_levels", "steps": "couplings"},
                      "VariationalDequantization")
        super().__init__(new.get("grey_levels", grey_levels))
        couplings = new.get("couplings", couplings)
        shape = event_shape(shape if shape is not None else (), "VariationalDequantization")
        if len(shape) != 3:
            raise FlowInputError(f"VariationalDequantization: expected an image shape (C, H, W), "
                                 f"got {shape!r}")
        couplings = integer(couplings, "couplings", "VariationalDequantization")
        c, h, w = shape
        self.shape = shape
        layers = []
        for k in range(couplings):
            mask = torch.cat([checkerboard_mask(c, h, w, k % 2), torch.ones(c, h, w)], dim=0)
            net = ResNetConditioner(*Coupling.conditioner_sizes(mask, Affine), hidden, blocks)  # 2C -> 4C
            layers.append(AffineCoupling(mask, net))
        self.flow = Compose(layers)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.shape:
            raise FlowInputError(f"VariationalDequantization: expected levels of shape (batch, "
                                 f"{', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        c = self.shape[0]
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        log_n = -0.5 * sum_except_batch(eps * eps + _LOG_2PI)
        context = 2 * x / (self.grey_levels - 1) - 1
        h, logdet = self.flow(torch.cat([eps, context], dim=1))
        v = h[:, :c]
        u = torch.sigmoid(v)
        # log sigmoid'(v) = log sigmoid(v) + log sigmoid(-v), finite for any v.
        log_dudv = sum_except_batch(F.logsigmoid(v) + F.logsigmoid(-v))
        log_q = log_n - logdet - log_dudv
        y = (x + u) / self.grey_levels
        return y, -math.prod(x.shape[1:]) * math.log(self.grey_levels) - log_q


class LogitPreprocess(Flow):
    """y = logit(alpha + (1 - 2 alpha) x) for x in [0, 1] (Dinh et al., 2017, section 4.1).

        log|dy/dx| = sum [ log(1 - 2 alpha) - log p - log(1 - p) ],   p = alpha + (1 - 2 alpha) x
        x = (sigmoid(y) - alpha) / (1 - 2 alpha)

    RealNVP writes logit(alpha + (1 - alpha) x); we shrink symmetrically, as most
    implementations do, so that both ends stay alpha away from 0 and 1 and |y| <= log((1 - alpha)
    / alpha) (2.94 for alpha = 0.05): no infinite logit at x -> 1. Elementwise, any shape.

    The domain. The logit is finite for p in (0, 1), i.e. x in :attr:`domain` =
    (-alpha, 1 - alpha) / (1 - 2 alpha) = (-0.0556, 1.0556) for alpha = 0.05: the data's [0, 1]
    and a margin, which is exactly the image of :meth:`inverse`, so a model's own samples lie
    in it at every temperature. Two choices follow, so that no input gets a NaN without a message:

    - outside the closed domain x has no preimage (p < 0 or p > 1, the logit is NaN): ``forward``
      raises a FlowInputError naming the range found (NaN inputs too). This check reads the
      values, so it runs only where inputs are checked (:func:`flowlib._checks.checking_inputs`);
      a model's door checks once and runs its flow without it;
    - at its ends, p is clamped to [tiny, 1 - eps/2] of the dtype: the samples of high
      temperatures (T >= 2) reach them by rounding (sigmoid(y) is 1 in float32 once y > 17, and
      alpha + (1 - 2 alpha) x cancels to 0), and get the largest logit the dtype holds instead of
      +-inf, hence a finite (very low) log-density. Inside the domain, to within a few ulps of its
      ends, nothing is clamped, so values on [0, 1] are unchanged.

    >>> logit = LogitPreprocess(alpha=0.05)
    >>> x = torch.tensor([[0.0, 0.5, 1.0]])
    >>> y, logdet = logit(x)
    >>> [round(v, 4) for v in y[0].tolist()], torch.allclose(logit.inverse(y)[0], x, atol=1e-6)
    ([-2.9444, 0.0, 2.9444], True)
    """

    def __init__(self, alpha: float = 0.05) -> None:
        if not (0 < float(alpha) < 0.5):
            raise FlowInputError(f"LogitPreprocess: alpha must be in (0, 0.5), got {alpha!r}")
        super().__init__(None)
        self.alpha = float(alpha)

    @property
    def domain(self) -> tuple[float, float]:
        """(lo, hi) = (-alpha, 1 - alpha) / (1 - 2 alpha): where the logit is finite, the inverse's image."""
        a = self.alpha
        return -a / (1 - 2 * a), (1 - a) / (1 - 2 * a)

    def _p(self, x: Tensor) -> Tensor:
        return self.alpha + (1 - 2 * self.alpha) * x

    def check_domain(self, x: Tensor, where: str = "LogitPreprocess.forward") -> None:
        """Raise a FlowInputError naming ``where`` unless every value of ``x`` is in the closed domain.

        Reads the values (a GPU synchronisation): for the doors, never per training step.
        """
        slack = 16 * torch.finfo(x.dtype).eps  # the rounding of p at the domain's ends
        p = self._p(x)
        if x.numel() == 0 or bool(((p >= -slack) & (p <= 1 + slack)).all()):
            return
        nan = int(torch.isnan(x).sum())
        finite = x[~torch.isnan(x)]
        seen = f"values in [{float(finite.min()):.4g}, {float(finite.max()):.4g}]" if finite.numel() else ""
        seen += (" and " if seen and nan else "") + (f"{nan} NaN" if nan else "")
        lo, hi = self.domain
        raise FlowInputError(
            f"{where}: expected values in the logit's domain [{lo:.4g}, {hi:.4g}] (data in [0, 1], or the "
            f"model's own samples, which lie in it at every temperature), got {seen}; outside it "
            f"the logit has no value. Scale images to [0, 1] (e.g. levels / (K - 1), or clamp "
            f"samples edited by hand)"
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        if checking_inputs():
            self.check_domain(x, "LogitPreprocess.forward")
        info = torch.finfo(x.dtype)
        # The ends only (see the class docstring): a no-op on [0, 1] and inside the domain.
        p = self._p(x).clamp(info.tiny, 1 - info.eps / 2)
        y = torch.log(p) - torch.log1p(-p)
        log_dydx = math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return y, sum_except_batch(log_dydx)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        log_dxdz = F.logsigmoid(z) + F.logsigmoid(-z) - math.log(1 - 2 * self.alpha)
        return x, sum_except_batch(log_dxdz)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
