"""flowlib.families.gan: the losses against the theory they come from, and a GAN that learns.

- At the best discriminator, logit log p_data - log p_G, the discriminator's loss is
  log 4 - 2 JSD(p_data || p_G) (Goodfellow et al., 2014), checked against the JSD by quadrature;
- where D rejects the samples, the minimax generator loss has a vanishing gradient and the
  non-saturating one does not;
- the gradient penalty of a linear critic c(x) = a.x is (|a| - 1)^2 exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowlib import FlowInputError
from flowlib.families import GAN, critic_loss, discriminator_loss, fit_gan, generator_loss, gradient_penalty
from flowlib.metrics import energy_distance


def _normal_log_prob(x: torch.Tensor, mean: float) -> torch.Tensor:
    return -0.5 * (x - mean) ** 2 - 0.5 * math.log(2 * math.pi)


def test_best_discriminator_loss_is_log4_minus_twice_the_jsd():
    g = torch.Generator().manual_seed(0)
    n, shift = 400_000, 1.5
    real = torch.randn(n, generator=g, dtype=torch.float64)
    fake = shift + torch.randn(n, generator=g, dtype=torch.float64)

    def logit(x):  # log p_data(x) - log p_G(x), the logit of D*
        return _normal_log_prob(x, 0.0) - _normal_log_prob(x, shift)

    loss = float(discriminator_loss(logit(real), logit(fake)))
    u = torch.linspace(-12, 14, 200_001, dtype=torch.float64)
    p, q = _normal_log_prob(u, 0.0).exp(), _normal_log_prob(u, shift).exp()
    m = (p + q) / 2
    jsd = 0.5 * float(torch.trapezoid(p * (p / m).log(), u) + torch.trapezoid(q * (q / m).log(), u))
    assert loss == pytest.approx(math.log(4) - 2 * jsd, abs=5e-3)
    # The same distribution on both sides: D* = 1/2 everywhere and the loss is log 4.
    assert float(discriminator_loss(torch.zeros(3), torch.zeros(3))) == pytest.approx(math.log(4))


def test_minimax_generator_loss_saturates_where_non_saturating_does_not():
    logits = torch.tensor([-8.0, -6.0], requires_grad=True)  # D(G(z)) ~ 3e-4 and 2e-3: rejected
    (g_minimax,) = torch.autograd.grad(generator_loss(logits, "minimax"), logits)
    (g_ns,) = torch.autograd.grad(generator_loss(logits), logits)
    assert float(g_minimax.abs().max()) < 2e-3  # sigmoid(d) / n: almost no signal
    assert float(g_ns.abs().min()) > 0.49  # -(1 - sigmoid(d)) / n, about -1/2 each
    # Same fixed point: both push the logit up (the generator wants D(G(z)) -> 1).
    assert bool((g_minimax < 0).all() and (g_ns < 0).all())
    with pytest.raises(FlowInputError, match="kind"):
        generator_loss(logits, "hinge")


def test_gradient_penalty_of_a_linear_critic():
    for norm in (1.0, 2.0, 0.25):
        critic = nn.Linear(3, 1, bias=True)
        with torch.no_grad():
            critic.weight.copy_(norm * torch.tensor([[0.6, 0.0, 0.8]]))
        real, fake = torch.randn(16, 3), torch.randn(16, 3)
        penalty = float(gradient_penalty(critic, real, fake).detach())
        assert penalty == pytest.approx((norm - 1) ** 2, abs=1e-6)
    assert float(critic_loss(torch.tensor([2.0, 4.0]), torch.tensor([1.0]))) == -2.0
    with pytest.raises(FlowInputError, match="same shape"):
        gradient_penalty(critic, torch.zeros(4, 3), torch.zeros(5, 3))


@pytest.mark.parametrize(("loss", "steps"), [("non_saturating", 400), ("wgan-gp", 200)])
def test_a_gan_learns_a_shifted_gaussian(loss, steps):
    """fit_gan on N((2, -1), 0.5^2 I): the energy distance to fresh data falls below half its start
    (WGAN-GP with 5 critic steps per generator step, so fewer generator steps)."""
    torch.manual_seed(0)
    gan = GAN(2, latent_dim=2, hidden=32, loss=loss)
    g = torch.Generator().manual_seed(1)

    def data(n):
        return torch.tensor([2.0, -1.0]) + 0.5 * torch.randn(n, 2, generator=g)

    before = energy_distance(gan.sample(1000), data(1000))
    history = fit_gan(gan, data, steps=steps, progress=False)
    after = energy_distance(gan.sample(1000), data(1000))
    assert len(history["generator"]) == steps
    assert after < 0.5 * before, (before, after)
    with pytest.raises(FlowInputError, match=r"GAN.losses: expected data of shape \(batch, 2\)"):
        gan.losses(torch.zeros(4, 3))
    with pytest.raises(FlowInputError, match="fit_gan: expected data"):
        fit_gan(gan, [1, 2], steps=1)


def test_fit_gan_callback_sees_every_step_without_restarting_the_optimisers():
    """The callback runs after each generator step with the step count, inside one run of the
    optimisers: the first step's losses are those of a run without a callback (later ones differ
    only because the callback's samples draw from the same random stream)."""
    data = torch.randn(256, 2)
    seen = []

    def measure(step, gan):
        gan.eval()
        seen.append((step, gan.sample(4).shape))

    torch.manual_seed(0)
    with_callback = fit_gan(GAN(2, hidden=8), data, steps=5, progress=False, callback=measure)
    torch.manual_seed(0)
    without = fit_gan(GAN(2, hidden=8), data, steps=5, progress=False)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert with_callback["generator"] != [] and len(with_callback["generator"]) == 5
    with pytest.raises(FlowInputError, match="callback must be a function"):
        fit_gan(GAN(2, hidden=8), data, steps=1, progress=False, callback=3)
    assert without["discriminator"][0] == with_callback["discriminator"][0]
