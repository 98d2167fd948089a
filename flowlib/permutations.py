"""Permutations of vector coordinates: volume preserving, log|det| = 0.

Coupling layers leave half of the coordinates unchanged; permuting between them lets every
coordinate be transformed (Dinh et al., 2015; 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

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

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        return cls(torch.tensor([2, 0, 3, 1])), torch.randn(5, 4, generator=generator)


class ReversePermutation(Permutation):
    """Reverse the order of the coordinates: z = (x_d, ..., x_1)."""

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise FlowInputError(f"ReversePermutation: dim must be >= 1, got {dim}")
        super().__init__(torch.arange(int(dim) - 1, -1, -1))

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        return cls(5), torch.randn(4, 5, generator=generator)


class RandomPermutation(Permutation):
    """A random permutation drawn once at construction from ``seed`` and then fixed."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        if int(dim) < 1:
            raise FlowInputError(f"RandomPermutation: dim must be >= 1, got {dim}")
        g = torch.Generator().manual_seed(int(seed))
        super().__init__(torch.randperm(int(dim), generator=g))

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        return cls(6, seed=3), torch.randn(4, 6, generator=generator)
