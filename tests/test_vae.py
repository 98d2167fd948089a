"""flowlib.families.vae: the bounds against a model whose log p(x) and posterior are known exactly.

A linear-Gaussian VAE, x = W z + b + sigma * noise with z ~ N(0, I), has p(x) = N(b, W W^T +
sigma^2 I) and a Gaussian posterior with covariance (I + W^T W / sigma^2)^-1, diagonal when the
columns of W are orthogonal. With that posterior as the encoder every log-weight equals log p(x)
(the ELBO is tight); with a worse encoder ELBO <= IWAE_k <= log p(x), IWAE_k rising with k.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowlib import FlowInputError
from flowlib.core import Compose
from flowlib.coupling import Coupling, half_mask
from flowlib.families import VAE
from flowlib.nets import MLP
from flowlib.planar import Planar
from flowlib.transformers import Affine

W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # orthogonal columns
B = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
SIGMA = 0.5


class _ExactEncoder(nn.Module):
    """The exact posterior of the linear-Gaussian model (times ``scale`` on the log sigma's offset)."""

    def __init__(self, mean_scale: float = 1.0, log_sigma_shift: float = 0.0) -> None:
        super().__init__()
        self.cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / SIGMA ** 2)
        self.mean_scale, self.log_sigma_shift = mean_scale, log_sigma_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean_scale * (x - B) @ W @ self.cov.T / SIGMA ** 2
        log_sigma = 0.5 * self.cov.diagonal().log() + self.log_sigma_shift
        return torch.cat([mean, log_sigma.expand_as(mean)], dim=1)


def _linear_vae(encoder: nn.Module, posterior_flow=None) -> VAE:
    decoder = nn.Linear(2, 3).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(B)
    vae = VAE(3, 2, likelihood="gaussian", encoder=encoder, decoder=decoder, posterior_flow=posterior_flow)
    vae.double()
    with torch.no_grad():
        vae.decoder_log_sigma.fill_(math.log(SIGMA))
    return vae


