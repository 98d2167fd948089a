"""Permutations of vector coordinates: volume preserving, log|det| = 0.

Coupling layers leave half of the coordinates unchanged; permuting between them lets every
coordinate be transformed (Dinh et al., 2015; 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowlib._checks import integer
from flowlib.core import Flow, FlowInputError

__all__ = ["Permutation", "ReversePermutation", "RandomPermutation"]


class Permutation(Flow):
    """z_i = x_{perm[i]}: a fixed permutation of the last dimension of a (batch, dim) tensor."""

    def __init__(self, perm: Tensor) -> None:
        perm = torch.as_tensor(perm, dtype=torch.long)
        n = perm.numel()
        if perm.dim() != 1 or n == 0 or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise FlowInputError(
                f"{type(self).__name__}: expected a permutation of 0..dim-1, got {perm.tolist()}"
            )
        super().__init__((n,))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


class ReversePermutation(Permutation):
    """Reverse the order of the coordinates: z = (x_d, ..., x_1).

    >>> ReversePermutation(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
    tensor([[3., 2., 1.]])
    """

    def __init__(self, dim: int) -> None:
        dim = integer(dim, "dim", "ReversePermutation")
        super().__init__(torch.arange(dim - 1, -1, -1))


class RandomPermutation(Permutation):
    """A random permutation drawn once at construction from ``seed`` and then fixed.

    >>> layer = RandomPermutation(5, seed=1)
    >>> x = torch.randn(2, 5)
    >>> torch.equal(layer.inverse(layer(x)[0])[0], x)
    True
    >>> torch.equal(RandomPermutation(5, seed=1).perm, layer.perm)   # the same seed, the same order
    True
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        dim = integer(dim, "dim", "RandomPermutation")
        g = torch.Generator().manual_seed(integer(seed, "seed", "RandomPermutation", minimum=None))
        super().__init__(torch.randperm(dim, generator=g))
