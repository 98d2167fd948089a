"""The variational autoencoder, its importance-weighted bound, and a posterior that is a flow.

A VAE (Kingma & Welling, 2014; Rezende, Mohamed & Wierstra, 2014) is a latent-variable model
p(x) = int p(x | z) p(z) dz with p(z) = N(0, I) and a decoder p(x | z); the integral has no
closed form, so an encoder q(z | x) = N(mu(x), diag sigma(x)^2) gives a lower bound,

    log p(x) >= ELBO(x) = E_q[ log p(x | z) + log p(z) - log q(z | x) ],

estimated without bias by sampling z = mu + sigma * eps, eps ~ N(0, I) (the reparameterisation
trick: z is a differentiable function of the encoder's outputs, so the bound's gradient flows into
them). With k samples and the log-weights w_i = log p(x, z_i) - log q(z_i | x), the
importance-weighted bound (Burda, Grosse & Salakhutdinov, 2016)

    IWAE_k(x) = E[ log (1/k) sum_i exp(w_i) ],      ELBO = IWAE_1 <= IWAE_k <= IWAE_{k+1} <= log p(x),

tightens with k and reaches log p(x) as k -> infinity. The gap of the ELBO is
KL(q(z | x) || p(z | x)): a diagonal Gaussian cannot follow a posterior that is correlated or
skewed. Rezende & Mohamed (2015) designed planar flows for exactly this: push the Gaussian sample
z_0 through a flow, z_K = g(z_0), and score it by the change of variables,

    log q_K(z_K | x) = log q_0(z_0 | x) - log |det dg/dz_0|.

Here g is the generative direction (``inverse``) of any flowlib flow, so planar layers (which
have no closed-form inverse the other way) and couplings both serve.

>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> vae = VAE(data_dim=4, latent_dim=2, hidden=8)
>>> x = torch.rand(3, 4).round()
>>> elbo, iwae = vae.elbo(x), vae.iwae(x, k=64)
>>> elbo.shape, bool((iwae >= elbo - 0.5).all())
(torch.Size([3]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import FlowInputError, choice, integer, number
from flowlib.core import Flow
from flowlib.nets import MLP

__all__ = ["VAE", "importance_weighted_bound"]

_LOG_2PI = math.log(2 * math.pi)


def importance_weighted_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_i exp(w_i) over the first axis of log-weights (k, n): shape (n,).

    The importance-weighted bound of Burda et al. (2016) from its k log-weights
    w_i = log p(x, z_i) - log q(z_i | x); computed as logsumexp(w) - log k, so log-weights of
    -1000 nats (common for images) do not underflow to log 0. With k = 1 it is the ELBO's
    one-sample estimate.

    >>> importance_weighted_bound(torch.tensor([[-1000.0], [-1000.0 + math.log(3)]]))
    tensor([-999.3069])
    """
    if not isinstance(log_weights, Tensor) or log_weights.dim() != 2 or log_weights.shape[0] == 0:
        got = tuple(log_weights.shape) if isinstance(log_weights, Tensor) else type(log_weights).__name__
        raise FlowInputError(f"importance_weighted_bound: expected log-weights of shape (k, n) with k >= 1, "
                             f"got {got}")
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z ** 2 + _LOG_2PI).sum(-1)


