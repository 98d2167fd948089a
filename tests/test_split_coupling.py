"""Split (sliced) couplings: the same maps as the masked ones, with smaller conditioners.

The autograd harness (test_layers_autograd.py) already checks both classes for invertibility
and log-determinants through their ``example()``; here: the equivalence with the masked
layers, the conversion of whole models, the builders' options and the error messages.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flowlib.convnets import GlowConditioner, ResNetConditioner
from flowlib.core import FlowInputError
from flowlib.coupling import AdditiveCoupling, AffineCoupling, channel_mask, checkerboard_mask, half_mask
from flowlib.image_models import count_parameters, glow_image, realnvp_image
from flowlib.models import nice, realnvp
from flowlib.nets import MLP
from flowlib.split_coupling import (
    AdditiveSplitCoupling,
    AffineSplitCoupling,
    split_couplings,
    split_from_masked,
    split_sizes,
)


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


CASES = {
    "channels, parity 1, ResNet": lambda: (
        AffineCoupling(channel_mask(4, 3, 3, 1), ResNetConditioner(4, 8, 6, 1)), (5, 4, 3, 3)),
    "odd channels, Glow net": lambda: (AffineCoupling(channel_mask(5, 2, 2, 0), GlowConditioner(5, 10, 6)),
                                       (5, 5, 2, 2)),
    "vector, alternate mask": lambda: (AffineCoupling(half_mask(5, 1, kind="alternate"), MLP(5, 10, 8, 2)),
                                       (5, 5)),
    "vector, additive": lambda: (AdditiveCoupling(half_mask(6, 0), MLP(6, 6, 8, 1)), (5, 6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_from_masked_is_the_same_map(case: str) -> None:
    masked, shape = CASES[case]()
    _randomise(masked)
    split = split_from_masked(masked)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    z_m, ld_m = masked(x)
    z_s, ld_s = split(x)
    assert torch.allclose(z_s, z_m, atol=1e-6) and torch.allclose(ld_s, ld_m, atol=1e-5)
    back, ld_inv = split.inverse(z_s)
    assert torch.allclose(back, x, atol=1e-5) and torch.allclose(ld_inv, -ld_s, atol=1e-5)
    # the conditioner lost exactly the weights that only ever saw or wrote zeros
    assert count_parameters(split) < count_parameters(masked)


def test_split_sizes_and_the_gathered_path() -> None:
    assert split_sizes(channel_mask(5, 2, 2, 0)) == (2, 3)
    assert split_sizes(channel_mask(5, 2, 2, 1)) == (3, 2)
    mask = half_mask(5, 0, kind="alternate")  # kept {0, 2, 4}, moved {1, 3}
    layer = AffineSplitCoupling(mask, MLP(3, 4, hidden=8, layers=1))
    _randomise(layer)
    x = torch.randn(7, 5)
    z, _ = layer(x)
    assert torch.equal(z[:, [0, 2, 4]], x[:, [0, 2, 4]]), "the kept coordinates must pass unchanged"
    assert not torch.allclose(z[:, [1, 3]], x[:, [1, 3]])
    kept, moved = layer.split(x)
    assert torch.equal(layer.join(kept, moved), x)


def test_state_dict_holds_only_the_conditioner() -> None:
    layer = AffineSplitCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 4, 4, 1))
    assert all(k.startswith("conditioner.") for k in layer.state_dict())


def test_errors_name_what_was_expected() -> None:
    with pytest.raises(FlowInputError, match="checkerboard mask cannot be sliced"):
        AffineSplitCoupling(checkerboard_mask(2, 4, 4, 0), ResNetConditioner(1, 2, 4, 1))
    with pytest.raises(FlowInputError, match="keep some entries"):
        AdditiveSplitCoupling(torch.ones(4), MLP(4, 1))
    layer = AffineSplitCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 2, 4, 1))  # 2, not 4
    with pytest.raises(FlowInputError, match=r"map 2 kept to 4 channels"):
        layer(torch.randn(3, 4, 2, 2))
    good = AffineSplitCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 4, 4, 1))
    with pytest.raises(FlowInputError, match=r"\(batch, 4, 2, 2\)"):
        good(torch.randn(3, 4, 3, 3))
    with pytest.raises(FlowInputError, match="clamp"):
        AffineSplitCoupling(half_mask(4, 0), MLP(2, 4), clamp=-1.0)
    with pytest.raises(FlowInputError, match="AffineCoupling or AdditiveCoupling"):
        split_from_masked(good)


@pytest.mark.parametrize("conditioner", ["resnet", "glow"])
def test_whole_glow_converts_without_changing_its_density(conditioner: str) -> None:
    torch.manual_seed(0)
    masked = glow_image((1, 8, 8), levels=2, steps=2, hidden=8, blocks=1, bins=17, coupling="mask",
                        conditioner=conditioner)
    _randomise(masked, scale=0.1)
    split = glow_image((1, 8, 8), levels=2, steps=2, hidden=8, blocks=1, bins=17, conditioner=conditioner)


    converted = copy.deepcopy(masked)
    assert split_couplings(converted) == 4
    # the converted model has exactly the split builder's layout: its weights load there
    split.load_state_dict(converted.state_dict())
    x = torch.randint(0, 17, (6, 1, 8, 8))
    torch.manual_seed(1)
    lp_masked = masked.log_prob(x)
    torch.manual_seed(1)
    lp_split = split.log_prob(x)
    assert torch.allclose(lp_split, lp_masked, atol=1e-4)
    assert count_parameters(split) < count_parameters(masked)


def test_realnvp_image_slices_only_its_channel_half() -> None:
    model = realnvp_image((1, 8, 8), levels=2, steps=4, hidden=8, blocks=1, bins=17)
    kinds = [type(m).__name__ for m in model.modules() if "Coupling" in type(m).__name__]
    assert kinds.count("AffineCoupling") == 4 and kinds.count("AffineSplitCoupling") == 4
    masked = realnvp_image((1, 8, 8), levels=2, steps=4, hidden=8, blocks=1, bins=17, coupling="mask")
    assert not any(isinstance(m, AffineSplitCoupling) for m in masked.modules())


@pytest.mark.parametrize("builder", [realnvp, nice])
def test_vector_builders_split_by_default(builder) -> None:
    split, masked = builder(4), builder(4, coupling="mask")
    assert any(isinstance(m, (AffineSplitCoupling, AdditiveSplitCoupling)) for m in split.modules())
    assert not any(isinstance(m, (AffineSplitCoupling, AdditiveSplitCoupling)) for m in masked.modules())
    x = torch.randn(16, 4)
    assert torch.isfinite(split.log_prob(x)).all()
    with pytest.raises(FlowInputError, match="'split' or 'mask'"):
        builder(4, coupling="slice")


def test_image_builders_reject_unknown_options() -> None:
    with pytest.raises(FlowInputError, match="coupling must be one of"):
        glow_image((1, 8, 8), coupling="sliced")
    with pytest.raises(FlowInputError, match="conditioner must be one of"):
        realnvp_image((1, 8, 8), conditioner="unet")
