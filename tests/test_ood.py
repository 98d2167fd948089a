"""flowlib.ood: the AUROC against a brute-force count, the complexity of known images, the scores."""

from __future__ import annotations

import pytest
import torch

from flowlib import FlowInputError
from flowlib.image_models import glow_image
from flowlib.ood import (
    auroc,
    complexity_bits,
    complexity_corrected_score,
    likelihood_ratio_score,
    nll_score,
    perturb_pixels,
    roc_curve,
    typicality_score,
)


def brute_force_auroc(s_in: torch.Tensor, s_out: torch.Tensor) -> float:
    """P(s_out > s_in) + P(s_out == s_in) / 2 over every pair."""
    greater = (s_out[:, None] > s_in[None, :]).double().mean()
    equal = (s_out[:, None] == s_in[None, :]).double().mean()
    return float(greater + equal / 2)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_the_pairwise_probability(seed):
    g = torch.Generator().manual_seed(seed)
    s_in = torch.randint(0, 6, (40,), generator=g).double()  # small integers: many ties
    s_out = torch.randint(1, 8, (25,), generator=g).double()
    assert auroc(s_in, s_out) == pytest.approx(brute_force_auroc(s_in, s_out), abs=1e-12)


def test_auroc_extremes_and_the_curve():
    assert auroc(torch.zeros(3), torch.ones(4)) == 1.0
    assert auroc(torch.ones(3), torch.zeros(4)) == 0.0
    assert auroc(torch.ones(3), torch.ones(4)) == 0.5
    s_in, s_out = torch.randn(200), torch.randn(100) + 1
    fpr, tpr = roc_curve(s_in, s_out)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert (fpr[1:] >= fpr[:-1]).all() and (tpr[1:] >= tpr[:-1]).all()
    # The area under the drawn curve is the AUROC.
    area = float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum())
    assert area == pytest.approx(auroc(s_in, s_out), abs=1e-9)
    with pytest.raises(FlowInputError, match="finite"):
        auroc(torch.tensor([1.0, float("nan")]), torch.ones(2))


def test_complexity_of_known_images():
    flat = torch.full((2, 1, 28, 28), 7.0)
    noise = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float()
    ramp = torch.arange(28.0).repeat(28, 1).reshape(1, 1, 28, 28) * 9  # every row the same ramp
    flat_bits, noise_bits, ramp_bits = complexity_bits(flat), complexity_bits(noise), complexity_bits(ramp)
    assert flat_bits.max() < 0.3 and noise_bits.min() > 7.5  # nothing to say vs incompressible
    assert ramp_bits.item() < 0.5  # the Sub filter turns each row of a ramp into a constant
    assert complexity_bits(noise[:, 0]).shape == (2,)


def test_scores_on_a_small_model():
    torch.manual_seed(0)
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17)
    x = torch.randint(0, 17, (6, 1, 8, 8))
    bpd = nll_score(model, x)
    assert bpd.shape == (6,) and torch.isfinite(bpd).all()
    torch.manual_seed(1)
    a = nll_score(model, x)
    torch.manual_seed(1)
    torch.testing.assert_close(likelihood_ratio_score(model, model, x), torch.zeros(6, dtype=torch.float64),
                               atol=0.2, rtol=0)  # the same model: only dequantization noise differs
    corrected = complexity_corrected_score(model, x)
    assert corrected.shape == (6,)
    typ = typicality_score(model, x, train_bpd=a.mean(), group=2)
    assert typ.shape == (3,) and (typ >= 0).all()
    with pytest.raises(FlowInputError, match="no group"):
        typicality_score(model, x, train_bpd=1.0, group=7)
    with pytest.raises(FlowInputError, match="ImageFlowModel"):
        nll_score(torch.nn.Linear(2, 2), x)


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_counts_every_threshold(seed):
    g = torch.Generator().manual_seed(seed)
    s_in = torch.randint(0, 9, (30,), generator=g).double()
    s_out = torch.randint(2, 12, (17,), generator=g).double()
    fpr, tpr = roc_curve(s_in, s_out)
    thresholds = sorted(set(s_in.tolist()) | set(s_out.tolist()), reverse=True)
    assert len(fpr) == len(thresholds) + 1
    for k, t in enumerate(thresholds, start=1):  # the rates at each threshold, counted one by one
        assert fpr[k] == pytest.approx(sum(v >= t for v in s_in.tolist()) / 30)
        assert tpr[k] == pytest.approx(sum(v >= t for v in s_out.tolist()) / 17)


def test_perturb_pixels():
    x = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    y = perturb_pixels(x, rate=0.2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    changed = (y != x).double().mean().item()
    assert 0.2 * (1 - 1 / 256) - 0.01 < changed < 0.2 + 0.01  # a replaced pixel stays 0 with chance 1/256
    assert int(y.max()) <= 255
    a = perturb_pixels(x.float(), 0.1, generator=torch.Generator().manual_seed(3))
    b = perturb_pixels(x.float(), 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(perturb_pixels(x, 0.0), x)
    with pytest.raises(FlowInputError, match="rate"):
        perturb_pixels(x, 1.5)


def test_bits_per_dim_each_is_the_model_figure_in_any_batches():
    """The one per-image bits/dim of flowlib (nll_score and mean_bits_per_dim are built on it): the
    model's own bits_per_dim, the same for any batch size with the same noise, a context per row."""
    from flowlib.metrics import bits_per_dim_each, mean_bits_per_dim

    torch.manual_seed(0)
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17, classes=3)
    x, y = torch.randint(0, 17, (7, 1, 8, 8)), torch.randint(0, 3, (7,))
    torch.manual_seed(5)
    with torch.no_grad():
        whole = model.eval().bits_per_dim(x, context=y).double()
    for batch in (7, 3, 1):
        torch.manual_seed(5)  # uniform dequantization draws one row at a time: batching keeps the noise
        torch.testing.assert_close(bits_per_dim_each(model, x, batch=batch, context=y), whole)
    torch.manual_seed(5)
    assert mean_bits_per_dim(model, x, context=y) == pytest.approx(float(whole.mean()))
    with pytest.raises(FlowInputError, match="one context row per image"):
        bits_per_dim_each(model, x, context=y[:3])
