# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lecture 4: RealNVP, affine couplings, multi-scale flows and dequantisation
#
# NICE (lecture 3) showed that a coupling layer is invertible by construction and has a
# log-determinant that costs nothing. But its additive couplings preserve volume: every layer
# has $|\det \partial z / \partial x| = 1$, and the only way a NICE model can make a region of
# data space denser or sparser is a single diagonal scaling at the very end. Dinh,
# Sohl-Dickstein & Bengio (2017), *Density estimation using Real NVP*, fixed this with one
# extra factor: the transformed half is **scaled** as well as shifted, by an amount that
# depends on the other half. "Real NVP" stands for *real-valued non-volume preserving*.
#
# In this lecture you will
#
# 1. write down the affine coupling, invert it without inverting any network, and check its
#    triangular Jacobian against autograd;
# 2. see why the scales are softly clamped;
# 3. draw the checkerboard and channel masks and the *squeeze* that turns space into channels;
# 4. follow the shapes through the multi-scale architecture, which factors out half of the
#    dimensions at every scale;
# 5. learn why a continuous density on discrete pixels needs *dequantisation*, how uniform and
#    variational dequantisation give a lower bound on the likelihood, and how that becomes
#    *bits per dimension*;
# 6. compare NICE and RealNVP on the same 2D toys (exact KL) and on the same images (test
#    bits/dim on the 8x8 digits), trained with the same budget, and look at the NICE and
#    RealNVP trained on MNIST that ship with the course;
# 7. write four pieces yourself: the coupling's forward pass and log-determinant, its inverse,
#    the squeeze, and the bits/dim conversion.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ (the
# normalizing direction), $p_Z$ the base density (a standard normal) and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f / \partial x\right|$.

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. With the environment variable `CI` set, every cell
# still runs, on the smallest sizes that exercise it; on a GPU the models train for longer.

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: train at full size (change to True/False to override)
TOY_STEPS = 40 if SMOKE else (3000 if FULL else 500)  # steps per model per 2D toy (section 6)
IMAGE_STEPS = 20 if SMOKE else (3000 if FULL else 400)  # steps per image model on the digits (section 6)
DEQ_STEPS = 10 if SMOKE else (1500 if FULL else 120)  # steps per run of the dequantisation comparison
KL_SAMPLES = 5_000 if SMOKE else 50_000  # Monte Carlo samples of each KL estimate
GRID = 60 if SMOKE else 120  # resolution of the density pictures
MNIST_CHECK = 200 if SMOKE else 1000  # MNIST test images on which a shipped model is re-scored (section 7)
MNIST_DOWNLOAD = not SMOKE  # may load_mnist fetch MNIST from the internet when no local copy exists?
# The toy models are tiny: splitting their operations over several CPU threads costs more
# than it saves, and a shared 2-core machine (Binder) is fastest with one.
torch.set_num_threads(1)

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from matplotlib.colors import SymLogNorm
from torch import nn

from flowlib.convnets import ResNetConditioner
from flowlib.coupling import AffineCoupling, Coupling, channel_mask, checkerboard_mask, half_mask
from flowlib.data import (
    DIGITS_GREY_LEVELS,
    MNIST_GREY_LEVELS,
    DatasetError,
    get_toy,
    load_digits,
    load_mnist,
    pad_to,
)
from flowlib.dequantize import dequantized_bits_per_dim
from flowlib.image_models import count_parameters, nice_image, realnvp_image
from flowlib.metrics import bits_per_dim, kl_divergence
from flowlib.models import nice, realnvp
from flowlib.multiscale import MultiScale, squeeze, unsqueeze
from flowlib.nets import MLP
from flowlib.pretrained import checkpoint_info, load_pretrained, shipped_checkpoints
from flowlib.train import fit
from flowlib.transformers import Affine, soft_clamp
from flowlib.viz import image_grid, plot_density_2d

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})
T_START = time.perf_counter()


def perturbed_mlp(d_in: int, d_out: int, hidden: int = 32, scale: float = 0.5) -> MLP:
    """An MLP conditioner whose zero-initialised last layer is randomised, so the coupling moves."""
    net = MLP(d_in, d_out, hidden=hidden, layers=2)
    with torch.no_grad():
        net.last.weight.normal_(0.0, scale)
        net.last.bias.normal_(0.0, scale)
    return net


# %% [markdown]
# ## 1. The affine coupling layer
#
# Split the $D$ coordinates of $x$ into a first part $x_{1:d}$ and the rest $x_{d+1:D}$. The
# affine coupling keeps the first part and scales and shifts the second, with a log-scale
# $s$ and a shift $t$ computed from the first part:
#
# $$
# z_{1:d} = x_{1:d}, \qquad
# z_{d+1:D} = x_{d+1:D} \odot \exp\big(s(x_{1:d})\big) + t(x_{1:d}).
# $$
#
# $s, t: \mathbb{R}^d \to \mathbb{R}^{D-d}$ are *any* neural networks (in practice one
# network with two heads). Three things make this layer the workhorse of flows:
#
# * **Inverse without inverting $s$ or $t$.** Since $z_{1:d} = x_{1:d}$, the inverse can
#   recompute $s$ and $t$ from $z_{1:d}$ and undo the affine map:
#   $x_{1:d} = z_{1:d}$, $x_{d+1:D} = \big(z_{d+1:D} - t(z_{1:d})\big) \odot \exp\big(-s(z_{1:d})\big)$.
#   The networks are only ever evaluated forwards, so they can be as deep as we like.
# * **A triangular Jacobian.** The kept block is the identity; the transformed block depends on
#   $x_{d+1:D}$ only through the elementwise product, so
#
# $$
# \frac{\partial z}{\partial x} =
# \begin{pmatrix} I_d & 0 \\ \dfrac{\partial z_{d+1:D}}{\partial x_{1:d}} & \operatorname{diag}\big(\exp s(x_{1:d})\big)\end{pmatrix},
# \qquad
# \log\left|\det \frac{\partial z}{\partial x}\right| = \sum_{j} s_j(x_{1:d}).
# $$
#
#   The lower-left block, where all the complexity of the networks lives, never enters the
#   determinant.
# * **Not volume preserving.** With $s = 0$ this is NICE's additive coupling; a non-zero $s$
#   lets every layer stretch and compress space where the data need it.
#
# In flowlib this layer, like every flow layer of the course, is a **structure** times an
# elementwise **transformer**, with a **conditioner** network between them (Papamakarios et
# al., 2021, section 3.1). The structure says which coordinates condition which: here a
# coupling, described by a binary mask $m$ of the input's shape (1 = kept, the part $A$, above
# $x_{1:d}$; 0 = transformed, the part $B$, above $x_{d+1:D}$). The transformer is the
# invertible one-dimensional map applied to each coordinate of $x_B$: NICE's additive one,
# $x \mapsto x + t$; the affine one, $x \mapsto x\,e^{s} + t$; later a spline. The conditioner computes the transformer's
# parameters $h = (s_\text{raw}, t)$ from $x_A$. One class, `Coupling(mask, conditioner,
# transformer)`, puts the three together; `AffineCoupling(mask, net, clamp)` is short for
# `Coupling(mask, net, Affine(clamp))`. Let us build one on $D = 6$ with the first half kept:
# the conditioner, a randomly initialised two-layer MLP, reads the $|A| = 3$ kept coordinates
# and writes $2|B| = 6$ numbers, the raw log-scales and then the shifts of the three others.
# `Coupling.conditioner_sizes(mask, Affine)` gives these sizes for any mask.

# %%
D = 6
mask6 = half_mask(D, parity=0)  # 1 on the first three coordinates: they are kept
sizes6 = Coupling.conditioner_sizes(mask6, Affine)  # (|A|, 2|B|) = (3, 6)
coupling = Coupling(mask6, perturbed_mlp(*sizes6, scale=1.5), Affine(clamp=2.0))
x = torch.randn(5, D)

