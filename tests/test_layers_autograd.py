"""Every layer class, iterated from flowlib.layer_classes(), checked against autograd.

For each layer: inverse(forward(x)) == x, the logdet of both directions equals log|det J|
of torch.autograd.functional.jacobian, the two logdets are opposite, and samples in a
batch do not influence each other (the batch Jacobian is block diagonal). The same on
CUDA when a GPU is present.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

import flowlib

LAYERS = flowlib.layer_classes()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]


def make(cls, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(1234)
    layer, x = cls.example(g)
    layer = copy.deepcopy(layer).to(device=device, dtype=dtype).eval()
    return layer, x.to(device=device, dtype=dtype)


def test_every_layer_is_listed():
    names = {c.__name__ for c in LAYERS}
    # The list is discovered, not hand-written; this guards against it coming back empty.
    assert len(LAYERS) >= 10
    assert {"Compose", "Inverse", "Affine", "SinhArcsinh"} <= names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_round_trip(cls, device):
    layer, x = make(cls, device)
    with torch.no_grad():
        z, ld_f = layer(x)
        x_back, ld_i = layer.inverse(z)
    assert (z.shape == x.shape or getattr(cls, "changes_shape", False)) and z.device == x.device
    assert ld_f.shape == (x.shape[0],) and ld_i.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld_f, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_not_identity(cls):
    """The example's initialisation must really transform (an identity map proves nothing)."""
    layer, x = make(cls)
    with torch.no_grad():
        z, _ = layer(x)
    assert not torch.allclose(z.reshape(x.shape), x, atol=1e-3), f"{cls.__name__}.example() is the identity"


def _check_jacobian(fn, inp, logdet, name):
    """log|det| of each sample's block equals logdet; off-diagonal blocks vanish."""
    b = inp.shape[0]
    d = inp[0].numel()
    jac = jacobian(lambda t: fn(t)[0], inp, vectorize=False)
    jac = jac.reshape(b, d, b, d)
    for i in range(b):
        _, lad = torch.linalg.slogdet(jac[i, :, i, :])
        assert torch.allclose(lad, logdet[i], atol=1e-4, rtol=1e-4), (
            f"{name}: log|det J| = {lad.item():.6f} from autograd, layer says {logdet[i].item():.6f}"
        )
        for j in range(b):
            if j != i:
                assert jac[i, :, j, :].abs().max() < 1e-8, f"{name}: sample {j} changes output {i}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_logdet_matches_autograd(cls, device):
    # float64 so that the autograd reference itself is exact to far below the tolerance.
    layer, x = make(cls, device, torch.float64)
    x = x[:3]
    z, ld_f = layer(x)
    _check_jacobian(layer, x, ld_f.detach(), f"{cls.__name__}.forward")
    z = z.detach()
    _, ld_i = layer.inverse(z)
    _check_jacobian(layer.inverse, z, ld_i.detach(), f"{cls.__name__}.inverse")


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(min_value=1, max_value=33), seed=st.integers(0, 2**16), scale=st.floats(0.1, 3.0))
def test_round_trip_any_batch(cls, batch, seed, scale):
    """Property: for any batch size and input scale, the round trip holds per sample."""
    layer, x = make(cls)
    g = torch.Generator().manual_seed(seed)
    xs = scale * torch.randn((batch, *x.shape[1:]), generator=g)
    if getattr(layer, "input_domain", None) == "unit":
        xs = torch.rand((batch, *x.shape[1:]), generator=g) * 0.98 + 0.01
    elif getattr(layer, "input_domain", None) == "like_example":
        xs = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
    with torch.no_grad():
        z, ld = layer(xs)
        back, ld_i = layer.inverse(z)
        # Each sample alone gives the same result as inside the batch.
        z0, ld0 = layer(xs[:1])
    assert (z.shape == xs.shape or getattr(cls, "changes_shape", False)) and ld.shape == (batch,)
    torch.testing.assert_close(back, xs, atol=1e-4 * max(1.0, scale), rtol=1e-4)
    torch.testing.assert_close(z0, z[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld0, ld[:1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_wrong_shape_names_layer(cls):
    layer, x = make(cls)
    bad = x.reshape(-1)  # drops the batch dimension structure
    with pytest.raises(flowlib.FlowInputError) as err:
        layer(bad)
    # The message names some layer and the expected shape.
    assert "expected" in str(err.value)
