"""flowlib.field_models.glow_field: Glow on real-valued maps, a density in nats with no dequantization."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data.lensing import convergence_maps
from flowlib.field_models import glow_field


def _maps(n: int, size: int = 16, seed: int = 0, **kwargs) -> torch.Tensor:
    return convergence_maps(n, size=size, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_density_is_the_change_of_variables_of_the_maps_themselves():
    """log p(x) = log N(f(x); 0, I) + log|det df/dx| on the maps' own scale, and x comes back from z;
    no dequantization term (log p is the same on every call for the same maps)."""
    torch.manual_seed(0)
    model = glow_field((1, 16, 16), depth=2, hidden=16, blocks=1).double()
    x = _maps(64).double()
    with torch.no_grad():
        model.log_prob(x)  # ActNorm starts from this batch
    model.eval()
    with torch.no_grad():
        z, logdet = model.flow(x)
        expected = -0.5 * (z**2).flatten(1).sum(1) - 0.5 * 256 * math.log(2 * math.pi) + logdet
        torch.testing.assert_close(model.log_prob(x), expected)
        torch.testing.assert_close(model.log_prob(x), model.log_prob(x))
        back, _ = model.flow.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    assert model.loss_unit == "nats"


def test_training_on_maps_raises_the_held_out_likelihood():
    torch.manual_seed(1)
    model = glow_field((1, 16, 16), depth=2, hidden=16, blocks=1)
    train, held_out = _maps(512, seed=1), _maps(128, seed=2)
    with torch.no_grad():
        model.log_prob(train[:256])
    model.eval()
    with torch.no_grad():
        before = float(model.log_prob(held_out).mean())
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(40):
        batch = train[torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(step))]
        optimiser.zero_grad()
        (-model.log_prob(batch).mean()).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        after = float(model.log_prob(held_out).mean())
    assert after > before + 10, (before, after)  # nats per map of 256 pixels


def test_a_field_model_conditioned_on_parameters():
    torch.manual_seed(2)
    model = glow_field((1, 16, 16), depth=2, hidden=16, blocks=1, context_shape=(2,))
    theta = torch.tensor([[0.8, 0.3]]).repeat(32, 1)
    x = _maps(32)
    with torch.no_grad():
        model.log_prob(x, context=theta)
    model.eval()
    with torch.no_grad():
        samples = model.sample(5, context=theta[:5])
        assert samples.shape == (5, 1, 16, 16) and bool(torch.isfinite(samples).all())
        assert model.conditional
    with pytest.raises(FlowInputError):
        model.log_prob(x)  # a conditional model needs its context
    with pytest.raises(FlowInputError):
        glow_field((1, 10, 10), scales=2)  # 10 is not divisible by 2^2