z, logdet = coupling(x)
x_back, logdet_inv = coupling.inverse(z)
print("mask:", mask6.int().tolist(), "| conditioner sizes (in, out):", sizes6)
print("z, logdet shapes:", tuple(z.shape), tuple(logdet.shape))
print("kept coordinates unchanged:", torch.equal(z[:, :3], x[:, :3]))
print("round trip |x - f^-1(f(x))| < 1e-5:", bool((x_back - x).abs().max() < 1e-5))
print("inverse's logdet = -forward's (< 1e-6):", bool((logdet + logdet_inv).abs().max() < 1e-6))

# %% [markdown]
# Now the Jacobian itself. `torch.autograd.functional.jacobian` builds the full matrix by
# automatic differentiation (exact up to float64 rounding), knowing nothing of the layer's
# structure; we look at it and compare its log-determinant with the layer's cheap $\sum_j s_j$.

# %%
coupling64 = coupling.double()
x0 = torch.randn(1, D, dtype=torch.float64)
J = torch.autograd.functional.jacobian(lambda v: coupling64(v)[0], x0).reshape(D, D)
x0_A, x0_B = coupling64.slice(x0)  # the kept and the transformed coordinates
s_raw, t = coupling64.conditioner(x0_A).chunk(2, dim=1)  # log-scales first, then shifts
s = soft_clamp(s_raw, coupling64.transformer.clamp)  # the layer's log-scales, one per x_B coordinate

fig, ax = plt.subplots(figsize=(3.6, 3.2))
top = float(J.abs().max())
# A symmetric log colour scale, so the small entries of the lower-left block show next to exp(s).
im = ax.imshow(J.numpy(), cmap="RdBu_r", norm=SymLogNorm(linthresh=0.01, vmin=-top, vmax=top))
ax.set(title="dz/dx of one affine coupling", xlabel="input coordinate j", ylabel="output coordinate i",
       xticks=range(D), yticks=range(D))
fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

print("upper-right block is zero:", bool((J[:3, 3:] == 0).all()))
print("upper-left block is the identity:", torch.equal(J[:3, :3], torch.eye(3, dtype=torch.float64)))
print("lower-right block is diag(exp s):", torch.allclose(J[3:, 3:], torch.diag(s[0].exp())))
logdet_autograd = torch.linalg.slogdet(J).logabsdet
print("log-det agreement (autograd slogdet vs layer's sum of s):",
      bool(torch.allclose(logdet_autograd, coupling64(x0)[1][0], atol=1e-10)))
coupling = coupling.float()

# %% [markdown]
# The blue and red entries in the lower-left block are the network at work; the determinant
# ignores them. That is the whole trick: a Jacobian that is expensive to *fill* but free to
# *take the determinant of*.
#
# ### Exercise 1: the forward pass and its log-determinant
#
# Write the affine coupling yourself, in the sliced form in which the equations above are
# written. The split is along dimension 1 (the coordinates of a batch of vectors
# $(\text{batch}, D)$, the channels of a batch of images $(\text{batch}, C, H, W)$) and is
# given by two index tensors `A` (kept) and `B` (transformed), not necessarily contiguous,
# which together list every index once. Take
# $x_A$ = `x[:, A]` and $x_B$ = `x[:, B]`; the conditioner maps $x_A$ to a tensor with
# $2|B|$ entries along dimension 1, first the raw log-scales and then the shifts $t$
# (`.chunk(2, dim=1)`). Squash the raw log-scales with `soft_clamp(s_raw, clamp)` (section 2
# explains why), apply $z_B = x_B \odot e^{s} + t$, put $z_A = x_A$ and $z_B$ back in their
# places, and return $z$ and $\log|\det \partial z/\partial x|$ per sample. The same code
# should work for vectors and for images.

