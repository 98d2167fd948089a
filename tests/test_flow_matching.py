"""flowlib.families.flow_matching: the likelihood of a field whose flow is known, the divergence
against the Jacobian's trace, and a trained model whose density integrates to one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowlib import FlowInputError
from flowlib.data import EightGaussians
from flowlib.families.flow_matching import FlowMatching, divergence
from flowlib.metrics import integrate_density_2d
from flowlib.nets import MLP


class _Linear(nn.Module):
    """v(x, t) = a x: the flow is x_t = x_0 e^{a t}, so p_1 = N(0, e^{2a} I)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        return self.a * xt[:, :-1]


def test_log_prob_and_samples_of_a_field_with_a_known_flow():
    a, d = 0.7, 3
    model = FlowMatching(d, velocity=_Linear(a))
    x = torch.randn(6, d, dtype=torch.float64)
    exact = -0.5 * (x ** 2).sum(1) / math.exp(2 * a) - d * a - 0.5 * d * math.log(2 * math.pi)
    torch.testing.assert_close(model.log_prob(x, steps=20), exact, rtol=0, atol=1e-7)
    torch.manual_seed(0)
    # Rademacher probes (the default) give eps^T (a I) eps = a d exactly: no noise for a diagonal Jacobian.
    hutchinson = model.log_prob(x, steps=20, method="hutchinson")
    torch.testing.assert_close(hutchinson, exact, rtol=0, atol=1e-7)
    torch.manual_seed(0)
    samples = model.sample(20_000, steps=20)
    assert float(samples.std()) == pytest.approx(math.exp(a), rel=0.02)


def test_divergence_is_the_trace_of_the_jacobian():
    torch.manual_seed(0)
    net = MLP(3, 3, hidden=16, layers=2, activation=nn.SiLU).double()
    with torch.no_grad():
        net.net[-1].weight.normal_(0, 0.5)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    v = net(x)
    traces = torch.stack([torch.autograd.functional.jacobian(net, x[i:i + 1].detach())[0, :, 0, :].trace()
                          for i in range(4)])
    torch.testing.assert_close(divergence(v, x), traces)
    g = torch.Generator().manual_seed(1)
    probes = torch.randn(20_000, 4, 3, generator=g, dtype=torch.float64)
    xs = x.detach().repeat(20_000, 1).requires_grad_(True)
    estimates = divergence(net(xs), xs, "hutchinson", probes.reshape(-1, 3)).reshape(20_000, 4)
    standard_error = estimates.std(0) / math.sqrt(20_000)
    assert bool(((estimates.mean(0) - traces).abs() < 4 * standard_error).all())  # unbiased


def test_trained_model_fits_and_its_density_integrates_to_one():
    toy = EightGaussians()
    data = toy.sample(20_000, generator=torch.Generator().manual_seed(0)) / 2  # within [-3, 3]
    torch.manual_seed(0)
    model = FlowMatching(2, hidden=64, layers=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    test = data[-2000:]
    with torch.no_grad():
        before = float(model.loss(test, generator=torch.Generator().manual_seed(2)))
    start_ll = float(model.log_prob(test[:500], steps=10).mean())
    for _ in range(600):
        batch = data[torch.randint(0, 18_000, (256,), generator=g)]
        opt.zero_grad()
        model.loss(batch, generator=g).backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(test, generator=torch.Generator().manual_seed(2)))
    assert after < before
    assert float(model.log_prob(test[:500], steps=10).mean()) > start_ll + 0.3
    mass = integrate_density_2d(lambda x: model.log_prob(x, steps=10), bounds=5.0, resolution=80)
    assert mass == pytest.approx(1.0, abs=0.03)  # a continuous flow is a density by construction


def test_bad_input_names_the_call():
    model = FlowMatching(2, hidden=8)
    with pytest.raises(FlowInputError, match=r"FlowMatching.log_prob: expected data of shape \(batch, 2\)"):
        model.log_prob(torch.zeros(3, 4))
    with pytest.raises(FlowInputError, match="FlowMatching.loss"):
        model.loss(torch.zeros(3))
    with pytest.raises(FlowInputError, match="method"):
        divergence(torch.zeros(2, 2), torch.zeros(2, 2), "trace")