def _exact_log_px(x: torch.Tensor) -> torch.Tensor:
    cov = W @ W.T + SIGMA ** 2 * torch.eye(3, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(B, covariance_matrix=cov).log_prob(x)


def _data(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return z @ W.T + B + SIGMA * torch.randn(n, 3, generator=g, dtype=torch.float64)


def test_exact_posterior_makes_every_bound_tight():
    torch.manual_seed(0)
    vae, x = _linear_vae(_ExactEncoder()), _data()
    w = vae.log_weights(x, k=50)
    exact = _exact_log_px(x)
    torch.testing.assert_close(w, exact.expand_as(w), rtol=0, atol=1e-10)  # zero-variance weights
    torch.testing.assert_close(vae.elbo(x), exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(vae.iwae(x, k=7), exact, rtol=0, atol=1e-10)


def test_bounds_are_ordered_and_iwae_closes_the_gap():
    torch.manual_seed(0)
    vae, x = _linear_vae(_ExactEncoder(mean_scale=0.6, log_sigma_shift=0.7)), _data(8)
    exact = _exact_log_px(x)
    with torch.no_grad():
        torch.manual_seed(3)
        one = vae.iwae(x, 1)
        torch.manual_seed(3)
        torch.testing.assert_close(one, vae.elbo(x, 1), rtol=0, atol=1e-12)  # IWAE_1 is the ELBO's estimate
        elbo = vae.elbo(x, k=20_000)  # the mean of many log-weights: the ELBO itself, closely
        draws = {k: torch.stack([vae.iwae(x, k) for _ in range(200)]) for k in (1, 10, 100)}
        far = vae.iwae(x, k=200_000)
    assert bool((exact - elbo > 1.0).all())  # a poor encoder: a visible gap, KL(q || posterior)
    # The expected bound, estimated by 200 draws of each: its gap to log p(x), averaged over the rows,
    # shrinks with k (about 3.5, 0.24 and 0.01 nats here), and it never exceeds log p(x) beyond noise.
    gaps = {k: float((exact - d.mean(0)).mean()) for k, d in draws.items()}
    assert gaps[1] > gaps[10] + 1.0 and gaps[10] > gaps[100] + 0.1
    for k, d in draws.items():
        standard_error = d.std(0) / math.sqrt(d.shape[0])
        assert bool((d.mean(0) < exact + 4 * standard_error).all()), k
    assert float((exact - far).abs().max()) < 0.02  # k -> infinity: log p(x)


def test_flow_posterior_scores_its_samples_by_the_change_of_variables():
    """log q_K(z_K) from the sampler (log q_0 - log|det dg/dz_0|) equals the density obtained the other
    way, by the flow's forward map back to z_0; and an identity flow leaves the bound unchanged."""
    torch.manual_seed(0)
    mask = half_mask(2, 1, kind="alternate")
    net = MLP(*Coupling.conditioner_sizes(mask, Affine(), 0), hidden=8, layers=1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    flow = Compose([Coupling(mask, net, Affine())]).double()
    encoder = _ExactEncoder(mean_scale=0.8)
    vae, x = _linear_vae(encoder, posterior_flow=flow), _data(4)
    z, log_q = vae.posterior_sample(x, k=5)
    with torch.no_grad():
        z0, logdet = flow(z.reshape(-1, 2))
        h = encoder(x)
        mu, log_sigma = h[:, :2], h[:, 2:]
        eps = (z0.reshape(z.shape) - mu) / log_sigma.exp()
        log_q0 = (-0.5 * (eps ** 2 + math.log(2 * math.pi)) - log_sigma).sum(-1)
    torch.testing.assert_close(log_q, log_q0 + logdet.reshape(log_q.shape), rtol=0, atol=1e-9)
    planar = Planar(2).double()
    with torch.no_grad():
        for p in planar.parameters():
            p.zero_()  # u = 0: the identity map
    torch.manual_seed(1)
    with_identity = _linear_vae(_ExactEncoder(), posterior_flow=Compose([planar])).elbo(x, k=3)
    torch.testing.assert_close(with_identity, _exact_log_px(x), rtol=0, atol=1e-10)


def test_training_raises_the_bound_on_binary_digits():
    """A Bernoulli VAE on binarised 8x8 digits: 300 Adam steps raise the ELBO, the IWAE bound sits
    above it, and samples are probabilities."""
    from flowlib.data import load_digits

    x = (load_digits()[0].float().flatten(1) > 8).float()  # 1259 training digits, binarised
    train, test = x[:1000], x[1000:]
    torch.manual_seed(0)
    vae = VAE(64, 8, hidden=64)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(vae.elbo(test).mean())
    for step in range(300):
        batch = train[torch.randint(0, len(train), (64,), generator=torch.Generator().manual_seed(step))]
        opt.zero_grad()
        (-vae.log_prob(batch).mean()).backward()
        opt.step()
    with torch.no_grad():
        after, iwae = float(vae.elbo(test, k=10).mean()), float(vae.iwae(test, k=100).mean())
        samples = vae.sample(16)
    assert after > before + 10  # nats per image
    assert iwae > after
    assert samples.shape == (16, 64) and bool(((samples >= 0) & (samples <= 1)).all())


def test_bad_input_names_the_call():
    vae = VAE(4, 2, hidden=8)
    with pytest.raises(FlowInputError, match=r"VAE.log_weights: expected data of shape \(batch, 4\)"):
        vae.elbo(torch.zeros(3, 5))
    with pytest.raises(FlowInputError, match="k"):
        vae.iwae(torch.zeros(3, 4), k=0)
    with pytest.raises(FlowInputError, match="likelihood"):
        VAE(4, 2, likelihood="poisson")
    with pytest.raises(FlowInputError, match="posterior_flow"):
        VAE(4, 2, posterior_flow=nn.Linear(2, 2))


def test_fit_trains_a_vae_like_a_flow():
    """flowlib.train.fit minimises VAE.loss = -ELBO (train_samples=1), with validation in nats."""
    from flowlib.data import load_digits
    from flowlib.train import fit

    x = (load_digits()[0].float().flatten(1) > 8).float()
    torch.manual_seed(0)
    vae = VAE(64, 8, hidden=64)
    with torch.no_grad():
        before = float(vae.elbo(x[1000:]).mean())
    result = fit(vae, x[:1000], val_data=x[1000:], steps=200, batch_size=64, lr=3e-3, seed=0, progress=False)
    with torch.no_grad():
        after = float(vae.elbo(x[1000:], k=10).mean())
    assert after > before + 10 and result.best_val < -before


def test_gaussian_decoder_uses_its_latent_on_the_eight_gaussians():
    """Against posterior collapse: with the default start (decoder sigma 0.3) 400 fit steps give
    encoder means that vary with x in both coordinates; started at sigma 1 the first one collapsed
    (its means constant to 0.01) in the same run, the ELBO 0.8 nats lower."""
    from flowlib.data import EightGaussians
    from flowlib.train import fit

    toy = EightGaussians()
    g = torch.Generator().manual_seed(0)
    train, test = toy.sample(20_000, generator=g), toy.sample(2000, generator=g)
    elbos = {}
    for sigma in (0.3, 1.0):
        torch.manual_seed(0)
        vae = VAE(2, 2, hidden=64, likelihood="gaussian", decoder_sigma=sigma)
        fit(vae, train, steps=400, batch_size=256, lr=3e-3, seed=0, progress=False)
        with torch.no_grad():
            spread = vae.encode(test)[0].std(0)
            elbos[sigma] = float(vae.elbo(test, k=10).mean())
        if sigma == 0.3:
            assert bool((spread > 0.5).all()), spread
        else:
            assert float(spread.min()) < 0.1, spread
    assert elbos[0.3] > elbos[1.0] + 0.5
    with pytest.raises(FlowInputError, match="decoder_sigma"):
        VAE(2, 2, decoder_sigma=0.0)
