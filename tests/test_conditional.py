"""Conditional flows p(x | c): the context reaches the layers, the doors check it, fit trains on pairs.

The layers themselves go through the autograd harness at fixed contexts (tests/conditional_cases.py
in tests/test_layers_autograd.py); here: that the context matters, the model's doors, the
builders, training on (x, context) pairs, and that unconditional use is unchanged.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conditional_cases import CONDITIONAL_CASES, Conditioned
from torch.utils.data import DataLoader, TensorDataset

from flowlib import FlowInputError
from flowlib.conditional import OneHot, conditioning, context_channels, context_map
from flowlib.data import load_digits
from flowlib.image_models import glow_image, mean_bits_per_dim, realnvp_image
from flowlib.models import iaf, maf, nsf, realnvp_vector
from flowlib.train import fit

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device on this machine"))]


@pytest.mark.parametrize("c", CONDITIONAL_CASES, ids=lambda c: c.name)
def test_the_context_changes_the_map(c):
    """Another context gives another z (a layer that ignored its context would pass the harness)."""
    layer, x = c.make(torch.Generator().manual_seed(5))
    assert isinstance(layer, Conditioned)
    with torch.no_grad():
        z, ld = layer(x)
        other = copy.deepcopy(layer)
        other.bank.copy_(torch.flip(other.bank, dims=[0]) + 0.5)
        z2, ld2 = other(x)
    assert not torch.allclose(z, z2, atol=1e-4)


@pytest.mark.parametrize("c", CONDITIONAL_CASES, ids=lambda c: c.name)
def test_a_missing_context_names_the_layer(c):
    layer, x = c.make(torch.Generator().manual_seed(5))
    with pytest.raises(FlowInputError, match="conditional|context"):
        layer.layer(x)
    with pytest.raises(FlowInputError, match="row"):
        layer.layer(x, layer.bank[:1].expand(x.shape[0] + 1, *layer.bank.shape[1:]))


def test_context_map_and_channels():
    assert context_map(torch.ones(2, 3), torch.zeros(2, 4)).shape == (2, 3)
    image = torch.arange(2 * 16.0).reshape(2, 1, 4, 4)
    mapped = context_map(image, torch.zeros(2, 5, 2, 2))
    assert mapped.shape == (2, 4, 2, 2) and torch.equal(mapped.sum((1, 2, 3)), image.sum((1, 2, 3)))
    assert context_channels((1, 4, 4), (5, 2, 2)) == 4 and context_channels((7,), (3, 8, 8)) == 7
    with pytest.raises(FlowInputError, match="cannot be brought"):
        context_map(torch.zeros(2, 1, 5, 5), torch.zeros(2, 3, 2, 2))
    with pytest.raises(FlowInputError, match="vector contexts"):
        context_map(torch.zeros(2, 1, 2, 2), torch.zeros(2, 3))
    with pytest.raises(FlowInputError, match="3 rows"):
        context_map(torch.zeros(2, 4), torch.zeros(3, 4))


def test_one_hot_and_conditioning_refuse_bad_input():
    with pytest.raises(FlowInputError, match=r"0\.\.2"):
        OneHot(3)(torch.tensor([0, 3]))
    with pytest.raises(FlowInputError, match="integer class labels"):
        OneHot(3)(torch.tensor([0.0, 1.0]))
    with pytest.raises(FlowInputError, match="not both"):
        conditioning(3, (2,), "nsf")
    with pytest.raises(FlowInputError, match=r"vector \(k,\) or image"):
        conditioning(None, (2, 3), "nsf")
    with pytest.raises(FlowInputError, match="vector contexts"):
        nsf(2, context_shape=(1, 4, 4))


BUILDERS = {
    "realnvp": lambda **k: realnvp_vector(3, couplings=2, hidden=8, **k),
    "maf": lambda **k: maf(3, layers=2, hidden=8, **k),
    "iaf": lambda **k: iaf(3, layers=2, hidden=8, **k),
    "nsf": lambda **k: nsf(3, layers=2, hidden=8, **k),
    "nsf-ar": lambda **k: nsf(3, structure="autoregressive", layers=2, hidden=8, **k),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_vector_builders_doors(name):
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    model = BUILDERS[name](classes=4)
    assert model.conditional and model.context_shape == ()
    for p in model.parameters():  # away from the identity start, so that the class matters
        torch.nn.init.normal_(p, std=0.2)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lp = model.log_prob(x, y)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    assert not torch.allclose(lp, model.log_prob(x, (y + 1) % 4))
    # One label for all rows = that label repeated; the round trip holds at fixed context.
    torch.testing.assert_close(model.log_prob(x, 2), model.log_prob(x, torch.full((6,), 2)))
    torch.testing.assert_close(model.decode(model.encode(x, y), y), x, atol=1e-4, rtol=1e-4)
    assert model.sample(5, context=1).shape == (5, 3)
    assert model.sample((2, 3), context=torch.arange(6) % 4).shape == (2, 3, 3)
    mode = model.sample(4, temperature=0.0, context=3)  # T = 0: the mode of p(x | c), four times
    assert torch.allclose(mode, mode[:1].expand(4, 3))
    with pytest.raises(FlowInputError, match="conditional: pass context"):
        model.log_prob(x)
    with pytest.raises(FlowInputError, match="6 contexts"):
        model.log_prob(x, y[:4])
    with pytest.raises(FlowInputError, match=r"0\.\.3"):
        model.sample(2, context=7)
    plain = BUILDERS[name]()
    assert not plain.conditional
    with pytest.raises(FlowInputError, match="not conditional"):
        plain.log_prob(x, y)
    vector = BUILDERS[name](context_shape=(2,))
    assert vector.log_prob(x, torch.randn(6, 2)).shape == (6,)
    with pytest.raises(FlowInputError, match="finite"):
        vector.log_prob(x, torch.full((6, 2), math.nan))


def test_unconditional_models_are_unchanged():
    """Same parameters, same state-dict keys, same values as before the context existed."""
    torch.manual_seed(0)
    a = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17)
    torch.manual_seed(0)
    b = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17, classes=None, context_shape=None)
    assert list(a.state_dict()) == list(b.state_dict())
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    x = torch.randint(0, 17, (4, 1, 8, 8))
    torch.manual_seed(1)
    la = a.log_prob(x)
    torch.manual_seed(1)
    torch.testing.assert_close(la, b.log_prob(x))


@pytest.mark.parametrize("device", DEVICES)
def test_conditional_nsf_learns_a_toy_conditioned_on_a_scalar(device):
    """x | c ~ N((c, -c), 0.1^2 I): after a few hundred steps the samples at c = 0.5 sit at (0.5, -0.5)."""
    torch.manual_seed(0)
    c = torch.rand(4000, 1) * 2 - 1
    x = torch.cat([c, -c], 1) + 0.1 * torch.randn(4000, 2)
    model = nsf(2, layers=3, hidden=32, context_shape=(1,))
    result = fit(model, (x, c), val_data=(x[:500], c[:500]), steps=300, batch_size=256, lr=3e-3,
                 progress=False, device=device)
    assert result.best_val < -1.5  # the exact conditional entropy is 2 log(0.1 sqrt(2 pi e)) = -1.77
    model.cpu()
    s = model.sample(2000, context=torch.tensor([0.5]))
    torch.testing.assert_close(s.mean(0), torch.tensor([0.5, -0.5]), atol=0.03, rtol=0)
    assert (s.std(0) - 0.1).abs().max() < 0.03


def test_fit_takes_pairs_loaders_and_refuses_the_wrong_kind():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (600,))
    x = torch.randn(600, 2) + y[:, None].float()
    model = nsf(2, layers=2, hidden=16, classes=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    result = fit(model, loader, steps=20, progress=False, test_data=(x, y))
    assert math.isfinite(result.test) and result.steps == 20
    with pytest.raises(FlowInputError, match=r"conditional \(p\(x \| c\)\): pass \(x, context\)"):
        fit(model, x, steps=2, progress=False)
    with pytest.raises(FlowInputError, match="not conditional"):
        fit(nsf(2), (x, y), steps=2, progress=False)
    with pytest.raises(FlowInputError, match="one row per sample"):
        fit(model, (x, y[:10]), steps=2, progress=False)
    # An unconditional model still drops a loader's labels.
    assert fit(nsf(2, layers=1, hidden=8), loader, steps=3, progress=False).steps == 3


def test_class_conditional_glow_on_the_digits():
    """Trains on (images, labels); every door takes the labels; a class's samples differ from another's."""
    torch.manual_seed(0)
    x, y = load_digits("train")
    model = glow_image((1, 8, 8), hidden=16, blocks=1, grey_levels=17, classes=10)
    before = mean_bits_per_dim(model, x[:200].float(), context=y[:200])
    fit(model, (x.float(), y), steps=60, batch_size=64, lr=3e-3, progress=False)
    after = mean_bits_per_dim(model, x[:200].float(), context=y[:200])
    assert after < before - 0.3
    # The right label explains an image better than the wrong ones, on average.
    right = model.bits_per_dim(x[:200].float(), context=y[:200]).mean()
    wrong = model.bits_per_dim(x[:200].float(), context=(y[:200] + 5) % 10).mean()
    assert right < wrong
    levels = model.sample_levels(8, temperature=0.7, context=3)
    assert levels.shape == (8, 1, 8, 8) and levels.dtype == torch.int64
    model.initialize(x[:64].float(), context=y[:64])
    torch.testing.assert_close(model.log_prob_continuous(torch.full((2, 1, 8, 8), 0.5), context=1).shape,
                               torch.Size([2]))


def test_image_context_glow_and_realnvp():
    """A context image (e.g. the observed part of a digit) at full resolution, read at every scale."""
    torch.manual_seed(0)
    x = torch.randint(0, 17, (4, 1, 8, 8))
    context = torch.rand(4, 2, 8, 8)
    for builder in (glow_image, realnvp_image):
        model = builder((1, 8, 8), hidden=8, blocks=1, grey_levels=17, context_shape=(2, 8, 8))
        assert model.log_prob(x, context).shape == (4,)
        assert model.sample(4, context=context).shape == (4, 1, 8, 8)
    with pytest.raises(FlowInputError, match="glow_image: .*cannot be brought"):
        glow_image((1, 8, 8), hidden=8, grey_levels=17, context_shape=(1, 6, 6))


def test_bayes_classifier_on_separated_classes():
    """Two Gaussians 6 sigma apart: the class-conditional flow classifies (nearly) every point; the
    posterior is a distribution; a prior that favours a class moves the boundary toward the other."""
    from flowlib.conditional import class_log_posterior, classify
    torch.manual_seed(0)
    y = torch.randint(0, 2, (2000,))
    x = torch.randn(2000, 2) + 6 * y[:, None].float() - 3
    model = nsf(2, layers=2, hidden=16, classes=2)
    fit(model, (x, y), steps=150, batch_size=256, lr=5e-3, progress=False)
    post = class_log_posterior(model, x[:500])
    torch.testing.assert_close(post.exp().sum(1), torch.ones(500, dtype=torch.float64))
    assert (classify(model, x[:500]) == y[:500]).float().mean() > 0.99
    middle = torch.zeros(1, 2)  # on the boundary of a uniform prior: the prior decides
    assert classify(model, middle, prior=torch.tensor([0.999, 0.001])).item() == 0
    assert classify(model, middle, prior=torch.tensor([0.001, 0.999])).item() == 1
    with pytest.raises(FlowInputError, match="class-conditional"):
        class_log_posterior(nsf(2, layers=1, hidden=4), x[:3])
    with pytest.raises(FlowInputError, match="2 probabilities"):
        class_log_posterior(model, x[:3], prior=torch.tensor([0.5, 0.2]))


def test_bayes_rule_in_log_space_from_likelihoods():
    """bayes_log_posterior on hand values far below 0 (exp underflows there), any prior; and
    class_log_posterior is class_log_likelihoods followed by it."""
    import math

    from flowlib.conditional import bayes_log_posterior, class_log_likelihoods, class_log_posterior

    ll = torch.tensor([[-900.0, -900.0 - math.log(3), -2000.0], [-5.0, -5.0, -5.0]], dtype=torch.float64)
    post = bayes_log_posterior(ll).exp()
    torch.testing.assert_close(post[0], torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    prior = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(bayes_log_posterior(ll, prior).exp()[1], prior.double())  # equal likelihoods
    # p(y | x) proportional to p(x | y) p(y): 0.2 * 3 : 0.3 * 1 for the first row.
    torch.testing.assert_close(bayes_log_posterior(ll, prior).exp()[0, :2],
                               torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    with pytest.raises(FlowInputError, match="3 probabilities"):
        bayes_log_posterior(ll, torch.tensor([0.5, 0.5]))
    with pytest.raises(FlowInputError, match=r"\(n, K\)"):
        bayes_log_posterior(torch.zeros(3))
    torch.manual_seed(0)
    model = nsf(2, layers=1, hidden=4, classes=3).eval()
    x = torch.randn(7, 2)
    lik = class_log_likelihoods(model, x, batch=3)
    assert lik.shape == (7, 3) and lik.dtype == torch.float64
    ones = torch.ones(7, dtype=torch.long)
    torch.testing.assert_close(lik[:, 1], model.log_prob(x, ones).double().detach())
    torch.testing.assert_close(class_log_posterior(model, x, prior=prior), bayes_log_posterior(lik, prior))
    with pytest.raises(FlowInputError, match="class-conditional"):
        class_log_likelihoods(nsf(2, layers=1, hidden=4), x)


def test_class_log_likelihoods_share_the_dequantization_noise_across_classes():
    """seed: the same noise for every class (reproducible, the caller's random state untouched);
    None: a fresh draw for each class."""
    from flowlib.conditional import class_log_likelihoods

    torch.manual_seed(0)
    model = glow_image((1, 8, 8), scales=1, depth=1, hidden=4, blocks=1, grey_levels=17, classes=3).eval()
    x = torch.randint(0, 17, (6, 1, 8, 8))
    state = torch.random.get_rng_state()
    a = class_log_likelihoods(model, x, batch=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a, class_log_likelihoods(model, x, batch=4))
    b = class_log_likelihoods(model, x, seed=None)
    assert not torch.allclose(a, b)