class VAE(nn.Module):
    """A VAE on vectors (batch, D): Gaussian encoder, Bernoulli or Gaussian decoder, latent N(0, I).

    ``likelihood``: ``"bernoulli"`` (binary data; the decoder returns logits) or ``"gaussian"``
    (real data; the decoder returns the mean, with one learned log standard deviation per
    coordinate). ``encoder`` / ``decoder``: networks of your own (the encoder maps x to
    2 * latent_dim numbers, mean then log sigma; the decoder maps z to D numbers); by default
    MLPs with ``hidden`` units and ``layers`` hidden layers. ``decoder_sigma``: the Gaussian
    decoder's starting standard deviation (learned; small, against posterior collapse).
    ``posterior_flow``: a flowlib :class:`~flowlib.core.Flow` on latent vectors, applied in its
    generative direction to the encoder's sample (None: the plain diagonal Gaussian posterior).

    ``log_prob(x)`` is the IWAE bound with ``train_samples`` samples (1: the ELBO), so the model
    trains with :func:`flowlib.train.fit` like a flow; it is a lower bound on log p(x), not the
    exact value.
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 64, layers: int = 2,
                 likelihood: str = "bernoulli", encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None, posterior_flow: Flow | None = None,
                 train_samples: int = 1, decoder_sigma: float = 0.3) -> None:
        super().__init__()
        who = "VAE"
        self.data_dim = integer(data_dim, "data_dim", who)
        self.latent_dim = integer(latent_dim, "latent_dim", who)
        self.likelihood = choice(likelihood, "likelihood", ("bernoulli", "gaussian"), who)
        self.train_samples = integer(train_samples, "train_samples", who)
        d, k = self.data_dim, self.latent_dim
        self.encoder = encoder if encoder is not None else MLP(d, 2 * k, hidden, layers)
        self.decoder = decoder if decoder is not None else MLP(k, d, hidden, layers)
        if posterior_flow is not None and not isinstance(posterior_flow, Flow):
            raise FlowInputError(f"VAE: posterior_flow must be a flowlib Flow on ({self.latent_dim},) "
                                 f"latents, got {type(posterior_flow).__name__}")
        self.posterior_flow = posterior_flow
        # One log standard deviation per coordinate of a Gaussian decoder (unused for Bernoulli),
        # started small: the default MLPs start with q(z | x) exactly the prior and a decoder that
        # ignores z, and a broad decoder (sigma 1) then explains the data by its noise alone, a
        # posterior collapse (measured on the eight Gaussians after 20 s of fit: ELBO -4.95 nats
        # from sigma 1, the latent unused; -3.89 from 0.14, the latent used).
        sigma = number(decoder_sigma, "decoder_sigma", who, minimum=0.0, strict=True)
        self.decoder_log_sigma = nn.Parameter(torch.full((self.data_dim,), math.log(sigma)))

    @property
    def dim(self) -> int:
        return self.data_dim

    def _check(self, x: Tensor, who: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.data_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowInputError(f"VAE.{who}: expected data of shape (batch, {self.data_dim}), got {got}")
        dtype = self.decoder_log_sigma.dtype
        return x.to(device=self.decoder_log_sigma.device, dtype=dtype)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's mean and log standard deviation of q_0(z | x), each (batch, latent_dim)."""
        h = self.encoder(self._check(x, "encode"))
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for x (n, D) and latents z (..., n, latent_dim): shape (..., n)."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        log_sigma = self.decoder_log_sigma
        return (-0.5 * ((x - out) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * _LOG_2PI).sum(-1)

    def posterior_sample(self, x: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """k reparameterised samples z ~ q(z | x) per row and their log q(z | x): (k, n, d) and (k, n)."""
        k = integer(k, "k", "VAE.posterior_sample")
        mu, log_sigma = self.encode(x)
        eps = torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(log_sigma) * eps
        log_q = (-0.5 * (eps ** 2 + _LOG_2PI) - log_sigma).sum(-1)
        if self.posterior_flow is not None:
            flat, logdet = self.posterior_flow.inverse(z.reshape(-1, self.latent_dim))  # z_K = g(z_0)
            z, log_q = flat.reshape(z.shape), log_q - logdet.reshape(log_q.shape)
        return z, log_q

    def log_weights(self, x: Tensor, k: int = 1) -> Tensor:
        """w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x) for k samples per row: shape (k, n)."""
        x = self._check(x, "log_weights")
        z, log_q = self.posterior_sample(x, k)
        return self.log_likelihood(x, z) + _standard_normal_log_prob(z) - log_q

    def elbo(self, x: Tensor, k: int = 1) -> Tensor:
        """The ELBO of each row, estimated with k samples (their mean log-weight): shape (n,)."""
        return self.log_weights(x, integer(k, "k", "VAE.elbo")).mean(0)

    def iwae(self, x: Tensor, k: int) -> Tensor:
        """The importance-weighted bound log (1/k) sum_i exp(w_i) of each row: shape (n,)."""
        return importance_weighted_bound(self.log_weights(x, integer(k, "k", "VAE.iwae")))

    loss_unit = "nats"  # what flowlib.train.fit reports: -bound per sample

    def log_prob(self, x: Tensor) -> Tensor:
        """The training objective, a LOWER BOUND on log p(x): IWAE with ``train_samples`` samples."""
        return self.iwae(x, self.train_samples)

    def loss(self, x: Tensor) -> Tensor:
        """What :func:`flowlib.train.fit` minimises, one value per sample: -log_prob(x), in nats."""
        return -self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, mean: bool = True) -> Tensor:
        """n draws: z ~ N(0, T^2 I), then the decoder's mean (``mean``) or a draw of p(x | z)."""
        n = integer(n, "n", "VAE.sample")
        z = temperature * torch.randn(n, self.latent_dim, dtype=self.decoder_log_sigma.dtype,
                                      device=self.decoder_log_sigma.device)
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            probs = torch.sigmoid(out)
            return probs if mean else torch.bernoulli(probs)
        return out if mean else out + torch.exp(self.decoder_log_sigma) * torch.randn_like(out)
