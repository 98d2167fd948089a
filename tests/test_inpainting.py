"""flowlib.inpainting: the mask family, the observed pixels kept, a MAP completion whose answer is known."""

from __future__ import annotations

import pytest
import torch

from flowlib import FlowInputError
from flowlib.image_models import glow_image
from flowlib.inpainting import (
    inpaint_conditional,
    inpaint_langevin,
    inpaint_optimise,
    inpainting_context,
    inpainting_error,
    inpainting_masks,
    langevin_step,
    latent_log_posterior,
    map_latent,
    to_unit,
)


def test_masks_hide_a_square_or_a_half():
    masks = inpainting_masks(200, size=28, generator=torch.Generator().manual_seed(3))
    hidden = (1 - masks).sum((1, 2, 3))
    halves = hidden == 28 * 14
    squares = ~halves
    assert 0.35 < halves.float().mean() < 0.65
    sides = hidden[squares].sqrt()
    assert torch.equal(sides, sides.round()) and sides.min() >= 10 and sides.max() <= 18
    again = inpainting_masks(200, size=28, generator=torch.Generator().manual_seed(3))
    assert torch.equal(masks, again)
    with pytest.raises(FlowInputError, match="square sides"):
        inpainting_masks(2, size=8, square=(3, 9))


def test_untrained_model_completes_with_its_mode():
    """A glow that starts as the identity after the logit: p(z) = N(0, I) on logit(y), whose mode
    is y = 1/2 at every pixel. MAP inpainting must fill the hidden pixels with 1/2, keep the others."""
    torch.manual_seed(0)
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17)
    model.initialize(torch.randint(0, 17, (64, 1, 8, 8)))  # ActNorm: fixed affine maps of its own
    with torch.no_grad():  # undo ActNorm's data-dependent start so the flow is exactly the logit
        for module in model.modules():
            for name in ("log_scale", "bias", "shift"):
                if hasattr(module, name) and isinstance(getattr(module, name), torch.nn.Parameter):
                    getattr(module, name).zero_()
    x = torch.randint(0, 17, (3, 1, 8, 8))
    mask = inpainting_masks(3, size=8, generator=torch.Generator().manual_seed(0))
    filled = inpaint_optimise(model, x, mask, steps=300, lr=0.1, progress=False)
    y = to_unit(x, 17)
    assert torch.equal(filled[mask.expand_as(y) == 1], y[mask.expand_as(y) == 1])
    assert (filled[mask.expand_as(y) == 0] - 0.5).abs().max() < 0.02


def test_langevin_and_conditional_keep_the_observed_pixels():
    torch.manual_seed(0)
    x = torch.randint(0, 17, (2, 1, 8, 8))
    mask = inpainting_masks(2, size=8, generator=torch.Generator().manual_seed(1))
    y, m = to_unit(x, 17), mask.expand(2, 1, 8, 8) == 1
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17)
    chains = inpaint_langevin(model, x, mask, samples=3, steps=20, progress=False)
    assert chains.shape == (3, 2, 1, 8, 8) and torch.isfinite(chains).all()
    assert all(torch.equal(c[m], y[m]) for c in chains)
    assert not torch.allclose(chains[0], chains[1])  # the posterior has a spread
    conditional = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17, context_shape=(2, 8, 8))
    out = inpaint_conditional(conditional, x, mask, samples=2)
    assert out.shape == (2, 2, 1, 8, 8) and all(torch.equal(c[m], y[m]) for c in out)
    assert inpainting_context(x, mask, 17).shape == (2, 2, 8, 8)
    with pytest.raises(FlowInputError, match="not conditional"):
        inpaint_conditional(model, x, mask)


