"""Generative adversarial networks: the minimax game, the non-saturating loss, and WGAN-GP.

A GAN (Goodfellow et al., 2014) has no density at all: a generator x = G(z), z ~ N(0, I), and a
discriminator D(x) in (0, 1) (here its logit d(x), D = sigmoid(d)) play

    min_G max_D  V(D, G) = E_data[log D(x)] + E_z[log(1 - D(G(z)))].

For a fixed G the best discriminator is D*(x) = p_data(x) / (p_data(x) + p_G(x)), its logit
log p_data - log p_G, and then V = 2 JSD(p_data || p_G) - log 4: the game minimises a
Jensen-Shannon divergence, which needs no likelihood. :func:`discriminator_loss` is -V (the
discriminator's loss). Early in training D rejects the samples easily, D(G(z)) ~ 0, where
log(1 - D) is flat: the generator's gradient vanishes. The **non-saturating** loss
-log D(G(z)) has the same fixed point and a gradient of about -1 in the logit there
(:func:`generator_loss`).

The Wasserstein GAN (Arjovsky, Chintala & Bottou, 2017) replaces D by a critic c(x) with no
sigmoid and estimates the earth mover's distance sup_{|c|_L <= 1} E_data[c] - E_G[c]; WGAN-GP
(Gulrajani et al., 2017) keeps c 1-Lipschitz softly, with the penalty
lambda E[(|grad c(x_hat)| - 1)^2] at points x_hat between real and generated samples
(:func:`gradient_penalty`).

>>> real, fake = torch.tensor([3.0]), torch.tensor([-3.0])  # logits of a confident discriminator
>>> float(discriminator_loss(real, fake)) < 0.1, float(generator_loss(fake)) > 3
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import FlowInputError, choice, integer, number
from flowlib.nets import MLP

__all__ = ["GAN", "fit_gan", "discriminator_loss", "generator_loss", "critic_loss", "gradient_penalty"]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-V: -E[log D(x)] - E[log(1 - D(G(z)))] from the logits d, as softplus(-d_real) + softplus(d_fake)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's loss: ``"non_saturating"`` -E[log D(G(z))] = E[softplus(-d)], or
    ``"minimax"`` E[log(1 - D(G(z)))] = -E[softplus(d)] (the game's own, which saturates)."""
    kind = choice(kind, "kind", ("non_saturating", "minimax"), "generator_loss")
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    return F.softplus(-fake_logits).mean()


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """The WGAN critic's loss, E_G[c] - E_data[c] (minus the estimate of the earth mover's distance)."""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """E[(|grad c(x_hat)| - 1)^2] at x_hat = u real + (1 - u) fake, u ~ U(0, 1) per sample (WGAN-GP).

    Differentiable in the critic's parameters (the gradient is taken with ``create_graph``).
    """
    if real.shape != fake.shape:
        raise FlowInputError(f"gradient_penalty: real and fake must have the same shape, got "
                             f"{tuple(real.shape)} and {tuple(fake.shape)}")
    u = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator, dtype=real.dtype)
    x_hat = (u.to(real.device) * real + (1 - u.to(real.device)) * fake.detach()).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class GAN(nn.Module):
    """A generator and a discriminator (or WGAN critic) on vectors, both MLPs.

    ``loss``: ``"non_saturating"`` (the usual GAN), ``"minimax"`` (the game as written) or
    ``"wgan-gp"`` (critic and gradient penalty of weight ``penalty``). :meth:`losses` returns the
    two losses of one step; :meth:`sample` draws from the generator. There is no ``log_prob``:
    a GAN defines no density.
    """

    def __init__(self, data_dim: int, latent_dim: int = 2, hidden: int = 64, layers: int = 2,
                 loss: str = "non_saturating", penalty: float = 10.0) -> None:
        super().__init__()
        who = "GAN"
        self.data_dim = integer(data_dim, "data_dim", who)
        self.latent_dim = integer(latent_dim, "latent_dim", who)
        self.loss = choice(loss, "loss", ("non_saturating", "minimax", "wgan-gp"), who)
        self.penalty = number(penalty, "penalty", who, minimum=0.0)
        self.generator = MLP(self.latent_dim, self.data_dim, hidden, layers)
        self.discriminator = MLP(self.data_dim, 1, hidden, layers)
        # MLP zero-initialises its last layer (right for flows); a generator that starts as a point
        # mass gets one gradient direction only, so give both nets an ordinary random last layer.
        for net in (self.generator, self.discriminator):
            nn.init.kaiming_uniform_(net.net[-1].weight, a=5 ** 0.5)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """n draws G(z), z ~ N(0, T^2 I), without gradients."""
        n = integer(n, "n", "GAN.sample")
        with torch.no_grad():
            return self.generator(temperature * torch.randn(n, self.latent_dim))

    def losses(self, real: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(discriminator or critic loss, generator loss) on a batch of real vectors (n, D)."""
        if not isinstance(real, Tensor) or real.dim() != 2 or real.shape[1] != self.data_dim:
            got = tuple(real.shape) if isinstance(real, Tensor) else type(real).__name__
            raise FlowInputError(f"GAN.losses: expected data of shape (batch, {self.data_dim}), got {got}")
        z = torch.randn(real.shape[0], self.latent_dim, generator=generator, dtype=real.dtype)
        fake = self.generator(z)
        d_real, d_fake = self.discriminator(real)[:, 0], self.discriminator(fake.detach())[:, 0]
        g_scores = self.discriminator(fake)[:, 0]  # the generator's gradient flows through these
        if self.loss == "wgan-gp":
            d_loss = critic_loss(d_real, d_fake) + self.penalty * gradient_penalty(
                self.discriminator, real, fake, generator)
            return d_loss, -g_scores.mean()
        return discriminator_loss(d_real, d_fake), generator_loss(g_scores, self.loss)


def fit_gan(gan: GAN, data: Tensor | Callable[[int], Tensor], steps: int, batch_size: int = 128,
            lr: float = 1e-3, betas: tuple[float, float] = (0.5, 0.9), critic_steps: int | None = None,
            seed: int = 0, progress: bool = True, seconds: float | None = None,
            callback: Callable[[int, GAN], None] | None = None) -> dict[str, list[float]]:
    """Alternate ``critic_steps`` discriminator (critic) steps and one generator step, ``steps`` times
    (or until ``seconds`` of wall-clock time are spent, whichever comes first).

    ``data``: a tensor (n, D), batches drawn from it at random, or a function n -> (n, D) samples
    (a toy's sampler). ``critic_steps``: 5 for WGAN-GP (its critic must stay near the optimum for
    the gradient to estimate the earth mover's distance; Gulrajani et al., 2017), 1 otherwise.
    Adam with ``betas`` (a small first moment steadies the game). ``callback(step, gan)``, if
    given, runs after each generator step (``step`` counts from 1), e.g. to measure the samples
    along the way without restarting the optimisers. Returns the losses per step.
    """
    import time

    from tqdm.auto import tqdm

    who = "fit_gan"
    deadline = None if seconds is None else time.perf_counter() + number(seconds, "seconds", who, minimum=0.0)
    steps, batch_size = integer(steps, "steps", who, minimum=0), integer(batch_size, "batch_size", who)
    critic_steps = integer(critic_steps if critic_steps is not None else (5 if gan.loss == "wgan-gp" else 1),
                           "critic_steps", who)
    seed = integer(seed, "seed", who, minimum=0)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if isinstance(data, Tensor):
        pool = data

        def draw(n: int) -> Tensor:
            return pool[torch.randint(0, pool.shape[0], (n,), generator=g)]
    elif callable(data):
        draw = data
    else:
        raise FlowInputError(f"{who}: expected data as a tensor (n, D) or a function n -> samples, got "
                             f"{type(data).__name__}")
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr, betas=betas)
    history: dict[str, list[float]] = {"discriminator": [], "generator": []}
    gan.train()
    if callback is not None and not callable(callback):
        raise FlowInputError(f"{who}: callback must be a function (step, gan) -> None, "
                             f"got {type(callback).__name__}")
    for step in tqdm(range(1, steps + 1), desc=f"GAN ({gan.loss})", disable=not progress, leave=False):
        for _ in range(critic_steps):
            d_loss, _ = gan.losses(draw(batch_size), generator=g)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        _, g_loss = gan.losses(draw(batch_size), generator=g)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history["discriminator"].append(float(d_loss.detach()))
        history["generator"].append(float(g_loss.detach()))
        if callback is not None:
            callback(step, gan)
            gan.train()  # the callback may have switched to eval mode to draw samples
        if deadline is not None and time.perf_counter() >= deadline:
            break
    gan.eval()
    return history
