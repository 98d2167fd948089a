"""Every layer of tests/layer_cases.py checked against autograd, on the CPU and on CUDA when present.

For each layer: inverse(forward(x)) == x; the logdet of BOTH directions equals log|det J| of
``torch.autograd.functional.jacobian``; the two logdets are opposite; samples in a batch do not
influence each other (the batch Jacobian is block diagonal, and a sample alone gives what it
gives inside the batch). Corner cases: the identity initialisation (zero weights) is the
identity with logdet 0, and far in the tails the round trip and the logdet still hold.

The list of cases is written by hand in tests/layer_cases.py; :func:`test_cases_cover_every_layer`
walks flowlib's modules so that a new layer without a case fails here. The conditional layers
(tests/conditional_cases.py) go through the same checks at fixed contexts.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil

import pytest
import torch
from conditional_cases import CONDITIONAL_CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layer_cases import BASES, LayerCase
from layer_cases import CASES as UNCONDITIONAL_CASES
from torch import Tensor
from torch.autograd.functional import jacobian

import flowlib
from flowlib.core import Flow

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    ),
]
CASES = UNCONDITIONAL_CASES + CONDITIONAL_CASES
IDENTITY_CASES = [c for c in CASES if c.identity is not None]
TAIL_CASES = [c for c in CASES if c.tails is not None]


def _ids(c: LayerCase) -> str:
    return c.name


def make(c: LayerCase, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Flow, Tensor]:
    layer, x = c.make(torch.Generator().manual_seed(1234))
    layer = copy.deepcopy(layer).to(device=device, dtype=dtype).eval()
    return layer, x.to(device=device, dtype=dtype)


def flowlib_layer_classes() -> set[type[Flow]]:
    """Every public Flow subclass defined in a flowlib module, found by importing them all."""
    found = set()
    for info in pkgutil.walk_packages(flowlib.__path__, "flowlib."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Flow) and obj.__module__ == module.__name__
                    and not name.startswith("_")):
                found.add(obj)
    return found


# -- the list itself --------------------------------------------------------------------------

def test_cases_cover_every_layer():
    listed = {c.cls for c in CASES}
    missing = flowlib_layer_classes() - listed - BASES
    names = sorted(c.__name__ for c in missing)
    assert not missing, f"layers without a case in tests/layer_cases.py: {names}"
    assert {"Compose", "Inverse", "Affine", "SinhArcsinh", "Planar", "MultiScale"} <= {c.name for c in CASES}


def test_each_layer_listed_once():
    names = [f"{c.cls.__module__}.{c.cls.__qualname__}" for c in UNCONDITIONAL_CASES]
    assert len(names) == len(set(names)), "a layer class has two cases: give it one"


def test_subclassing_flow_registers_nothing():
    """A user's own layer is theirs: defining it changes nothing in flowlib."""
    modules = [importlib.import_module(i.name) for i in pkgutil.walk_packages(flowlib.__path__, "flowlib.")]
    before = [dict(vars(m)) for m in modules]

    class MyShift(Flow):
        def forward(self, x):
            return x + 1, x.new_zeros(x.shape[0])

        def inverse(self, z):
            return z - 1, z.new_zeros(z.shape[0])

    assert "__init_subclass__" not in vars(Flow)
    assert not hasattr(flowlib, "layer_classes") and not hasattr(flowlib, "register_layer")
    for m, was in zip(modules, before, strict=True):
        assert dict(vars(m)) == was, f"{m.__name__} changed when a Flow subclass was defined"
        for value in vars(m).values():
            if isinstance(value, (dict, list, set, tuple)):
                held = value.values() if isinstance(value, dict) else value
                assert not any(v is MyShift for v in held), f"{m.__name__} holds the user's class"
    z, logdet = MyShift()(torch.zeros(2, 3))
    assert torch.equal(z, torch.ones(2, 3)) and torch.equal(logdet, torch.zeros(2))