def test_error_counts_hidden_pixels_only():
    truth = torch.zeros(2, 1, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    mask[:, :, :2] = 0  # 8 hidden pixels each
    guess = truth.clone()
    guess[0, :, :2] = 0.5  # wrong by 0.5 on every hidden pixel
    guess[:, :, 2:] = 9.0  # observed pixels: never counted
    expected = torch.tensor([0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(inpainting_error(truth, guess, mask), expected)
    with pytest.raises(FlowInputError, match="no hidden pixel"):
        inpainting_error(truth, guess, torch.ones(2, 1, 4, 4))


def test_fill_may_be_an_image():
    """The start may fill the hidden pixels with an image (e.g. the mean training image), one for all or
    one per image; a wrong shape or a grey level outside [0, 1] is refused."""
    torch.manual_seed(0)
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17)
    x = torch.randint(0, 17, (2, 1, 8, 8))
    mask = inpainting_masks(2, size=8, generator=torch.Generator().manual_seed(1))
    y, m = to_unit(x, 17), mask.expand(2, 1, 8, 8) == 1
    for fill in (torch.full((1, 1, 8, 8), 0.3), torch.rand(2, 1, 8, 8)):
        start = inpaint_optimise(model, x, mask, steps=0, fill=fill, progress=False)
        # Zero steps: the start image itself (through encode and decode) with the observed pixels kept.
        expected = torch.where(m, y, fill.double().expand_as(y))
        torch.testing.assert_close(start, expected, atol=1e-4, rtol=0)
        chains = inpaint_langevin(model, x, mask, samples=3, steps=2, fill=fill, progress=False)
        assert chains.shape == (3, 2, 1, 8, 8) and all(torch.equal(c[m], y[m]) for c in chains)
    with pytest.raises(FlowInputError, match="fill"):
        inpaint_optimise(model, x, mask, steps=1, fill=torch.zeros(3, 1, 8, 8), progress=False)
    with pytest.raises(FlowInputError, match="fill"):
        inpaint_optimise(model, x, mask, steps=1, fill=1.5, progress=False)


def test_latent_log_posterior_is_the_formula_and_map_climbs_it():
    """log p(z | y_obs) = -|m (decode(z) - y)|^2 / (2 sigma^2) + log N(z; 0, I) for a flow whose base is
    the standard normal; map_latent ends higher than its start, and inpaint_optimise decodes that latent."""
    torch.manual_seed(0)
    model = glow_image((1, 8, 8), hidden=8, blocks=1, grey_levels=17).double()
    x = torch.randint(0, 17, (3, 1, 8, 8))
    mask = inpainting_masks(3, size=8, generator=torch.Generator().manual_seed(2))
    z = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        misfit = ((mask * (model.decode(z) - to_unit(x, 17))) ** 2).flatten(1).sum(1) / (2 * 0.2 ** 2)
        by_hand = -0.5 * (z ** 2).flatten(1).sum(1) - 32 * torch.log(torch.tensor(2 * torch.pi)) - misfit
        torch.testing.assert_close(latent_log_posterior(model, z, x, mask, 0.2), by_hand)
        start = map_latent(model, x, mask, steps=0, sigma=0.2, progress=False)
    found = map_latent(model, x, mask, steps=30, lr=0.05, sigma=0.2, progress=False)
    with torch.no_grad():
        assert bool((latent_log_posterior(model, found, x, mask, 0.2)
                     > latent_log_posterior(model, start, x, mask, 0.2)).all())
        y = to_unit(x, 17)
        filled = inpaint_optimise(model, x, mask, steps=30, lr=0.05, sigma=0.2, progress=False)
        torch.testing.assert_close(filled, torch.where(mask == 1, y, model.decode(found).clamp(0, 1)))
    with pytest.raises(FlowInputError, match="latent_log_posterior: expected images"):
        latent_log_posterior(model, z, x[:, :, :4], mask, 0.2)
    with pytest.raises(FlowInputError, match="sigma"):
        map_latent(model, x, mask, sigma=0.0, progress=False)


def test_langevin_step_samples_a_gaussian():
    """Chains of langevin_step on N(mu, s^2) settle at mean mu and at the variance of the unadjusted
    chain, s^2 / (1 - eps / (2 s^2)); a step size that is not positive is refused."""
    g = torch.Generator().manual_seed(0)
    mu, s, eps = 2.0, 0.5, 0.01
    z = torch.zeros(20000, dtype=torch.float64)
    for _ in range(400):
        z = langevin_step(z, -(z - mu) / s ** 2, eps, torch.randn(20000, generator=g, dtype=torch.float64))
    assert abs(float(z.mean()) - mu) < 0.01
    assert abs(float(z.var()) - s ** 2 / (1 - eps / (2 * s ** 2))) < 0.01
    with pytest.raises(FlowInputError, match="step_size"):
        langevin_step(z, z, 0.0, z)
