"""Invertible linear maps over the channel dimension (Kingma & Dhariwal, 2018).

For a vector x in R^C the map is z = W x, log|det dz/dx| = log|det W|. For an image
(batch, C, H, W) the same W acts on the channel vector of every pixel: this is Glow's
invertible 1x1 convolution, and since the Jacobian is block diagonal with H*W copies of W,

    log|det dz/dx| = H * W * log|det W|.

It generalises the fixed channel permutations of NICE and RealNVP (Dinh et al., 2015;
2017): a permutation is the special case of a permutation matrix.

Two parameterisations:

* :class:`InvertibleLinear`: W itself is the parameter; log|det W| and W^{-1} are computed
  in float64, because in float32 they drift from the true values as W is trained
  (a known pitfall of Glow implementations).
* :class:`InvertibleLinearLU`: W = P L (U + diag(sign(s) exp(log|s|))), with P a fixed
  permutation, L unit lower triangular and U strictly upper triangular. Then
  log|det W| = sum log|s| exactly, and W^{-1} comes from two triangular solves.

In eval mode, W, W^{-1} and log|det W| are cached while no gradient is asked for (sampling,
evaluation); the cache is keyed on the parameters' storage and version counters, so any
optimiser step or ``load_state_dict`` invalidates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import integer
from flowlib.core import Flow, FlowInputError, positions

__all__ = ["InvertibleLinear", "InvertibleLinearLU", "random_rotation"]


def random_rotation(channels: int, generator: torch.Generator | None = None) -> Tensor:
    """A random orthogonal C x C matrix with det = +1 (float64), from the QR of a Gaussian matrix.

    Orthogonal initialisation keeps log|det W| = 0 at the start, so the layer changes the
    volume only once it has learned to.
    """
    a = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    # Fix the signs so that q is uniformly distributed (Haar), then make det(q) = +1.
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class _ChannelLinear(Flow):
    """Shared machinery: apply W to vectors or to every pixel, shape checks, eval-mode cache."""

    def __init__(self, channels: int) -> None:
        channels = integer(channels, "channels", type(self).__name__)
        super().__init__(None)
        self.channels = channels
        self._cache: dict[str, Tensor] = {}
        self._cache_key: tuple | None = None

    # -- the three quantities a subclass defines --------------------------------------
    def _compute_weight(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute_inverse_weight(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute_log_abs_det(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- cache --------------------------------------------------------------------------
    def _state_key(self) -> tuple:
        # Storage address and in-place version counter of every tensor the map depends on:
        # an optimiser step, copy_ (load_state_dict) or .to() changes one of them.
        return tuple(
            (t.data_ptr(), t._version, t.dtype, t.device)
            for t in (*self.parameters(), *self.buffers())
        )

    def _get(self, name: str) -> Tensor:
        compute = {
            "weight": self._compute_weight,
            "inverse": self._compute_inverse_weight,
            "logdet": self._compute_log_abs_det,
        }[name]
        # While training, or whenever gradients with respect to W may be needed, recompute:
        # a cached tensor would be cut off from the autograd graph.
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or needs_grad:
            return compute()
        key = self._state_key()
        if key != self._cache_key:
            self._cache = {}
            self._cache_key = key
        if name not in self._cache:
            self._cache[name] = compute().detach()
        return self._cache[name]

    def train(self, mode: bool = True) -> _ChannelLinear:
        self._cache = {}
        self._cache_key = None
        return super().train(mode)

    # -- the contract ----------------------------------------------------------------------
    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        self.check_tensor(x, direction)
        name = type(self).__name__
        want = f"(batch, {self.channels}) or (batch, {self.channels}, height, width)"
        if x.dim() not in (2, 4) or x.shape[1] != self.channels:
            raise FlowInputError(f"{name}.{direction}: expected input of shape {want}, got {tuple(x.shape)}")

    @staticmethod
    def _mix(matrix: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, matrix)
        # A 1x1 convolution is the matrix applied to the channel vector at every pixel.
        return F.conv2d(x, matrix.reshape(*matrix.shape, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        weight = self._get("weight")
        z = self._mix(weight.to(x.dtype), x)
        logdet = (positions(x) * self._get("logdet")).to(x.dtype)
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        inv = self._get("inverse")
        x = self._mix(inv.to(z.dtype), z)
        logdet = (-positions(z) * self._get("logdet")).to(z.dtype)
        return x, logdet.expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class InvertibleLinear(_ChannelLinear):
    """z = W x over channels (the invertible 1x1 convolution of Kingma & Dhariwal, 2018).

    log|det dz/dx| = H * W * log|det W| for images (H = W = 1 for vectors). W starts as a
    random rotation. log|det W| and W^{-1} are computed in float64 (O(C^3) once per call,
    cheap next to the convolutions) and cast back, so neither drifts in float32.

    >>> layer = InvertibleLinear(3)            # W starts as a random rotation: log|det W| = 0
    >>> x = torch.randn(2, 3, 4, 4)
    >>> z, logdet = layer(x)
    >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-5), torch.allclose(logdet, torch.zeros(2), atol=1e-4)
    (True, True)
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__(channels)
        self.weight = nn.Parameter(random_rotation(channels, generator).to(torch.get_default_dtype()))

    def _compute_weight(self) -> Tensor:
        return self.weight

    def _compute_inverse_weight(self) -> Tensor:
        return torch.linalg.inv(self.weight.double()).to(self.weight.dtype)

    def _compute_log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)


class InvertibleLinearLU(_ChannelLinear):
    """The LU-parameterised 1x1 convolution (Kingma & Dhariwal, 2018, section 3.2).

        W = P L (U + diag(sign(s) * exp(log|s|)))

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular, and the
    signs of s are fixed. Then log|det W| = sum log|s| costs O(C) and is exact in any
    precision; W^{-1} = (U + diag(s))^{-1} L^{-1} P^T comes from two triangular solves.
    Initialised from the LU decomposition of a random rotation.

    >>> layer = InvertibleLinearLU(4)
    >>> _ = [p.data.add_(0.1 * torch.randn_like(p)) for p in layer.parameters()]
    >>> x = torch.randn(5, 4)
    >>> z, logdet = layer(x)
    >>> jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[:1])[0, :, 0]
    >>> exact = torch.linalg.slogdet(jac)[1]
    >>> torch.allclose(logdet[0], exact, atol=1e-5), torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
    (True, True)
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__(channels)
        dtype = torch.get_default_dtype()
        w0 = random_rotation(channels, generator)
        p, lower, upper = torch.linalg.lu(w0)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        # P and the signs are drawn at random, so they are saved with the parameters; the mask
        # and the identity are rebuilt from C and need not be.
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels, dtype=dtype), -1),
                             persistent=False)
        self.register_buffer("eye", torch.eye(channels, dtype=dtype), persistent=False)
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(s.abs()).to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def _compute_weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.permutation @ (lower @ upper)

    def _compute_inverse_weight(self) -> Tensor:
        lower, upper = (t.double() for t in self._factors())
        # W^{-1} = U^{-1} L^{-1} P^T: solve L Y = P^T, then U X = Y (float64, then cast back).
        y = torch.linalg.solve_triangular(lower, self.permutation.double().T, upper=False,
                                          unitriangular=True)
        return torch.linalg.solve_triangular(upper, y, upper=True).to(self.log_s.dtype)

    def _compute_log_abs_det(self) -> Tensor:
        return self.log_s.sum()