# -- the contract, against autograd ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_round_trip(c, device):
    layer, x = make(c, device)
    with torch.no_grad():
        z, ld_f = layer(x)
        x_back, ld_i = layer.inverse(z)
    assert (z.shape == x.shape or c.changes_shape) and z.device == x.device
    assert ld_f.shape == (x.shape[0],) and ld_i.shape == (x.shape[0],)
    torch.testing.assert_close(x_back, x, atol=c.tol, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld_f, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_not_identity(c):
    """The example's initialisation must really transform (an identity map proves nothing)."""
    layer, x = make(c)
    with torch.no_grad():
        z, _ = layer(x)
    assert not torch.allclose(z.reshape(x.shape), x, atol=1e-3), f"the {c.name} example is the identity"


def _check_jacobian(fn, inp: Tensor, logdet: Tensor, name: str) -> None:
    """log|det| of each sample's block equals logdet; off-diagonal blocks vanish."""
    b = inp.shape[0]
    d = inp[0].numel()
    jac = jacobian(lambda t: fn(t)[0], inp, vectorize=False).reshape(b, d, b, d)
    for i in range(b):
        sign, lad = torch.linalg.slogdet(jac[i, :, i, :])
        assert sign != 0, f"{name}: the Jacobian of sample {i} is singular"
        assert torch.allclose(lad, logdet[i], atol=1e-4, rtol=1e-4), (
            f"{name}: log|det J| = {lad.item():.6f} from autograd, layer says {logdet[i].item():.6f}"
        )
        for j in range(b):
            if j != i:
                assert jac[i, :, j, :].abs().max() < 1e-8, f"{name}: sample {j} changes output {i}"


def _check_both_directions(layer: Flow, x: Tensor, name: str) -> None:
    z, ld_f = layer(x)
    _check_jacobian(layer, x, ld_f.detach(), f"{name}.forward")
    z = z.detach()
    _, ld_i = layer.inverse(z)
    _check_jacobian(layer.inverse, z, ld_i.detach(), f"{name}.inverse")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_logdet_matches_autograd(c, device):
    # float64 so that the autograd reference itself is exact to far below the tolerance.
    layer, x = make(c, device, torch.float64)
    _check_both_directions(layer, x[:3], c.name)


@pytest.mark.parametrize("c", CASES, ids=_ids)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(min_value=1, max_value=33), seed=st.integers(0, 2**16), scale=st.floats(0.1, 3.0))
def test_round_trip_any_batch(c, batch, seed, scale):
    """Property: for any batch size and input scale, the round trip holds per sample."""
    layer, x = make(c)
    g = torch.Generator().manual_seed(seed)
    if c.inputs == "unit":
        xs = torch.rand((batch, *x.shape[1:]), generator=g) * 0.98 + 0.01
    elif c.inputs == "like_example":
        xs = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
    else:
        xs = scale * torch.randn((batch, *x.shape[1:]), generator=g)
    with torch.no_grad():
        z, ld = layer(xs)
        back, ld_i = layer.inverse(z)
        # Each sample alone gives the same result as inside the batch.
        z0, ld0 = layer(xs[:1])
    assert (z.shape == xs.shape or c.changes_shape) and ld.shape == (batch,)
    torch.testing.assert_close(back, xs, atol=max(1e-4, 10 * c.tol) * max(1.0, scale), rtol=1e-4)
    torch.testing.assert_close(z0, z[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld0, ld[:1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("c", CASES, ids=_ids)
def test_wrong_shape_names_layer(c):
    layer, x = make(c)
    with pytest.raises(flowlib.FlowInputError) as err:
        layer(x.reshape(-1))  # drops the batch dimension
    assert "expected" in str(err.value)


# -- corner cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", IDENTITY_CASES, ids=_ids)
def test_identity_initialisation(c, device):
    """Zero weights (or a zero-initialised conditioner) give exactly the identity, logdet 0."""
    torch.manual_seed(0)
    layer, x = c.identity()
    layer, x = layer.to(device=device, dtype=torch.float64).eval(), x.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        z, ld_f = layer(x)
        back, ld_i = layer.inverse(x)
    torch.testing.assert_close(z, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_f, torch.zeros_like(ld_f), atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_i, torch.zeros_like(ld_i), atol=1e-12, rtol=0)
    _check_both_directions(layer, x[:2], f"{c.name} (identity)")


@pytest.mark.parametrize("c", TAIL_CASES, ids=_ids)
def test_tails(c):
    """Far out (|x| up to ``tails``) the map stays finite, invertible and its logdet exact."""
    layer, x = make(c, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    far = c.tails * (2 * torch.rand((4, *x.shape[1:]), generator=g, dtype=torch.float64) - 1)
    far[0] = c.tails  # one sample at the very end of the range, every coordinate
    with torch.no_grad():
        z, ld_f = layer(far)
        back, ld_i = layer.inverse(z)
    assert torch.isfinite(z).all() and torch.isfinite(ld_f).all() and torch.isfinite(ld_i).all()
    torch.testing.assert_close(back, far, atol=1e-6 * c.tails, rtol=1e-6)
    torch.testing.assert_close(ld_i, -ld_f, atol=1e-6, rtol=1e-6)
    _check_both_directions(layer, far[:2], f"{c.name} (tails)")
