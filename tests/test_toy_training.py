"""A small RealNVP trained briefly on a 2D toy gets closer to it and stays normalised.

This is the end-to-end check of the toys, the model builder and the metrics together:
KL(data || model) measured with the toy's exact log-density must fall, and the learned
density must still integrate to 1 over a box that holds its mass.
"""

from __future__ import annotations

import pytest
import torch

from flowlib.data import get_toy
from flowlib.metrics import integrate_density_2d, kl_divergence_estimate
from flowlib.models import realnvp

STEPS = 300
BATCH = 256


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU the threads'
    contention made these 5-second runs take minutes; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight_gaussians", "two_moons", "checkerboard"])
def test_brief_training_lowers_kl_and_keeps_the_density_normalised(name, one_thread):
    torch.manual_seed(0)
    toy = get_toy(name)
    data = torch.Generator().manual_seed(1)
    model = realnvp(2, couplings=4, hidden=64)
    model.train()
    # The first training-mode pass initialises ActNorm from data: "untrained" means after it,
    # so the drop below comes from the gradient steps, not from standardising the data.
    with torch.no_grad():
        model.log_prob(toy.sample(512, generator=data))
    before = kl_divergence_estimate(toy, model, n=20_000, generator=torch.Generator().manual_seed(2))

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        loss = -model.log_prob(toy.sample(BATCH, generator=data)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    after = kl_divergence_estimate(toy, model, n=20_000, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(torch.tensor(after.value))
    # Measured (torch 2.x, CPU): 1.44 -> 0.47, 1.01 -> 0.24, 1.05 -> 0.63 nats.
    assert after.value < 0.8 * before.value
    assert after.value < before.value - 5 * (before.stderr + after.stderr)

    # The box reaches 3 units beyond the toy's own, where the model's tails have died out.
    box = toy.bounds[1] + 3.0
    assert integrate_density_2d(model, bounds=box, resolution=400) == pytest.approx(1.0, abs=1e-2)