# %% nbgrader={"grade": false, "grade_id": "04-ex1-coupling-forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_coupling_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                            clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """z_A = x_A, z_B = x_B * exp(s) + t with (s_raw, t) = conditioner(x_A), s = soft_clamp(s_raw, clamp).

    x_A = x[:, A], x_B = x[:, B] (A, B: index tensors along dim 1). Returns (z, logdet) with z
    shaped like x and logdet = log|det dz/dx| of shape (batch,).
    """
    ### BEGIN SOLUTION
    x_A, x_B = x[:, A], x[:, B]
    s_raw, t = conditioner(x_A).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    z = x.clone()
    z[:, B] = x_B * torch.exp(s) + t
    logdet = s.flatten(start_dim=1).sum(dim=1)
    return z, logdet
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex1-coupling-forward-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# By hand: D = 2, A = [0], B = [1], (s_raw, t) = (x_0, 2 x_0), no clamp: z_1 = x_1 e^{x_0} + 2 x_0.
_net = nn.Linear(1, 2, bias=False)
with torch.no_grad():
    _net.weight.copy_(torch.tensor([[1.0], [2.0]]))
_z, _ld = affine_coupling_forward(torch.tensor([[1.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, None)
assert _z.shape == (1, 2) and _ld.shape == (1,), f"z should have shape (1, 2), logdet (1,); got {tuple(_z.shape)}, " \
    f"{tuple(_ld.shape)}"
assert torch.allclose(_z, torch.tensor([[1.0, 3.0 * math.e + 2.0]])), "z_A = x_A and z_B = x_B * exp(s) + t"
assert torch.allclose(_ld, torch.tensor([1.0])), "logdet is the sum of the log-scales s"
_z, _ld = affine_coupling_forward(torch.tensor([[10.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, 2.0)
_s = 4.0 / math.pi * math.atan(10.0 / 2.0)  # the soft clamp of s_raw = 10 with c = 2
assert torch.allclose(_ld, torch.tensor([_s])), "clamp the raw log-scale with soft_clamp(s_raw, clamp)"
assert torch.allclose(_z, torch.tensor([[10.0, 3.0 * math.exp(_s) + 20.0]])), "the shift t is not clamped"
# Random splits (indices in any order), checked against the formula and against autograd's Jacobian.
_g = torch.Generator().manual_seed(41)
for _trial in range(5):
    _d = int(torch.randint(2, 9, (1,), generator=_g))
    _perm = torch.randperm(_d, generator=_g)
    _k = int(torch.randint(1, _d, (1,), generator=_g))
    _A, _B = _perm[:_k], _perm[_k:]
    _clamp = [2.0, 3.0, None][_trial % 3]
    _net = perturbed_mlp(len(_A), 2 * len(_B)).double()
    _x = 2 * torch.randn(7, _d, generator=_g, dtype=torch.float64)
    _z, _ld = affine_coupling_forward(_x, _A, _B, _net, _clamp)
    assert _z.shape == _x.shape, f"z should have x's shape {tuple(_x.shape)}, got {tuple(_z.shape)}"
    assert _ld.shape == (7,), f"logdet should have one value per sample, shape (7,), got {tuple(_ld.shape)}"
    assert torch.equal(_z[:, _A], _x[:, _A]), "the kept coordinates x[:, A] must pass unchanged"
    with torch.no_grad():
        _s_raw, _t = _net(_x[:, _A]).chunk(2, dim=1)
    _s = soft_clamp(_s_raw, _clamp)
    assert torch.allclose(_z[:, _B], _x[:, _B] * _s.exp() + _t), "z_B = x_B * exp(s) + t, in the order of B"
    _J = torch.autograd.functional.jacobian(
        lambda v, A=_A, B=_B, net=_net, c=_clamp: affine_coupling_forward(v, A, B, net, c)[0], _x[:1])
    _logabsdet = torch.linalg.slogdet(_J.reshape(_d, _d)).logabsdet
    assert torch.allclose(_ld[0], _logabsdet), "logdet differs from log|det dz/dx| computed by autograd"
### BEGIN HIDDEN TESTS
_conv = nn.Conv2d(2, 4, 3, padding=1).double()  # images: 4 channels, A = [3, 0], B = [1, 2]
with torch.no_grad():
    for _p in _conv.parameters():
        _p.normal_(0.0, 0.3, generator=_g)
_A, _B = torch.tensor([3, 0]), torch.tensor([1, 2])
_xi = torch.randn(3, 4, 2, 2, generator=_g, dtype=torch.float64)
_zi, _ldi = affine_coupling_forward(_xi, _A, _B, _conv, 2.0)
assert _zi.shape == _xi.shape and _ldi.shape == (3,)
assert torch.equal(_zi[:, _A], _xi[:, _A])
with torch.no_grad():
    _s_raw, _t = _conv(_xi[:, _A]).chunk(2, dim=1)
assert torch.allclose(_zi[:, _B], _xi[:, _B] * soft_clamp(_s_raw, 2.0).exp() + _t)
_Ji = torch.autograd.functional.jacobian(lambda v: affine_coupling_forward(v, _A, _B, _conv, 2.0)[0], _xi[1:2])
assert torch.allclose(_ldi[1], torch.linalg.slogdet(_Ji.reshape(16, 16)).logabsdet), \
    "images (B, C, H, W): sum s over every dimension but the batch"
### END HIDDEN TESTS
print("ex1 passed")

# %% [markdown]
# ### Exercise 2: the inverse
#
# Now the other direction: given $z$, recover $x$ and return
# $\log|\det \partial x/\partial z|$. Remember that $z_A = x_A$, so the conditioner sees
# exactly what it saw in the forward pass. No network is inverted.

# %% nbgrader={"grade": false, "grade_id": "04-ex2-coupling-inverse", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_coupling_inverse(z: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                            clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_A = z_A, x_B = (z_B - t) * exp(-s), (s, t) from conditioner(z_A); returns (x, log|det dx/dz|)."""
    ### BEGIN SOLUTION
    z_A, z_B = z[:, A], z[:, B]
    s_raw, t = conditioner(z_A).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    x = z.clone()
    x[:, B] = (z_B - t) * torch.exp(-s)
    return x, -s.flatten(start_dim=1).sum(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex2-coupling-inverse-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# By hand: A = [0], B = [1], (s_raw, t) = (z_0, 2 z_0), no clamp: x_1 = (z_1 - 2 z_0) e^{-z_0}.
_net = nn.Linear(1, 2, bias=False)
with torch.no_grad():
    _net.weight.copy_(torch.tensor([[1.0], [2.0]]))
_x, _ld = affine_coupling_inverse(torch.tensor([[1.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, None)
assert torch.allclose(_x, torch.tensor([[1.0, 1.0 / math.e]])), "x_A = z_A and x_B = (z_B - t) * exp(-s)"
assert torch.allclose(_ld, torch.tensor([-1.0])), "the inverse's logdet is minus the sum of s"
_g = torch.Generator().manual_seed(42)
for _trial in range(5):
    _d = int(torch.randint(2, 9, (1,), generator=_g))
    _perm = torch.randperm(_d, generator=_g)
    _k = int(torch.randint(1, _d, (1,), generator=_g))
    _A, _B = _perm[:_k], _perm[_k:]
    _clamp = [2.0, None][_trial % 2]
    _net = perturbed_mlp(len(_A), 2 * len(_B)).double()
    _x_true = 2 * torch.randn(6, _d, generator=_g, dtype=torch.float64)
    with torch.no_grad():  # the forward pass, written out: z_A = x_A, z_B = x_B exp(s) + t
        _s_raw, _t = _net(_x_true[:, _A]).chunk(2, dim=1)
        _s = soft_clamp(_s_raw, _clamp)
        _z = _x_true.clone()
        _z[:, _B] = _x_true[:, _B] * _s.exp() + _t
    _x, _ld = affine_coupling_inverse(_z, _A, _B, _net, _clamp)
    assert _x.shape == _z.shape and _ld.shape == (6,), "x shaped like z, one logdet per sample"
    assert torch.allclose(_x, _x_true, atol=1e-10), "inverse(forward(x)) should give x back"
    assert torch.allclose(_ld, -_s.sum(dim=1)), "the inverse's logdet is minus the sum of s"
    _J = torch.autograd.functional.jacobian(
        lambda v, A=_A, B=_B, net=_net, c=_clamp: affine_coupling_inverse(v, A, B, net, c)[0], _z[:1])
    assert torch.allclose(_ld[0], torch.linalg.slogdet(_J.reshape(_d, _d)).logabsdet), \
        "logdet differs from log|det dx/dz| computed by autograd"
### BEGIN HIDDEN TESTS
_conv = nn.Conv2d(2, 4, 3, padding=1).double()  # images: 4 channels, A = [1, 3], B = [2, 0]
with torch.no_grad():
    for _p in _conv.parameters():
        _p.normal_(0.0, 0.3, generator=_g)
_A, _B = torch.tensor([1, 3]), torch.tensor([2, 0])
_xi = torch.randn(3, 4, 2, 2, generator=_g, dtype=torch.float64)
with torch.no_grad():
    _s_raw, _t = _conv(_xi[:, _A]).chunk(2, dim=1)
    _s = soft_clamp(_s_raw, 3.0)
    _zi = _xi.clone()
    _zi[:, _B] = _xi[:, _B] * _s.exp() + _t
_xb, _ldi = affine_coupling_inverse(_zi, _A, _B, _conv, 3.0)
assert torch.allclose(_xb, _xi, atol=1e-10)
assert torch.allclose(_ldi, -_s.flatten(start_dim=1).sum(dim=1))
### END HIDDEN TESTS
print("ex2 passed")

# %% [markdown]
# ## 2. Why the scales are softly clamped
#
# The factor $\exp(s)$ is the price of the extra flexibility. Early in training, or on an
# unusual input, a network can output $s = 50$; in float32, $e^{89}$ already overflows, and
# several layers multiply their factors. The loss becomes `inf` or `NaN` and training is
# over. Implementations guard against it in different ways (RealNVP used a $\tanh$ with a
# learned scale, Glow a sigmoid). flowlib applies a smooth clamp to the raw log-scale,
#
# $$ s = \tfrac{2c}{\pi} \arctan\!\big(s_{\text{raw}} / c\big) \in (-c, c), $$
#
# which keeps $0$ at $0$ (so a zero-initialised network still starts at the identity map), is
# linear near zero with slope $2/\pi$, and bounds every layer's scale factor between $e^{-c}$
# and $e^{c}$. Here is a coupling
# whose network answers $s_{\text{raw}} = 50\,x_1$ with and without the clamp.

# %%
def linear_conditioner(gain: float) -> nn.Linear:
    """A conditioner for D = 2, x_1 kept: it reads x_1 and returns s_raw = gain * x_1 and t = 0 for x_2."""
    net = nn.Linear(1, 2, bias=False)  # the sizes Coupling.conditioner_sizes(half_mask(2, 0), Affine) = (1, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0] = gain
    return net


x_big = torch.tensor([[3.0, 1.0], [-3.0, 1.0], [0.01, 1.0]])
for clamp in (None, 2.0):
    layer = AffineCoupling(half_mask(2, 0), linear_conditioner(50.0), clamp=clamp)
    z_big, logdet_big = layer(x_big)
    print(f"clamp={clamp}: z finite: {bool(torch.isfinite(z_big).all())}, "
          f"logdet = {[round(v, 2) for v in logdet_big.tolist()]}")

s_grid = torch.linspace(-8, 8, 401)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(s_grid, s_grid, "k:", lw=1, label="no clamp")
for c in (1.0, 2.0, 3.0):
    ax.plot(s_grid, soft_clamp(s_grid, c), label=f"soft clamp, c = {c:g}")
ax.set(xlabel="raw log-scale", ylabel="log-scale s used", ylim=(-4, 4))
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Without the clamp the first sample is multiplied by $e^{150}$, which is `inf` in float32.
# With $c = 2$ the log-determinant saturates just below $\pm 2$, while the third sample (a
# small raw log-scale of 0.5) stays in the linear part of the clamp: $0.31 \approx 0.5 \cdot
# 2/\pi$. Because $\arctan$'s slope decays like $1/s^2$ rather than exponentially, a saturated
# unit still receives a gradient that can pull it back.
#
# ## 3. Masks for images, and the squeeze
#
# For an image $x \in \mathbb{R}^{C \times H \times W}$ RealNVP uses two kinds of masks
# (Dinh et al., 2017, section 3.4):
#
# * a **checkerboard** mask: kept where $(\text{row} + \text{column})$ is even, the same in
#   every channel. The structure lets each transformed pixel depend on every kept pixel, in
#   every channel; how far it actually looks is up to the conditioner (a convolutional network
#   reaches further with every layer). The cell after the next one checks it with autograd.
# * a **channel** mask: kept on the first half of the channels, everywhere in space.
#
# Alternating the parity (the complement mask) in the next layer transforms what was kept
# before. Here are both masks on a tensor of shape $(4, 4, 4)$, the shape of an 8x8 digit
# after one squeeze; white pixels are kept (they condition), black ones are transformed.

# %%
C, H, W = 4, 4, 4
masks = {"checkerboard, parity 0": checkerboard_mask(C, H, W, 0), "channel, parity 0": channel_mask(C, H, W, 0)}
fig, axes = plt.subplots(2, C, figsize=(1.6 * C, 3.6))
for row, (name, m) in zip(axes, masks.items(), strict=True):
    for ch, ax in enumerate(row):
        ax.imshow(m[ch].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(True)  # a frame, so that an all-white channel is still visible
        ax.set_title(f"channel {ch}", fontsize=8)
    row[0].set_ylabel(name, fontsize=8)
fig.tight_layout()
plt.show()
print({name: f"{int(m.sum())} of {m.numel()} kept" for name, m in masks.items()})

# %% [markdown]
# **One coupling, sliced or masked.** Both masks describe the same structure, kept
# coordinates $A$ and transformed ones $B$, and `Coupling` reads off the mask how to separate
# them. A channel mask holds one value per channel, so the layer **slices**: it cuts $x$ along
# the channels into $x_A$ (here the first $C/2$) and $x_B$ (the others), and the conditioner
# maps $C/2$ channels to $2 \cdot C/2$, the log-scales and then the shifts of $x_B$, exactly as
# in the equations of section 1. A checkerboard changes from pixel to pixel inside a channel,
# so no cut along the channels separates $A$ from $B$; there the layer **multiplies by the
# mask**: the conditioner reads $m \odot x$ (all $C$ channels, zeros where transformed) and
# returns $2C$ channels, and the layer uses them only where $m = 0$,
# $z = m \odot x + (1 - m) \odot \big(x \odot e^{s(m \odot x)} + t(m \odot x)\big)$.
# It is the same family of maps either way; slicing feeds the network no zeros and computes
# no outputs that are thrown away. The layer chooses by itself (`layer.sliced` says which),
# and `Coupling.conditioner_sizes(mask, Affine)` gives the sizes its conditioner needs:

# %%
for name, m in masks.items():
    n_in, n_out = Coupling.conditioner_sizes(m, Affine)
    layer = AffineCoupling(m, ResNetConditioner(n_in, n_out, hidden=16, blocks=1), clamp=2.0)
    with torch.no_grad():  # perturb the zero last layer, so that the coupling moves
        layer.conditioner.net[-1].conv.weight.normal_(0.0, 0.05)
        x_img = torch.randn(2, C, H, W)
        z_img, ld_img = layer(x_img)
        x_img_back, _ = layer.inverse(z_img)
    print(f"{name}: sliced={layer.sliced}, conditioner {n_in} -> {n_out} channels, "
          f"{count_parameters(layer.conditioner):,} weights, kept entries unchanged: "
          f"{torch.equal(z_img * m, x_img * m)}, round trip < 1e-5: {bool((x_img_back - x_img).abs().max() < 1e-5)}")

# Which inputs does each transformed entry depend on? The full Jacobian of the checkerboard layer, by autograd.
cb_mask = masks["checkerboard, parity 0"]
cb_layer = AffineCoupling(cb_mask, ResNetConditioner(*Coupling.conditioner_sizes(cb_mask, Affine), hidden=16, blocks=1),
                          clamp=2.0).double()
with torch.no_grad():
    cb_layer.conditioner.net[-1].conv.weight.normal_(0.0, 0.05)
J_cb = torch.autograd.functional.jacobian(lambda v: cb_layer(v)[0], torch.randn(1, C, H, W, dtype=torch.float64))
depends = J_cb.reshape(C * H * W, C * H * W) != 0  # row: an output entry, column: an input entry
kept = cb_mask.bool().flatten()
print("checkerboard: every transformed entry depends on all", int(kept.sum()), "kept entries:",
      bool(depends[~kept][:, kept].all()), "| on transformed entries other than itself:",
      int(depends[~kept][:, ~kept].sum()) - int((~kept).sum()))

# %% [markdown]
# Both layers are invertible and leave the kept entries alone; the sliced conditioner is the
# smaller one, since its first convolution reads half the channels and its last writes half.
# The last line is the Jacobian's verdict on the checkerboard: on this $4 \times 4$ tensor each
# transformed entry depends on all 32 kept entries (the conditioner's receptive field covers
# the whole image) and on no transformed entry but itself, which keeps the Jacobian triangular.
#
# A channel mask needs many channels, and an image has one (grey) or three (colour). The
# **squeeze** makes them: it cuts the image into $2 \times 2$ blocks and stacks the four
# pixels of each block as four channels, $(C, H, W) \to (4C, H/2, W/2)$ ("space to depth").
# It only rearranges numbers, so it is a permutation: invertible, with log-determinant 0.
# On a numbered $4 \times 4$ image, flowlib's convention puts pixel $(i, j)$ of each block
# in channel $2i + j$:

# %%
x_num = torch.arange(16.0).reshape(1, 1, 4, 4)
z_num = squeeze(x_num)
print("image (1, 4, 4):")
print(x_num[0, 0].int().numpy())
print("squeezed", tuple(z_num.shape[1:]), "channel by channel:")
for ch in range(4):
    print(f"channel {ch}:", z_num[0, ch].int().numpy().tolist())
print("unsqueeze(squeeze(x)) == x:", torch.equal(unsqueeze(z_num), x_num))

colours = plt.get_cmap("Pastel1").colors
fig, axes = plt.subplots(1, 5, figsize=(10, 2.3), gridspec_kw={"width_ratios": [2, 1, 1, 1, 1]})
for r in range(4):
    for c in range(4):
        axes[0].add_patch(plt.Rectangle((c, r), 1, 1, fc=colours[2 * (r % 2) + c % 2], ec="k"))
        axes[0].text(c + 0.5, r + 0.5, int(x_num[0, 0, r, c]), ha="center", va="center")
axes[0].set(xlim=(0, 4), ylim=(4, 0), title="x: 1 x 4 x 4")
for ch in range(4):
    ax = axes[ch + 1]
    for r in range(2):
        for c in range(2):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fc=colours[ch], ec="k"))
            ax.text(c + 0.5, r + 0.5, int(z_num[0, ch, r, c]), ha="center", va="center")
    ax.set(xlim=(0, 2), ylim=(2, 0), title=f"z channel {ch}")
for ax in axes:
    ax.set_aspect("equal")
    ax.axis("off")
plt.show()

# %% [markdown]
# Each colour is one position inside the $2 \times 2$ blocks, and it becomes one channel of
# half the height and width.
#
# ### Exercise 3: squeeze and unsqueeze
#
# Write both directions for a batch $(B, C, H, W)$ with even $H$ and $W$, in flowlib's
# channel order: output channel $4c + 2i + j$ holds pixel $(i, j)$ of every $2 \times 2$
# block of input channel $c$. Hint: `reshape` to $(B, C, H/2, 2, W/2, 2)$, then `permute`.

# %% nbgrader={"grade": false, "grade_id": "04-ex3-squeeze", "locked": false, "schema_version": 3, "solution": true, "task": false}
def squeeze2x2(x: torch.Tensor) -> torch.Tensor:
    """Space to depth: (B, C, H, W) -> (B, 4C, H/2, W/2); channel 4c + 2i + j holds pixel (i, j) of each block."""
    ### BEGIN SOLUTION
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)
    ### END SOLUTION


def unsqueeze2x2(z: torch.Tensor) -> torch.Tensor:
    """Depth to space, the inverse of squeeze2x2: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    ### BEGIN SOLUTION
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex3-squeeze-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_g = torch.Generator().manual_seed(43)
for _shape in [(1, 1, 4, 4), (3, 2, 6, 8), (2, 3, 2, 10)]:
    _x = torch.randn(_shape, generator=_g)
    _z = squeeze2x2(_x)
    assert _z.shape == squeeze(_x).shape, f"squeeze of {_shape} should have shape {tuple(squeeze(_x).shape)}"
    assert torch.equal(_z, squeeze(_x)), "the channels are in a different order than flowlib's squeeze"
    assert torch.equal(unsqueeze2x2(_z), _x), "unsqueeze2x2(squeeze2x2(x)) should give x back exactly"
### BEGIN HIDDEN TESTS
_z = torch.randn(2, 8, 3, 5, generator=_g)
assert torch.equal(unsqueeze2x2(_z), unsqueeze(_z))
### END HIDDEN TESTS
print("ex3 passed")

# %% [markdown]
# ## 4. The multi-scale architecture
#
# Every coupling in a flow of a $D$-dimensional image works on all $D$ dimensions, which is
# expensive for large images. RealNVP processes the image at several scales instead
# (Dinh et al., 2017, section 3.6). In the paper a scale applies three checkerboard couplings at
# the resolution it receives, then squeezes, then applies three channel couplings; the last
# scale applies four checkerboard couplings. flowlib's `realnvp_image` orders each scale its own
# way, so that every scale has the same structure. At each **scale** flowlib's flow
#
# 1. squeezes, $(C, H, W) \to (4C, H/2, W/2)$;
# 2. applies a few affine couplings (checkerboard masks first, then channel masks), all after
#    the squeeze;
# 3. **factors out** half of the channels: they are final latent variables, modelled by the
#    base density $\mathcal{N}(0, I)$, and only the other half goes on to the next level.
#
# The last scale keeps everything. Half of the dimensions therefore pass through one scale
# only, a quarter through two, and so on: the cost shrinks geometrically, and the latent
# acquires a coarse-to-fine structure (the variables factored out early describe fine
# detail, the last ones the coarse shape). The total dimension is preserved, as it must be
# for a bijection. Here are the shapes, scale by scale, for the 8x8 digits (2 scales) and for
# MNIST (28x28, 2 scales), computed by `MultiScale.scale_shapes`:

# %%
def multiscale_table(shape: tuple[int, int, int], scales: int) -> list[tuple]:
    """Rows (scale, input, couplings act on, factored out, passed on) of a multi-scale flow."""
    rows, current = [], tuple(shape)
    for scale, (c, h, w) in enumerate(MultiScale.scale_shapes(shape, scales)):
        if scale == scales - 1:  # the last scale keeps everything
            rows.append((scale, current, (c, h, w), (c, h, w), "-"))
        else:  # half of the channels become latent variables, the other half go on
            rows.append((scale, current, (c, h, w), (c // 2, h, w), (c // 2, h, w)))
            current = (c // 2, h, w)
    return rows


for name, shape, scales in [("8x8 digits", (1, 8, 8), 2), ("MNIST", (1, 28, 28), 2)]:
    print(f"{name}: x of shape {shape}, D = {math.prod(shape)}")
    print(f"  {'scale':>5}  {'input':>12}  {'squeezed, couplings':>20}  {'to the latent':>14}  {'passed on':>12}")
    latent_dims = 0
    for scale, inp, act, out, passed in multiscale_table(shape, scales):
        latent_dims += math.prod(out)
        print(f"  {scale:>5}  {inp!s:>12}  {act!s:>20}  {out!s:>14}  {passed!s:>12}")
    print(f"  latent dimensions in total: {latent_dims} (= D: {latent_dims == math.prod(shape)})")

# %% [markdown]
# The same on a real model: `realnvp_image` builds this architecture, and `split_latents`
# cuts its latent $z$ (returned in the image's shape) back into the per-scale pieces.

# %%
digits_shape = (1, 8, 8)
demo_model = realnvp_image(digits_shape, scales=2, depth=4, hidden=16, blocks=1, grey_levels=DIGITS_GREY_LEVELS)
x_demo = load_digits("train")[0][:4]
with torch.no_grad():
    demo_model.initialize(x_demo)  # ActNorm initialises on a first batch
    y_demo = (x_demo.float() + 0.5) / DIGITS_GREY_LEVELS  # dequantised (here: cell centres), in [0, 1]
    z_demo, _ = demo_model.flow(y_demo)
multiscale = demo_model.flow[1]
print("the model's flow:", [type(f).__name__ for f in demo_model.flow])
print("z shape:", tuple(z_demo.shape))
print("per-scale latents:", [tuple(p.shape[1:]) for p in multiscale.split_latents(z_demo)])
print("parameters:", count_parameters(demo_model))

# %% [markdown]
# The flow starts with `LogitPreprocess`: RealNVP models $\operatorname{logit}(\alpha + (1 -
# 2\alpha)\,y)$ of the pixel intensities $y \in [0, 1]$ rather than $y$ itself, because
# affine couplings with a Gaussian base live comfortably on the whole real line, not on a
# bounded cube. That map is one more bijection with its own log-determinant. Where does $y$
# come from? That is the next section.
#
# ## 5. Dequantisation: continuous densities for discrete data
#
# Pixels are integers: $x \in \{0, \dots, K - 1\}^D$ with $K = 256$ for 8-bit images and
# $K = 17$ for the 8x8 digits (each pixel counts the set bits of a $4 \times 4$ block). A
# flow defines a **density** on $\mathbb{R}^D$. Evaluated at the integer points themselves,
# the likelihood is meaningless: a density can put arbitrarily tall, narrow spikes on the
# grid points, and the log-likelihood of the training data goes to $+\infty$ without the
# model learning anything (Theis, van den Oord & Bethge, 2016, *A note on the evaluation of
# generative models*). One dimension is enough to see it. Take data on $K = 5$ grey levels and, as
# the model, narrow Gaussian bumps of width $\sigma$ on the integers with the right weights:

# %%
P_true = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)  # P(x = k), k = 0..4
grey_levels_1d = torch.arange(5, dtype=torch.float64)
entropy = float(-(P_true * P_true.log()).sum())


def bumps_log_density(v: torch.Tensor, sigma: float) -> torch.Tensor:
    """log of sum_k P(k) N(v; k, sigma^2): a continuous density with spikes on the integers."""
    log_n = -0.5 * ((v[:, None] - grey_levels_1d) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    return torch.logsumexp(log_n + P_true.log(), dim=1)


# E_x[...] weights each grey level by P(x); E_u[...] is a fine midpoint rule over u in [0, 1).
u_mid = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
sigmas = np.geomspace(1e-3, 1.0, 40)
at_integers = [float((P_true * bumps_log_density(grey_levels_1d, s)).sum()) for s in sigmas]
dequantised = [float((P_true * bumps_log_density((grey_levels_1d[:, None] + u_mid).flatten(), s)
                      .reshape(5, -1).mean(dim=1)).sum()) for s in sigmas]

fig, ax = plt.subplots(figsize=(5.5, 3.3))
ax.semilogx(sigmas, at_integers, label="density at the integers x")
ax.semilogx(sigmas, dequantised, label="dequantised: E_u log p(x + u)")
ax.axhline(-entropy, color="k", ls=":", label="best possible: E log P(x) = -H")
ax.set(xlabel="width of the bumps, sigma", ylabel="average log-likelihood (nats)", ylim=(-8, 6))
ax.legend(fontsize=8)
plt.show()
print(f"E log P(x) of the true discrete distribution: {-entropy:.3f} nats")
print(f"bumps at the integers, sigma = 0.001: {at_integers[0]:.3f} nats (grows without bound as sigma -> 0)")

# %% [markdown]
# The blue curve rises forever as the spikes narrow, far above the true $-H$, which no
# honest model of the discrete data can beat. The fix is to add noise that fills each
# integer's cell: **uniform dequantisation** (Uria et al., 2013; Theis et al., 2016) models
# $v = x + u$ with $u \sim U[0, 1)^D$. For any density $p$ on the continuous $v$, define the
# discrete model $P(x) = \int_{[0,1)^D} p(x + u)\,du$, the mass of $x$'s cell. By Jensen's
# inequality
#
# $$
# \log P(x) = \log \int_{[0,1)^D} p(x + u)\,du \;\ge\; \mathbb{E}_{u \sim U[0,1)^D}\big[\log p(x + u)\big],
# $$
#
# so maximising the continuous log-likelihood of dequantised data maximises a **lower bound**
# on the discrete one, and a spike no longer helps: the orange curve falls as $\sigma \to 0$,
# and it stays below $-H$. The bound is tight when $p$ is flat inside every cell (a
# histogram). In practice we also scale to $[0, 1]$, $y = (x + u)/K$, and the change of
# variables from $v$ to $y$ adds the constant $-D \log K$:
# $\log P(x) \ge \mathbb{E}_u[\log p_Y(y)] - D \log K$.
#
# **Variational dequantisation** (Ho et al., 2019, *Flow++*) replaces the uniform noise by a
# learned $q(u \mid x)$, itself a conditional flow. Importance weighting gives the bound
#
# $$
# \log P(x) \;\ge\; \mathbb{E}_{u \sim q(u \mid x)}\big[\log p(x + u) - \log q(u \mid x)\big],
# $$
#
# which with $q = 1$ is the uniform one. A learned $q$ can put its noise where $p$ has its
# mass inside each cell, so $p$ no longer has to be flat in every cell: the bound is tighter and
# the density smoother. In flowlib: `UniformDequantization` and `VariationalDequantization`.
#
# ### Bits per dimension
#
# Image models report the negative log-likelihood of *discrete* data in **bits per
# dimension**, $-\log_2 P(x) / D$. With the bound above and the model's density $p_Y$ on
# $[0,1]^D$ (in nats),
#
# $$
# \text{bits/dim} = \frac{-\log p_Y(y) + D \log K + \log q(u\mid x)}{D \ln 2}
# = \frac{-\log p_Y(y) + \log q(u \mid x)}{D \ln 2} + \log_2 K .
# $$
#
# The $\log_2 K$ term is easy to forget and changes everything: a model that is uniform on
# $[0,1]^D$ ($\log p_Y = 0$) scores exactly $\log_2 K$, 8 bits/dim on 8-bit images and
# $\log_2 17 \approx 4.09$ on the digits. That is the baseline any model must beat; multi-scale
# flows trained for hours on a GPU get close to 1 bit/dim on MNIST (lecture 5 gives one such
# figure with its source).

# %%
for name, K, D_img in [("8x8 digits", DIGITS_GREY_LEVELS, 64), ("MNIST", MNIST_GREY_LEVELS, 784)]:
    uniform = float(bits_per_dim(torch.tensor(0.0), D_img, grey_levels=K))
    print(f"{name}: K = {K}, D = {D_img}, uniform model on [0,1]^D: {uniform:.3f} bits/dim")

# %% [markdown]
# ### Exercise 4: bits per dimension with the $\log K$ term
#
# Convert a batch of log-densities $\log p_Y(y)$ (nats, one per image, the density of the
# dequantised image scaled to $[0,1]^D$) into bits per dimension of the discrete data, with
# an optional $\log q(u \mid x)$ (0 for uniform dequantisation).

# %% nbgrader={"grade": false, "grade_id": "04-ex4-bits-per-dim", "locked": false, "schema_version": 3, "solution": true, "task": false}
def discrete_bits_per_dim(log_p_y: torch.Tensor, num_dims: int, grey_levels: int,
                          log_q: torch.Tensor | float = 0.0) -> torch.Tensor:
    """bits/dim = (-log p_Y(y) + D log K + log q(u|x)) / (D ln 2), one value per image."""
    ### BEGIN SOLUTION
    return (-log_p_y + num_dims * math.log(grey_levels) + log_q) / (num_dims * math.log(2))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex4-bits-per-dim-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_g = torch.Generator().manual_seed(44)
for _D, _K in [(64, 17), (784, 256), (3 * 32 * 32, 256), (10, 2)]:
    _lp = 100 * torch.randn(8, generator=_g, dtype=torch.float64)
    _ours = discrete_bits_per_dim(_lp, _D, _K)
    assert _ours.shape == (8,), f"one value per image expected, got shape {tuple(_ours.shape)}"
    assert torch.allclose(_ours, bits_per_dim(_lp, _D, grey_levels=_K)), \
        f"D = {_D}, K = {_K}: differs from flowlib.metrics.bits_per_dim; did you add log2 K per dimension?"
    _lq = torch.randn(8, generator=_g, dtype=torch.float64)
    assert torch.allclose(discrete_bits_per_dim(_lp, _D, _K, _lq), dequantized_bits_per_dim(_lp, _D, _K, _lq)), \
        "with log q: it is added to -log p_Y (a looser q costs bits)"
### BEGIN HIDDEN TESTS
assert abs(float(discrete_bits_per_dim(torch.tensor(0.0), 784, 256)) - 8.0) < 1e-6
### END HIDDEN TESTS
print("ex4 passed")

# %% [markdown]
# ## 6. NICE versus RealNVP, with the same budget
#
# Now the experiment the lecture has been building to. Both models are trained by
# `flowlib.train.fit` with the same number of steps, batch size and learning rate.
#
# * **2D toys** (exact densities, so we measure $\mathrm{KL}(p_\text{data} \,\|\, p_X)$ in nats
#   by Monte Carlo; 0 is a perfect fit): `nice(2)` has 8 additive couplings and a final
#   scaling, `realnvp(2)` 8 affine couplings with the same MLPs. We switch off RealNVP's
#   ActNorm layers (a Glow addition, lecture 5) so that the *only* difference is the scale.
# * **8x8 digits** (test bits/dim, lower is better; the model with the best validation
#   figure during training is kept): `nice_image` with 4 additive checkerboard couplings at
#   full resolution, `realnvp_image` with the 2-scale architecture of section 4. Both use
#   uniform dequantisation and the same ResNet conditioners.

# %%
TOYS = ["eight_gaussians", "two_moons", "checkerboard"]
toy_models: dict[tuple[str, str], nn.Module] = {}
results: dict[tuple[str, str], float] = {}
params: dict[tuple[str, str], int] = {}
toy_builders = {
    "NICE": lambda: nice(2, couplings=8, hidden=64, layers=2),
    "RealNVP": lambda: realnvp(2, couplings=8, hidden=64, layers=2, actnorm=False),
}

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
for toy_name in TOYS:
    toy = get_toy(toy_name)
    x_toy = toy.sample(20_000, generator=torch.Generator().manual_seed(1))
    for model_name, build in toy_builders.items():
        torch.manual_seed(0)
        model = build()
        fit(model, x_toy, steps=TOY_STEPS, batch_size=256, lr=2e-3, seed=0, device=DEVICE)
        model.cpu()
        toy_models[toy_name, model_name] = model
        params[toy_name, model_name] = count_parameters(model)
        results[toy_name, model_name] = kl_divergence(toy, model, n=KL_SAMPLES,
                                                      generator=torch.Generator().manual_seed(2))
print(f"toys trained in {time.perf_counter() - t0:.0f} s")

# %%
fig, axes = plt.subplots(len(TOYS), 3, figsize=(8, 2.7 * len(TOYS)))
for row, toy_name in zip(axes, TOYS, strict=True):
    toy = get_toy(toy_name)
    plot_density_2d(toy, resolution=GRID, ax=row[0], title=f"{toy_name}: data")
    for ax, model_name in zip(row[1:], toy_builders, strict=True):
        plot_density_2d(toy_models[toy_name, model_name], bounds=toy.bounds, resolution=GRID, ax=ax,
                        title=f"{model_name}, KL = {results[toy_name, model_name]:.2f}")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# The eight Gaussians show the difference best. To turn one round blob (the base) into eight
# small ones, a map must compress space around each mode and stretch it in between. Additive
# couplings can only *move* mass: every layer preserves volume, and the final scaling is the
# same everywhere, so within this budget NICE barely leaves the single broad blob it started
# from. RealNVP's $\exp(s(\cdot))$ contracts and expands locally and starts to pull the modes
# apart (more steps sharpen them). Now the images: the digits arrive as `uint8` grey levels
# $0..16$, and the image models dequantise them inside `log_prob`.

# %%
x_train, _ = load_digits("train")
x_val, _ = load_digits("val")
x_test, _ = load_digits("test")
print("digits:", {"train": tuple(x_train.shape), "val": tuple(x_val.shape), "test": tuple(x_test.shape)},
      x_train.dtype, f"grey levels 0..{int(x_train.max())}")
image_builders = {
    "NICE": lambda: nice_image(digits_shape, couplings=4, hidden=32, blocks=1, grey_levels=DIGITS_GREY_LEVELS),
    "RealNVP": lambda: realnvp_image(digits_shape, scales=2, depth=4, hidden=32, blocks=1,
                                     grey_levels=DIGITS_GREY_LEVELS),
}
image_models: dict[str, nn.Module] = {}

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
for model_name, build in image_builders.items():
    torch.manual_seed(0)
    model = build()
    fitted = fit(model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(), steps=IMAGE_STEPS,
                 batch_size=128, lr=2e-3, seed=0, device=DEVICE)
    model.cpu()
    image_models[model_name] = model
    params["digits", model_name] = count_parameters(model)
    results["digits", model_name] = fitted.test
    print(f"{model_name}: best validation {fitted.best_val:.3f} bits/dim at step {fitted.best_step}, "
          f"test {fitted.test:.3f} bits/dim")
print(f"image models trained in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# Everything in one table. The numbers are Monte Carlo estimates after a short training and
# move a little from run to run and from machine to machine; the cell after it checks what
# must always hold.

# %% tags=["nbval-ignore-output"]
ROWS = [(toy_name, "KL (nats)") for toy_name in TOYS] + [("digits 8x8", "test bits/dim")]
table = ["| data | metric | NICE | RealNVP | parameters (NICE / RealNVP) |", "| --- | --- | ---: | ---: | ---: |"]
for data_name, metric in ROWS:
    key = "digits" if data_name.startswith("digits") else data_name
    table.append(f"| {data_name} | {metric} | {results[key, 'NICE']:.3f} | {results[key, 'RealNVP']:.3f} | "
                 f"{params[key, 'NICE']:,} / {params[key, 'RealNVP']:,} |")
budget = f"{TOY_STEPS} steps per toy model, {IMAGE_STEPS} per image model, on {DEVICE}"
print("\n".join(table))
print(f"\nbudget: {budget}; the uniform model on the digits scores log2(17) = {math.log2(17):.3f} bits/dim")

# %%
figures = [results["digits" if name.startswith("digits") else name, m] for name, _ in ROWS for m in toy_builders]
print("rows in the table:", len(ROWS))
print("every figure finite:", all(math.isfinite(v) for v in figures))
print("every KL non-negative up to Monte Carlo error:", all(results[t, m] > -0.05 for t in TOYS for m in toy_builders))
print(f"digits: RealNVP has {params['digits', 'RealNVP'] / params['digits', 'NICE']:.2f} times NICE's parameters")

# %% [markdown]
# On the toys RealNVP should win clearly, most of all on the eight Gaussians; there the two
# models have almost the same number of parameters. On the digits both beat the uniform
# baseline of 4.09 bits/dim after a few hundred steps, and RealNVP usually wins here too. But
# this comparison is **not at equal size**: the digits RealNVP has 179,568 parameters, 2.35
# times NICE's 76,488 (the last column and the line above). Its lead there mixes three causes,
# the scales, the multi-scale architecture (whose deeper scales see the whole digit at once)
# and the larger networks, and this table does not separate them. Samples from each image model
# (temperature 1, rounded to grey levels), next to real digits:

# %%
torch.manual_seed(3)
fig, axes = plt.subplots(1, 3, figsize=(13, 5))
image_grid(x_test[:36].float() / (DIGITS_GREY_LEVELS - 1), nrow=6, ax=axes[0], title="test digits")
for ax, (model_name, model) in zip(axes[1:], image_models.items(), strict=True):
    with torch.no_grad():
        samples = model.eval().sample_levels(36)
    image_grid(samples.float() / (DIGITS_GREY_LEVELS - 1), nrow=6, ax=ax, title=f"{model_name} samples")
plt.show()

# %% [markdown]
# With a CPU budget the samples are blurry, noisy strokes, better for RealNVP than for NICE;
# longer training (`FULL = True`, the default on a GPU) should sharpen them, which this run does
# not show. Likelihood and sample quality are
# related but not the same thing, which is one of the points of Theis et al. (2016).
#
# ### Uniform versus variational dequantisation
#
# The same RealNVP, trained twice for a few steps, once with uniform noise and once with a
# learned $q(u \mid x)$ (four affine couplings conditioned on $x$). Both report a lower
# bound on the test log-likelihood in bits/dim, so the smaller one is simply the better model.
# The variational dequantiser adds parameters and about triples the cost of a step.

# %% tags=["nbval-ignore-output"]
dequant_results = {}
for kind in ("uniform", "variational"):
    torch.manual_seed(0)
    model = realnvp_image(digits_shape, scales=2, depth=4, hidden=32, blocks=1, grey_levels=DIGITS_GREY_LEVELS,
                          dequantization=kind)
    t0 = time.perf_counter()
    fitted = fit(model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(), steps=DEQ_STEPS,
                 batch_size=128, lr=2e-3, seed=0, device=DEVICE)
    dequant_results[kind] = (fitted.test, count_parameters(model), time.perf_counter() - t0)
print("| dequantisation | test bits/dim | parameters | seconds |")
print("| --- | ---: | ---: | ---: |")
for kind, (bpd, n_params, seconds) in dequant_results.items():
    print(f"| {kind} | {bpd:.3f} | {n_params:,} | {seconds:.0f} |")

# %% [markdown]
# After about a hundred steps the gap is small and can go either way: the dequantiser has to
# learn too. In the ablation study of Ho et al. (2019) on CIFAR-10, models trained much longer,
# replacing variational by uniform dequantisation cost a clear margin in bits/dim. Try it
# with `FULL = True` on a GPU.
#
# ## 7. MNIST, from a shipped checkpoint
#
# A RealNVP that reaches a good MNIST figure needs a GPU and hours; even a modest one takes
# longer than a lecture should wait. So the course ships small trained models with flowlib,
# each stored with what its training run measured: the test bits/dim, the number of
# parameters, the training time and the machine. `flowlib.pretrained` reads them:
# `shipped_checkpoints()` finds them by name, `checkpoint_info(name)` returns the recorded
# figures, and `load_pretrained(name)` rebuilds the model.
#
# First the inventory: every shipped MNIST model with its recorded figures, next to the
# uniform baseline. There is no published RealNVP row: the RealNVP paper reports its image
# results on CIFAR-10, ImageNet, LSUN and CelebA, not on MNIST. Without checkpoints or without
# a copy of MNIST, these cells say how to get them and the lecture goes on.

# %% tags=["nbval-ignore-output"]
MODEL_NAMES = {"nice_image": "NICE", "realnvp_image": "RealNVP", "glow_image": "Glow"}
shipped = shipped_checkpoints()  # {name: file} for flowlib/checkpoints/*.pt
mnist_info = {}
for stem, path in shipped.items():
    try:
        info = checkpoint_info(path)
    except Exception as err:  # a damaged file or an older format: say so and go on
        print(f"{path.name}: could not be read ({type(err).__name__}: {err})")
        continue
    if info.get("data") == "mnist":
        mnist_info[stem] = info


def recorded_row(stem: str, info: dict) -> str:
    """One table row from what scripts/train_image_flow.py recorded with the weights."""
    metrics = info.get("metrics", {})
    bpd, seconds = metrics.get("test_bpd"), metrics.get("train_seconds")
    return (f"| {MODEL_NAMES.get(info.get('builder'), info.get('builder'))}, this course (`{stem}.pt`) | "
            f"{'?' if bpd is None else f'{bpd:.3f}'} | {metrics.get('parameters', 0):,} | "
            f"{'?' if seconds is None else f'{seconds / 60:.0f} min'}, {metrics.get('steps', '?')} steps | "
            f"{info.get('hardware', '?')} |")


table = ["| MNIST model | test bits/dim | parameters | training | hardware |", "| :-- | --: | --: | :-- | :-- |"]
by_figure = sorted(mnist_info.items(), key=lambda item: -item[1].get("metrics", {}).get("test_bpd", 0))
table += [recorded_row(stem, info) for stem, info in by_figure]
table.append(f"| uniform over the 256 grey levels | {math.log2(MNIST_GREY_LEVELS):.3f} | 0 | | |")
display(Markdown("\n".join(table)))
if "realnvp_mnist" not in mnist_info:
    print("No RealNVP for MNIST in flowlib/checkpoints/ (the digits results above are the CPU stand-in). To make one,\n"
          "with MNIST available (see below), run from the repository root, preferably on a GPU:\n"
          "    python scripts/train_image_flow.py --model realnvp --data mnist --minutes 10 --lr 3e-3 "
          "--out flowlib/checkpoints/realnvp_mnist.pt\n"
          "and run this section again.")

# %% [markdown]
# Now the models themselves (the RealNVP, and the NICE of lecture 3 if one is shipped), and the
# MNIST test images (`flowlib.data.load_mnist`). As a check that the weights came back intact,
# each model is scored again on the first test images, with one dequantisation draw per image;
# the recorded figure used four draws on all 10000, so the two agree to a few hundredths.

# %% tags=["nbval-ignore-output"]
mnist_models = {}
for stem, info in mnist_info.items():
    if info.get("builder") in ("nice_image", "realnvp_image"):
        try:
            mnist_models[MODEL_NAMES[info["builder"]]] = (load_pretrained(shipped[stem]), info)
        except Exception as err:  # say what failed and go on without this model
            print(f"{stem}.pt: could not be loaded ({type(err).__name__}: {err})")
mnist_models = dict(sorted(mnist_models.items()))  # NICE before RealNVP

try:
    mnist_test, _ = load_mnist("test", download=MNIST_DOWNLOAD)
    print("MNIST test images:", tuple(mnist_test.shape), mnist_test.dtype)
except DatasetError as err:
    mnist_test = None
    print("MNIST is not available here:", str(err).split(". ")[0] + ".")
    print("To use it, set the environment variable FLOWLIB_DATA to a folder holding mnist/*.gz before "
          "starting Jupyter,\nor run flowlib.data.load_mnist('test') once with internet access "
          "(it downloads and caches the files).")

if mnist_test is not None:
    for name, (model, info) in mnist_models.items():
        x_check = mnist_test[:MNIST_CHECK].float()
        pad = info.get("pad")
        if pad:  # trained on images padded to pad x pad (for more squeezes): score them the same way
            x_check = pad_to(x_check, pad)
        with torch.no_grad():
            now = float(model.bits_per_dim(x_check).mean())
        print(f"{name}: {now:.3f} bits/dim on {MNIST_CHECK} test images now, "
              f"{info['metrics']['test_bpd']:.3f} recorded on {info['metrics'].get('test_images', '?')}")

# %% [markdown]
# Samples, rounded to grey levels, at temperature $T = 1$ (the model itself) and at $T = 0.7$,
# i.e. $z = 0.7\,\varepsilon$ with the same $\varepsilon$: a cooler base keeps the samples
# nearer the centre of the latent space, which trades variety for cleaner strokes (lecture 5
# takes this further).

# %% tags=["nbval-ignore-output"]
if mnist_models:
    columns = (["test images"] if mnist_test is not None else []) + ["T = 1", "T = 0.7"]
    fig, axes = plt.subplots(len(mnist_models), len(columns), figsize=(4 * len(columns), 4.3 * len(mnist_models)),
                             squeeze=False)
    for row, (name, (model, _)) in zip(axes, mnist_models.items(), strict=True):
        panels = [mnist_test[:36].float() / (MNIST_GREY_LEVELS - 1)] if mnist_test is not None else []
        for temperature in (1.0, 0.7):
            torch.manual_seed(4)  # the same noise eps at both temperatures
            panels.append(model.sample_levels(36, temperature=temperature).float() / (model.grey_levels - 1))
        for ax, images, title in zip(row, panels, columns, strict=True):
            image_grid(images, nrow=6, ax=ax, title=title if title == "test images" else f"{name}: {title}")
    plt.show()
else:
    print("skipped: no NICE or RealNVP for MNIST in flowlib/checkpoints/ (see the cell above for how to make one)")

# %% [markdown]
# Read these pictures honestly. The shipped models are small (the parameters column) and were
# trained for minutes on a CPU, so their test figures sit far above the roughly 1 bit/dim of
# large flows trained for hours on a GPU, and their samples are not digits yet. NICE, whose
# couplings preserve volume,
# spreads grey texture over the middle of the frame. RealNVP has learnt that most of an MNIST
# image is black background and draws its ink as scattered specks. Cooling to $T = 0.7$ moves
# every sample towards the mode of the model, and the most likely MNIST image is an almost
# empty one: the cooled RealNVP samples fade to black.
#
# Note the mismatch. By likelihood the RealNVP is much the better model, at about half of
# NICE's bits/dim and a fifth of the uniform model's 8; by eye its samples are no better. A
# good likelihood says that the model puts probability on the test images, not that its
# typical samples look like them: likelihood and sample quality are different criteria
# (Theis et al., 2016). Lecture 5 shows the shipped Glow, whose samples do look like strokes.

# %% [markdown]
# ## Summary
#
# * The affine coupling $z_{d+1:D} = x_{d+1:D} \odot e^{s(x_{1:d})} + t(x_{1:d})$ is invertible
#   without inverting $s$ or $t$, and its Jacobian is triangular with
#   $\log|\det| = \sum_j s_j$; unlike NICE's additive coupling it changes volume in every layer.
# * The log-scales are softly clamped, $s = \tfrac{2c}{\pi}\arctan(s_\text{raw}/c)$, so a
#   single layer can never overflow.
# * On images, checkerboard and channel masks alternate; the squeeze trades space for channels;
#   the multi-scale architecture factors out half the dimensions at every scale.
# * Discrete data need dequantisation: uniform noise gives a lower bound on $\log P(x)$, a
#   learned noise distribution a tighter one; bits/dim carry a $\log_2 K$ term.
# * With the same budget RealNVP fits the toys and the digits better than NICE.
#
# Next, lecture 5: Glow replaces the fixed permutations and masks with learned invertible
# $1 \times 1$ convolutions and adds ActNorm.
#
# ### References
#
# * L. Dinh, J. Sohl-Dickstein, S. Bengio (2017). *Density estimation using Real NVP*. ICLR.
# * L. Dinh, D. Krueger, Y. Bengio (2015). *NICE: Non-linear Independent Components Estimation*. ICLR workshop.
# * L. Theis, A. van den Oord, M. Bethge (2016). *A note on the evaluation of generative models*. ICLR.
# * J. Ho, X. Chen, A. Srinivas, Y. Duan, P. Abbeel (2019). *Flow++: Improving flow-based generative
#   models with variational dequantization and architecture design*. ICML.
# * B. Uria, I. Murray, H. Larochelle (2013). *RNADE: The real-valued neural autoregressive
#   density-estimator*. NeurIPS.
# * D. P. Kingma, P. Dhariwal (2018). *Glow: Generative flow with invertible 1x1 convolutions*. NeurIPS.

# %% tags=["nbval-ignore-output"]
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s wall-clock, {time.process_time():.0f} s of CPU "
      f"(SMOKE={SMOKE}, device={DEVICE})")
