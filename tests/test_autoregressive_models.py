"""flowlib's MAF, IAF and NSF builders, and MADE: structure, directions, training, bad input."""

from __future__ import annotations

import pytest
import torch

from flowlib import grading
from flowlib.autoregressive import MADE, InverseAutoregressive, MaskedAutoregressive
from flowlib.data.toys import get_toy
from flowlib.models import iaf, maf, nsf
from flowlib.transformers import Affine


@pytest.mark.parametrize("order", [None, [3, 0, 4, 1, 2]])
@pytest.mark.parametrize("layers", [1, 3])
def test_made_jacobian_is_triangular_in_its_order(order: list[int] | None, layers: int) -> None:
    """Output i depends on input j only if j comes before i in the order (autograd, every group)."""
    torch.manual_seed(0)
    made = MADE(5, params=3, hidden=11, layers=layers, order=order, activation=torch.nn.Tanh).double()
    with torch.no_grad():
        for p in made.parameters():
            p.normal_()
    x = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v.unsqueeze(0)).squeeze(0), x)  # (15, 5)
    position = torch.empty(5, dtype=torch.long)
    position[torch.as_tensor(order if order is not None else range(5))] = torch.arange(5)
    allowed = position.unsqueeze(0) < position.unsqueeze(1)  # (i, j): j before i
    for group in jac.reshape(3, 5, 5):
        assert not bool(group[~allowed].abs().max() > 0), "an output sees an input at or after it"
    assert torch.equal(made.connectivity(), allowed)
    # And every allowed dependence is really there (hidden degrees cycle; tanh has no dead units).
    assert bool((jac.reshape(3, 5, 5).abs().sum(0)[allowed] > 0).all())


def test_made_on_given_degrees_has_the_masks_the_degrees_say() -> None:
    """MADE(degrees=...): masks m_hidden >= m_before, outputs m_out > m_last; the implied order;
    two equal-degree blocks give a coupling's dependence (autograd)."""
    inputs, hidden = torch.tensor([2, 3, 1]), [torch.tensor([1, 2, 2, 1]), torch.tensor([2, 1])]
    made = MADE(3, params=2, degrees=[inputs, *hidden], activation=torch.nn.Tanh).double()
    masks = [m.mask.bool() for m in made.net if hasattr(m, "mask")]
    assert torch.equal(masks[0], hidden[0][:, None] >= inputs[None, :])
    assert torch.equal(masks[1], hidden[1][:, None] >= hidden[0][None, :])
    assert torch.equal(masks[2], inputs.repeat(2)[:, None] > hidden[1][None, :])
    assert made.order.tolist() == [2, 0, 1]
    blocks = MADE(5, params=2, degrees=[torch.tensor([1, 1, 1, 2, 2]), torch.ones(6, dtype=torch.long)],
                  activation=torch.nn.Tanh).double()
    with torch.no_grad():
        for p in blocks.parameters():
            p.normal_()
    jac = torch.autograd.functional.jacobian(lambda v: blocks(v.unsqueeze(0)).squeeze(0),
                                             torch.randn(5, dtype=torch.float64))
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[3:, :3] = True  # the second block sees all of the first, nothing sees the second
    assert torch.equal(jac.reshape(2, 5, 5).abs().sum(0) > 0, expected)
    with pytest.raises(grading.FlowInputError, match="expected 3 input degrees"):
        MADE(3, 2, degrees=[torch.tensor([1, 2]), torch.tensor([1])])
    with pytest.raises(grading.FlowInputError, match="the inputs' degrees must be >= 1"):
        MADE(2, 2, degrees=[torch.tensor([0, 1]), torch.tensor([1])])
    with pytest.raises(grading.FlowInputError, match="integer tensor"):
        MADE(2, 2, degrees=[torch.tensor([1.0, 2.0]), torch.tensor([1])])
    with pytest.raises(grading.FlowInputError, match="at least one hidden"):
        MADE(2, 2, degrees=[torch.tensor([1, 2])])


