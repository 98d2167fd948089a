"""Memory-saving backprop (flowlib.reversible) gives plain autograd's gradients with O(1) saved memory.

Every stack here is built twice over the same modules: a plain Compose and a
MemorySavingCompose. The gradients of one loss (which includes the logdet) with respect to
the input and every parameter must agree, and the bytes autograd saves for the backward
pass (counted with saved_tensors_hooks, which works on any device) must stop growing with
depth.
"""

from __future__ import annotations

import math

import pytest
import torch
from layer_cases import example
from torch import nn

import flowlib
from flowlib.actnorm import ActNorm
from flowlib.core import Compose, FlowModel
from flowlib.coupling import AdditiveCoupling, AffineCoupling, Scaling, half_mask
from flowlib.distributions import DiagonalGaussian, StandardNormal
from flowlib.elementwise import Affine, SinhArcsinh
from flowlib.nets import MLP
from flowlib.permutations import RandomPermutation, ReversePermutation
from flowlib.reversible import MemorySavingCompose, memory_saving

DIM = 6
#: A half mask keeps HALF coordinates and moves HALF: the coupling slices, its conditioner maps HALF
#: kept ones to the moved ones' parameters (one per coordinate additive, two affine).
HALF = DIM // 2


def _perturb(net: MLP, g: torch.Generator, scale: float = 0.3) -> MLP:
    # MLP zero-initialises its last layer (identity coupling): move it so the test means something.
    with torch.no_grad():
        net.last.weight.copy_(scale * torch.randn(net.last.weight.shape, generator=g))
        net.last.bias.copy_(scale * torch.randn(net.last.bias.shape, generator=g))
    return net


def elementwise_stack(depth: int, g: torch.Generator) -> list[flowlib.Flow]:
    layers: list[flowlib.Flow] = []
    for k in range(depth):
        if k % 3 == 0:
            f = Affine(DIM)
            with torch.no_grad():
                f.log_scale.copy_(0.2 * torch.randn(DIM, generator=g))
                f.shift.copy_(0.5 * torch.randn(DIM, generator=g))
        elif k % 3 == 1:
            f = SinhArcsinh(DIM)
            with torch.no_grad():
                f.epsilon.copy_(0.3 * torch.randn(DIM, generator=g))
                f.log_delta.copy_(0.1 * torch.randn(DIM, generator=g))
        else:
            f = RandomPermutation(DIM, seed=k)
        layers.append(f)
    return layers


def affine_coupling_stack(depth: int, g: torch.Generator) -> list[flowlib.Flow]:
    layers: list[flowlib.Flow] = []
    for k in range(depth):
        net = _perturb(MLP(HALF, 2 * HALF, hidden=16, layers=2), g)
        layers.append(AffineCoupling(half_mask(DIM, k % 2), net))
        if k % 4 == 3:
            layers.append(ReversePermutation(DIM))
    return layers


def additive_coupling_stack(depth: int, g: torch.Generator) -> list[flowlib.Flow]:
    layers: list[flowlib.Flow] = []
    for k in range(depth):
        net = _perturb(MLP(HALF, HALF, hidden=16, layers=2), g)
        layers.append(AdditiveCoupling(half_mask(DIM, k % 2, kind="alternate"), net))
    scaling = Scaling(DIM)
    with torch.no_grad():
        scaling.log_scale.copy_(0.3 * torch.randn(DIM, generator=g))
    return [*layers, scaling]


def glow_like_stack(depth: int, g: torch.Generator) -> list[flowlib.Flow]:
    layers: list[flowlib.Flow] = []
    for k in range(depth):
        layers.append(ActNorm(DIM))
        layers.append(AffineCoupling(half_mask(DIM, k % 2), _perturb(MLP(HALF, 2 * HALF, 16, 1), g)))
        layers.append(RandomPermutation(DIM, seed=k))
    return layers


STACKS = {
    "elementwise": elementwise_stack,
    "affine_coupling": affine_coupling_stack,
    "additive_coupling": additive_coupling_stack,
    "actnorm_coupling": glow_like_stack,
}


def _initialise(layers: list[flowlib.Flow], x: torch.Tensor) -> None:
    """ActNorm's data-dependent initialisation, once, before the two stacks are compared."""
    with torch.no_grad():
        Compose(*layers).train()(x)


