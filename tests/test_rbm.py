"""flowlib.families.rbm: the free energy and log Z against brute force, AIS against the exact log Z,
and contrastive divergence raising the exact log-likelihood of binarised digits."""

from __future__ import annotations

import itertools

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data import load_digits
from flowlib.families.rbm import RBM


def _random_rbm(visible: int, hidden: int, seed: int, scale: float = 1.0) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(visible, hidden)
    with torch.no_grad():
        rbm.W.normal_(0, scale)
        rbm.b.normal_(0, 1)
        rbm.c.normal_(0, 1)
    return rbm


def test_free_energy_and_partition_function_by_brute_force():
    rbm = _random_rbm(5, 3, seed=0)
    states_v = torch.tensor(list(itertools.product([0, 1], repeat=5)), dtype=torch.float64)
    states_h = torch.tensor(list(itertools.product([0, 1], repeat=3)), dtype=torch.float64)
    with torch.no_grad():
        # -E(v, h) = b.v + c.h + v^T W h for every pair: (32, 8).
        neg_energy = (states_v @ rbm.b)[:, None] + (states_h @ rbm.c)[None, :] + states_v @ rbm.W @ states_h.T
        torch.testing.assert_close(rbm.free_energy(states_v), -torch.logsumexp(neg_energy, 1))
        assert rbm.log_partition_exact() == pytest.approx(float(torch.logsumexp(neg_energy.flatten(), 0)))
        # The probabilities of all 32 visible states sum to one.
        total = rbm.log_prob(states_v, rbm.log_partition_exact()).exp().sum()
    assert float(total) == pytest.approx(1.0)


def test_ais_matches_the_exact_log_partition_function():
    rbm = _random_rbm(30, 10, seed=1, scale=0.5)
    exact = rbm.log_partition_exact()
    estimate = rbm.log_partition_ais(runs=200, betas=1000, generator=torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, abs=0.1)
    crude = rbm.log_partition_ais(runs=200, betas=3, generator=torch.Generator().manual_seed(0))
    assert abs(crude - exact) > abs(estimate - exact)  # too few temperatures: a worse estimate


def test_contrastive_divergence_raises_the_exact_likelihood_of_digits():
    x = (load_digits()[0].flatten(1) > 8).double()  # 1259 binarised 8x8 training digits
    train, test = x[:1000], x[1000:]
    torch.manual_seed(0)
    rbm = RBM(64, 12)
    rbm.set_base_from_data(train)
    with torch.no_grad():
        rbm.b.copy_(rbm.base_bias)  # start from the pixel marginals, as Hinton (2010) recommends
    with torch.no_grad():
        before = float(rbm.log_prob(test, rbm.log_partition_exact()).mean())
    opt = torch.optim.SGD(rbm.parameters(), lr=0.1, momentum=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        batch = train[torch.randint(0, 1000, (50,), generator=g)]
        opt.zero_grad()
        rbm.cd_loss(batch, k=1, generator=g).backward()
        opt.step()
    log_z = rbm.log_partition_exact()
    with torch.no_grad():
        after = float(rbm.log_prob(test, log_z).mean())
    assert after > before + 3  # nats per digit (-24.2 -> -20.6 with these seeds)
    ais = rbm.log_partition_ais(runs=100, betas=500, generator=torch.Generator().manual_seed(2))
    assert ais == pytest.approx(log_z, abs=0.5)
    samples = rbm.gibbs(train[:16], steps=50, generator=g)
    assert samples.shape == (16, 64) and bool(((samples == 0) | (samples == 1)).all())


def test_bad_input_names_the_call():
    rbm = RBM(4, 2)
    with pytest.raises(FlowInputError, match=r"RBM.free_energy: expected binary data of shape \(batch, 4\)"):
        rbm.free_energy(torch.zeros(3, 5))
    with pytest.raises(FlowInputError, match="at most 20 hidden"):
        RBM(4, 21).log_partition_exact()