def test_made_refuses_bad_orders_and_inputs() -> None:
    with pytest.raises(grading.FlowInputError, match="permutation of 0..2"):
        MADE(3, 2, order=[0, 0, 1])
    with pytest.raises(grading.FlowInputError, match=r"MADE: expected input of shape \(batch, 3\)"):
        MADE(3, 2)(torch.zeros(2, 4))
    with pytest.raises(grading.FlowInputError, match="params=transformer.params"):
        MaskedAutoregressive(MADE(3, 3), Affine())
    with pytest.raises(grading.FlowInputError, match="MADE conditioner"):
        InverseAutoregressive(torch.nn.Linear(3, 6), Affine())


@pytest.mark.parametrize("builder", [lambda: maf(3, layers=3, hidden=16),
                                     lambda: maf(3, layers=3, hidden=16, transformer="spline"),
                                     lambda: iaf(3, layers=3, hidden=16),
                                     lambda: nsf(3, layers=3, hidden=16),
                                     lambda: nsf(3, structure="autoregressive", layers=3, hidden=16)],
                         ids=["maf", "maf-spline", "iaf", "nsf-coupling", "nsf-ar"])
def test_builders_are_normalised_and_invertible(builder) -> None:
    torch.manual_seed(0)
    model = builder()
    with torch.no_grad():
        model.log_prob(torch.randn(256, 3))  # ActNorm's data-dependent start
        for name, p in model.named_parameters():
            if "conditioner" in name:
                p.add_(0.2 * torch.randn_like(p))  # away from the identity
        x = torch.randn(64, 3)
        z, logdet = model.flow(x)
        back, _ = model.flow.inverse(z)
        assert torch.allclose(back, x, atol=1e-4)
        samples = model.sample(8)
        assert samples.shape == (8, 3) and torch.isfinite(model.log_prob(samples)).all()


def test_maf_learns_two_moons_in_a_few_hundred_steps() -> None:
    torch.manual_seed(0)
    toy = get_toy("two_moons")
    g = torch.Generator().manual_seed(1)
    for model in (maf(2, layers=4, hidden=32), nsf(2, layers=4, hidden=32)):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        first = None
        for _ in range(300):
            x = toy.sample(256, generator=g)
            loss = -model.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = float(loss) if first is None else first
        with torch.no_grad():
            test = -model.log_prob(toy.sample(4096, generator=g)).mean()
            entropy = -toy.log_prob(toy.sample(4096, generator=g)).mean()
        assert float(test) < first - 0.5 and float(test) - float(entropy) < 0.5, (first, float(test))


def test_builders_refuse_bad_arguments() -> None:
    with pytest.raises(grading.FlowInputError, match="transformer"):
        maf(2, transformer="cubic")
    with pytest.raises(grading.FlowInputError, match="structure"):
        nsf(2, structure="tree")
    with pytest.raises(grading.FlowInputError, match="d >= 2"):
        nsf(1)
    assert nsf(1, structure="autoregressive", layers=2, hidden=8).sample(3).shape == (3, 1)


def test_tarflow_learns_the_digits_and_samples() -> None:
    """The transformer flow trains on the 8x8 digits (17 grey levels) below the uniform model's
    log2(17) = 4.09 bits/dim within 100 steps (measured: 2.78 in about 1.5 CPU-seconds), and samples
    grey levels by T passes per block."""
    from flowlib.data.images import load_digits
    from flowlib.tarflow import tarflow_image

    torch.manual_seed(0)
    train, _ = load_digits("train")
    test, _ = load_digits("test")
    model = tarflow_image((1, 8, 8), patch=2, blocks=2, width=32, layers=1, heads=2, grey_levels=17)
    model.initialize(train[:256])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        batch = train[torch.randint(0, len(train), (64,), generator=g)]
        loss = model.bits_per_dim(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test_bpd = float(model.bits_per_dim(test).mean())
        levels = model.sample_levels(4, temperature=0.7)
    assert test_bpd < 3.2, test_bpd
    assert levels.shape == (4, 1, 8, 8) and int(levels.min()) >= 0 and int(levels.max()) <= 16