def _grads(flow: flowlib.Flow, x: torch.Tensor, direction: str = "forward") -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    flow.zero_grad(set_to_none=True)
    out, logdet = flow(x) if direction == "forward" else flow.inverse(x)
    # A loss that weighs z and logdet differently, so that both incoming gradients matter.
    loss = (0.5 * out.square().sum(dim=1) - 2.0 * logdet + torch.sin(out[:, 0])).mean()
    loss.backward()
    return [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in flow.parameters()]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], atol: float, rtol: float) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"gradient {i}: {m}")


# float64: the recomputed activations are exact to round-off, so the gradients agree far
# below 1e-5. float32: 16 inverses of round-off; gradients of size ~100 then differ in the
# 6th significant digit, hence a relative tolerance of 1e-4 and an absolute 1e-4 (1e-6 of the
# largest gradient: a small entry of a sliced coupling's conditioner differed by 2.6e-5).
@pytest.mark.parametrize(
    "dtype, atol, rtol", [(torch.float64, 1e-9, 1e-9), (torch.float32, 1e-4, 1e-4)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("name", list(STACKS))
def test_gradients_equal_plain_autograd(name, dtype, atol, rtol):
    g = torch.Generator().manual_seed(0)
    layers = STACKS[name](16, g)
    x = torch.randn(32, DIM, generator=g)
    _initialise(layers, x)
    plain = Compose(*layers).to(dtype).train()
    saving = MemorySavingCompose(*layers).train()  # the same modules, so the same parameters
    x = x.to(dtype)
    want = _grads(plain, x)
    got = _grads(saving, x)
    assert any(w.abs().max() > 1e-3 for w in want[1:]), "the parameters get no gradient at all"
    _assert_same(got, want, atol, rtol)
    assert got[0].dtype == dtype


@pytest.mark.parametrize("name", ["elementwise", "affine_coupling"])
def test_inverse_direction_gradients(name):
    """Training through inverse (latent -> data), as sampling-based losses do."""
    g = torch.Generator().manual_seed(1)
    layers = STACKS[name](16, g)
    plain, saving = Compose(*layers).double().train(), MemorySavingCompose(*layers).train()
    z = torch.randn(16, DIM, generator=g, dtype=torch.float64)
    _assert_same(_grads(saving, z, "inverse"), _grads(plain, z, "inverse"), 1e-9, 1e-9)


def test_outputs_equal_and_graph_is_custom():
    g = torch.Generator().manual_seed(2)
    layers = affine_coupling_stack(8, g)
    x = torch.randn(10, DIM, generator=g, requires_grad=True)
    z, ld = MemorySavingCompose(*layers).train()(x)
    z0, ld0 = Compose(*layers)(x)
    torch.testing.assert_close(z, z0)
    torch.testing.assert_close(ld, ld0)
    assert "RecomputeFromInverse" in type(z.grad_fn).__name__


def test_inside_flow_model_log_prob():
    g = torch.Generator().manual_seed(3)
    layers = affine_coupling_stack(16, g)
    x = 2.0 * torch.randn(64, DIM, generator=g, dtype=torch.float64)

    def grads(flow):
        model = FlowModel(flow, base).double().train()
        model.zero_grad(set_to_none=True)
        model.log_prob(x).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    base = DiagonalGaussian(DIM)
    with torch.no_grad():
        base.loc.copy_(0.1 * torch.randn(DIM, generator=g))
    # float64: the comparison is about the plumbing through FlowModel, not float32 round-off
    # (test_gradients_equal_plain_autograd covers that).
    want = grads(Compose(*layers).double())
    got = grads(MemorySavingCompose(*layers))
    _assert_same(got, want, 1e-9, 1e-9)


def test_optimiser_steps_track_plain_training():
    """A few Adam steps with either backprop end at the same parameters."""
    results = []
    for cls in (Compose, MemorySavingCompose):
        torch.manual_seed(4)  # nn.Linear's default initialisation draws from the global generator
        g = torch.Generator().manual_seed(4)
        flow = cls(*affine_coupling_stack(8, g)).train()
        model = FlowModel(flow, StandardNormal(DIM))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = torch.randn(128, DIM, generator=g) * torch.linspace(0.5, 2.0, DIM)
        for _ in range(5):
            opt.zero_grad()
            (-model.log_prob(data).mean()).backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)


def _saved_bytes(flow: flowlib.Flow, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of log p(x)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    model = FlowModel(flow, StandardNormal(DIM))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -model.log_prob(x).mean()
    loss.backward()  # the saved graph is complete and usable
    return sum(storages.values())


def test_saved_memory_constant_in_depth():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1024, DIM, generator=g)
    plain, saving = {}, {}
    for depth in (4, 8, 16):
        layers = affine_coupling_stack(depth, g)
        plain[depth] = _saved_bytes(Compose(*layers).train(), x)
        saving[depth] = _saved_bytes(MemorySavingCompose(*layers).train(), x)
    activation = x.numel() * x.element_size()
    # Plain autograd keeps several activations per layer: O(depth).
    assert plain[16] - plain[8] >= 8 * activation
    assert plain[16] > 1.8 * plain[8]
    # Memory-saving keeps z (and what the base density saves): the same at every depth.
    assert saving[4] == saving[8] == saving[16]
    assert saving[16] <= 3 * activation
    assert saving[16] < plain[16] / 10


def test_eval_and_no_grad_run_plainly():
    g = torch.Generator().manual_seed(6)
    flow = MemorySavingCompose(*affine_coupling_stack(4, g))
    x = torch.randn(8, DIM, generator=g, requires_grad=True)
    flow.eval()
    z, _ = flow(x)
    assert "RecomputeFromInverse" not in type(z.grad_fn).__name__  # an ordinary graph
    flow.train()
    with torch.no_grad():
        z, ld = flow(x)
        back, ld_i = flow.inverse(z)
    assert z.grad_fn is None and not z.requires_grad
    torch.testing.assert_close(back, x.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld, atol=1e-5, rtol=1e-5)
    flow.memory_saving = False
    z, _ = flow(x)
    assert "RecomputeFromInverse" not in type(z.grad_fn).__name__


def test_only_parameters_or_only_input_require_grad():
    g = torch.Generator().manual_seed(7)
    layers = elementwise_stack(6, g)
    plain, saving = Compose(*layers).train(), MemorySavingCompose(*layers).train()
    x = torch.randn(8, DIM, generator=g)
    # Parameters only: x needs no gradient.
    for flow in (plain, saving):
        flow.zero_grad(set_to_none=True)
        flow(x)[1].sum().backward()
    # Frozen parameters: only x gets a gradient, and the frozen ones stay untouched.
    saving.zero_grad(set_to_none=True)
    for p in saving.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    z, ld = saving(xg)
    (z.sum() + ld.sum()).backward()
    assert xg.grad is not None and all(p.grad is None for p in saving.parameters())
    # Nothing requires grad at all: runs plainly, no graph.
    z, _ = saving(x)
    assert z.grad_fn is None


def test_shared_layer_gradients_are_summed():
    g = torch.Generator().manual_seed(8)
    shared = _perturb(MLP(HALF, 2 * HALF, 16, 1), g)
    layers = [AffineCoupling(half_mask(DIM, k % 2), shared) for k in range(6)]
    x = torch.randn(16, DIM, generator=g, dtype=torch.float64)
    plain, saving = Compose(*layers).double().train(), MemorySavingCompose(*layers).train()
    _assert_same(_grads(saving, x), _grads(plain, x), 1e-9, 1e-9)


def test_dropout_and_batchnorm_refused_in_training():
    g = torch.Generator().manual_seed(9)
    drop = AffineCoupling(half_mask(DIM, 0), nn.Sequential(nn.Dropout(0.1), MLP(HALF, 2 * HALF)))
    norm = AffineCoupling(half_mask(DIM, 0), nn.Sequential(nn.BatchNorm1d(HALF), MLP(HALF, 2 * HALF)))
    x = torch.randn(8, DIM, generator=g, requires_grad=True)
    for layer, word in ((drop, "Dropout"), (norm, "BatchNorm1d")):
        flow = MemorySavingCompose(layer, Affine(DIM)).train()
        with pytest.raises(flowlib.FlowInputError, match=word):
            flow(x)
        flow.eval()
        flow(x)  # deterministic in eval mode: runs (plainly)


def test_actnorm_initialises_on_first_forward_but_not_through_inverse():
    g = torch.Generator().manual_seed(10)
    x = 3.0 + 2.0 * torch.randn(64, DIM, generator=g)
    layers = [ActNorm(DIM), AffineCoupling(half_mask(DIM, 0), _perturb(MLP(HALF, 2 * HALF, 16, 1), g))]
    flow = MemorySavingCompose(*layers).train()
    with pytest.raises(flowlib.FlowInputError, match="ActNorm"):
        flow.inverse(x.clone().requires_grad_(True))
    assert not layers[0].is_initialized
    z, _ = flow(x.clone().requires_grad_(True))  # initialises exactly as plain training would
    assert layers[0].is_initialized
    h, _ = layers[0](x)
    torch.testing.assert_close(h.mean(0), torch.zeros(DIM), atol=1e-4, rtol=0)


def test_float64_recompute_and_error_grows_with_depth():
    g = torch.Generator().manual_seed(11)
    flow = MemorySavingCompose(*affine_coupling_stack(16, g))
    x = torch.randn(64, DIM, generator=g)
    err32 = flow.reconstruction_error(x)
    err64 = flow.double().reconstruction_error(x.double())
    assert len(err32) == len(flow)
    # float32 round-off is small but compounds down the stack; float64 is far below it.
    assert max(err32) < 1e-4 and max(err64) < 1e-12
    assert err32[-1] >= err32[0]


def test_memory_saving_flattens_and_shares():
    g = torch.Generator().manual_seed(12)
    inner = Compose(*affine_coupling_stack(3, g))
    stack = Compose(inner, Affine(DIM), Compose(SinhArcsinh(DIM)))
    flow = memory_saving(stack)
    assert isinstance(flow, MemorySavingCompose) and isinstance(flow, Compose)
    assert len(flow) == len(inner) + 2
    assert {id(p) for p in flow.parameters()} == {id(p) for p in stack.parameters()}
    assert len(memory_saving(list(stack.flows))) == len(flow)
    x = torch.randn(5, DIM, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(flow(x)[0], stack(x)[0])


def test_example_round_trip():
    layer, x = example(MemorySavingCompose, torch.Generator().manual_seed(0))
    assert isinstance(layer, flowlib.Flow) and x.shape[0] >= 3
    with torch.no_grad():
        z, ld = layer(x)
        back, ld_i = layer.inverse(z)
    assert not torch.allclose(z, x, atol=1e-3)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld_i, -ld, atol=1e-5, rtol=1e-5)


def test_autocast_state_is_replayed():
    """Under mixed precision the recomputation uses the same autocast state as the forward."""
    g = torch.Generator().manual_seed(13)
    layers = affine_coupling_stack(8, g)
    plain, saving = Compose(*layers).train(), MemorySavingCompose(*layers).train()
    x = torch.randn(32, DIM, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _grads(plain, x)
        got = _grads(saving, x)
    # Replaying the state gives the conditioners the very same bfloat16 inputs, so the gradients
    # agree closely (exactly, here); undoing the layers in float32 instead is ~5% off.
    _assert_same(got, want, 1e-3, 1e-3)
    assert got[0].dtype == torch.float32


def test_a_sliced_coupling_is_undone_and_redone_with_one_conditioner_call():
    """The backward of a sliced coupling calls its conditioner once (not twice: undo, then redo),
    and the gradients are still plain autograd's; a coupling with a context is refused there."""
    g = torch.Generator().manual_seed(3)
    calls = []
    layers = affine_coupling_stack(4, g)
    couplings = [f for f in layers if isinstance(f, AffineCoupling)]
    assert couplings and all(f.sliced for f in couplings)
    for f in couplings:
        f.conditioner.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(16, DIM, generator=g, dtype=torch.float64)
    plain, saving = Compose(*layers).double().train(), MemorySavingCompose(*layers).train()
    want = _grads(plain, x)
    calls.clear()
    got = _grads(saving, x)
    assert len(calls) == 2 * len(couplings), f"{len(calls)} conditioner calls for {len(couplings)} couplings"
    _assert_same(got, want, 1e-10, 1e-10)
    conditioned = AffineCoupling(half_mask(DIM, 0), MLP(HALF + 2, 2 * HALF, 16, 1), context_features=2)
    with pytest.raises(flowlib.FlowInputError, match="recompute_from_output: only for sliced layers"):
        conditioned.double().recompute_from_output(x)


def test_a_coupling_that_overrides_its_forward_is_recomputed_the_generic_way():
    """recompute_from_output knows Coupling's own forward only: a subclass with another forward
    (here: the output scaled by 2) must still get plain autograd's gradients."""

    class Doubled(AffineCoupling):
        def forward(self, x, context=None):
            z, logdet = super().forward(x, context)
            return 2 * z, logdet + x.shape[1] * math.log(2.0)

        def inverse(self, z, context=None):
            x, logdet = super().inverse(z / 2, context)
            return x, logdet - z.shape[1] * math.log(2.0)

    g = torch.Generator().manual_seed(5)
    layers = [Doubled(half_mask(DIM, k % 2), _perturb(MLP(HALF, 2 * HALF, 16, 1), g)) for k in range(3)]
    x = torch.randn(8, DIM, generator=g, dtype=torch.float64)
    want = _grads(Compose(*layers).double().train(), x)
    _assert_same(_grads(MemorySavingCompose(*layers).train(), x), want, 1e-10, 1e-10)
