"""The restricted Boltzmann machine: what an intractable partition function costs.

A binary RBM (Smolensky, 1986; Hinton, 2002) has visible units v in {0, 1}^D, hidden units
h in {0, 1}^H and the energy E(v, h) = -b.v - c.h - v^T W h; p(v, h) = exp(-E) / Z. Summing out
h gives the free energy

    F(v) = -b.v - sum_j softplus(c_j + (v^T W)_j),      p(v) = exp(-F(v)) / Z,

so the unnormalised density is cheap and Z = sum_v exp(-F(v)) is a sum over 2^D states (or, the
other way round, over 2^H: :meth:`RBM.log_partition_exact` enumerates the hidden states, which a
small H allows). A flow has no Z at all: its density is normalised by construction.

- **Training by contrastive divergence** (CD-k, Hinton 2002): the gradient of the mean log p(v)
  is E_model[dF/dtheta] - E_data[dF/dtheta]; the model expectation is replaced by samples
  after k Gibbs steps started at the data (:meth:`RBM.cd_loss` has exactly that gradient).
- **The log-likelihood by annealed importance sampling** (Neal, 2001; Salakhutdinov & Murray,
  2008): from an RBM A with no weights, whose log Z_A is known in closed form, through the
  distributions with the weights scaled by beta_k and the visible biases mixed,
  p_k*(v) = exp((1 - beta_k) b_A.v + beta_k b.v) prod_j (1 + exp(beta_k (c_j + (v^T W)_j))),
  each run moved by one Gibbs step per beta and weighted by prod_k p_k*(v_{k-1}) / p_{k-1}*(v_{k-1});
  log Z ~ log Z_A + log mean(weights) (:meth:`RBM.log_partition_ais`). The estimate is
  consistent, and an underestimate on average (Jensen), so the log-likelihood it gives is
  optimistic: the price of Z.

>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> rbm = RBM(6, 4)
>>> v = torch.randint(0, 2, (3, 6)).double()
>>> exact = rbm.log_partition_exact()
>>> abs(rbm.log_partition_ais(runs=200, betas=200) - exact) < 0.05
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import FlowInputError, integer

__all__ = ["RBM"]


class RBM(nn.Module):
    """A binary RBM with ``visible`` D and ``hidden`` H units, in float64 (Z is a sum of exponentials).

    ``base_bias``: the visible biases b_A of AIS's weightless start, e.g. the log-odds of the
    training data's pixel means (:meth:`set_base_from_data`); zeros by default.
    """

    def __init__(self, visible: int, hidden: int, init_scale: float = 0.01) -> None:
        super().__init__()
        self.visible, self.hidden = integer(visible, "visible", "RBM"), integer(hidden, "hidden", "RBM")
        self.W = nn.Parameter(init_scale * torch.randn(self.visible, self.hidden, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(self.visible, dtype=torch.float64))
        self.c = nn.Parameter(torch.zeros(self.hidden, dtype=torch.float64))
        self.register_buffer("base_bias", torch.zeros(self.visible, dtype=torch.float64))

    def _check(self, v: Tensor, who: str) -> Tensor:
        if not isinstance(v, Tensor) or v.dim() != 2 or v.shape[1] != self.visible:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise FlowInputError(f"RBM.{who}: expected binary data of shape (batch, {self.visible}), "
                                 f"got {got}")
        return v.to(self.W.dtype)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + (v^T W)_j), shape (n,)."""
        v = self._check(v, "free_energy")
        return -v @ self.b - F.softplus(self.c + v @ self.W).sum(1)

    def gibbs(self, v: Tensor, steps: int = 1, beta: float = 1.0,
              generator: torch.Generator | None = None) -> Tensor:
        """``steps`` rounds of block Gibbs sampling h ~ p(h | v), v ~ p(v | h), from v (n, D).

        ``beta`` < 1: the transition of AIS's intermediate distribution (weights and hidden biases
        scaled by beta, visible biases (1 - beta) b_A + beta b)."""
        v = self._check(v, "gibbs")
        bias = (1 - beta) * self.base_bias + beta * self.b
        with torch.no_grad():
            for _ in range(integer(steps, "steps", "RBM.gibbs", minimum=0)):
                p_h = torch.sigmoid(beta * (self.c + v @ self.W))
                h = torch.bernoulli(p_h, generator=generator)
                v = torch.bernoulli(torch.sigmoid(bias + beta * h @ self.W.T), generator=generator)
        return v

    def cd_loss(self, v: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """mean F(data) - mean F(v_k): its gradient is the CD-k estimate of -grad mean log p(v)."""
        v = self._check(v, "cd_loss")
        negative = self.gibbs(v, integer(k, "k", "RBM.cd_loss"), generator=generator)
        return self.free_energy(v).mean() - self.free_energy(negative).mean()

    def set_base_from_data(self, v: Tensor) -> None:
        """b_A = log-odds of the pixel means of ``v`` (clamped away from 0 and 1): a start for AIS
        that already knows which pixels are usually on, so the annealing has less to do."""
        p = self._check(v, "set_base_from_data").mean(0).clamp(1e-3, 1 - 1e-3)
        self.base_bias.copy_(torch.log(p) - torch.log1p(-p))

    def log_partition_exact(self) -> float:
        """log Z by enumerating the 2^H hidden states: log sum_h exp(c.h) prod_i (1 + exp(b_i + (W h)_i))."""
        if self.hidden > 20:
            raise FlowInputError(f"RBM.log_partition_exact: 2^{self.hidden} hidden states are too many to "
                                 f"enumerate (at most 20 hidden units); use log_partition_ais")
        codes = torch.arange(2 ** self.hidden)
        h = ((codes[:, None] >> torch.arange(self.hidden)) & 1).to(self.W.dtype)  # (2^H, H)
        with torch.no_grad():
            terms = h @ self.c + F.softplus(self.b + h @ self.W.T).sum(1)
            return float(torch.logsumexp(terms, 0))

    def _log_unnormalised(self, v: Tensor, beta: float) -> Tensor:
        bias = (1 - beta) * self.base_bias + beta * self.b
        return v @ bias + F.softplus(beta * (self.c + v @ self.W)).sum(1)

    def log_partition_ais(self, runs: int = 100, betas: int = 1000,
                          generator: torch.Generator | None = None) -> float:
        """log Z by annealed importance sampling with ``runs`` chains and ``betas`` temperatures
        from the weightless RBM (visible biases ``base_bias``) to this one."""
        who = "RBM.log_partition_ais"
        runs, steps = integer(runs, "runs", who), integer(betas, "betas", who)
        schedule = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
        # log Z_A of the weightless RBM: its visible units are independent, its hidden ones fair coins.
        log_z_a = float(F.softplus(self.base_bias).sum()) + self.hidden * math.log(2)
        with torch.no_grad():
            v = torch.bernoulli(torch.sigmoid(self.base_bias).expand(runs, -1), generator=generator)
            log_w = torch.zeros(runs, dtype=torch.float64)
            for previous, beta in zip(schedule[:-1], schedule[1:], strict=True):
                log_w += self._log_unnormalised(v, beta) - self._log_unnormalised(v, previous)
                v = self.gibbs(v, 1, beta=beta, generator=generator)
        # At beta = 0 each hidden unit adds softplus(0) = log 2 to p_0*, as in log Z_A: they match.
        return log_z_a + float(torch.logsumexp(log_w, 0) - math.log(runs))

    def log_prob(self, v: Tensor, log_partition: float) -> Tensor:
        """log p(v) = -F(v) - log Z, given log Z (exact or from AIS), shape (n,)."""
        return -self.free_energy(v) - log_partition
