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
# 3. draw the checkerboard and channel masks and the *squeeze* that turns space into channels,
#    and see, pixel by pixel, which inputs condition which output;
# 4. follow the shapes through the multi-scale architecture, which factors out half of the
#    dimensions at every scale;
# 5. learn why a continuous density on discrete pixels needs *dequantisation*, how uniform and
#    variational dequantisation give a lower bound on the likelihood (and why the noise must fill
#    exactly one grey level), and how that becomes *bits per dimension*;
# 6. compare NICE and RealNVP on the same 2D toys (exact KL) and on the same images (test
#    bits/dim on the 8x8 digits), with the same budget and about the same number of parameters,
#    and look at the NICE and RealNVP trained on MNIST that ship with the course;
# 7. work nine exercises: write the coupling in both directions (the rest of the lecture then
#    runs on your code) and the squeeze, predict what two widgets will show, find a planted bug
#    in a log-determinant, derive the dequantisation bound of a histogram and the bits/dim of a
#    model that works in logit space, and design a flow for the digits under a fixed budget.
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
IMAGE_STEPS = 20 if SMOKE else (3000 if FULL else 400)  # steps per image model on the digits (section 6)
DEQ_STEPS = 10 if SMOKE else (1500 if FULL else 120)  # steps per run of the dequantisation comparison
TOY_STEPS = 40 if SMOKE else 500  # only if the trained toy flows are missing: steps per model (section 6)
KL_SAMPLES = 50_000  # Monte Carlo samples of each KL estimate (the same in every mode: the toy flows are loaded)
GRID = 60 if SMOKE else 120  # resolution of the density pictures
MNIST_CHECK = 200 if SMOKE else 1000  # MNIST test images on which a shipped model is re-scored (section 7)
MNIST_DOWNLOAD = not SMOKE  # may load_mnist fetch MNIST from the internet when no local copy exists?
# The design exercise (section 6) has a budget that is the same in every mode, CI included.
DESIGN_MAX_PARAMS, DESIGN_STEPS, DESIGN_BATCH, DESIGN_TARGET = 60_000, 300, 128, 2.25
# The toy models are tiny: splitting their operations over several CPU threads costs more
# than it saves, and a shared 2-core machine (Binder) is fastest with one.
torch.set_num_threads(1)

# %%
import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from matplotlib.colors import SymLogNorm
from torch import nn

import flowlib
from flowlib._checks import FlowInputError
from flowlib._integrity import IntegrityError, file_sha256, require_finite, verify_checksum
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
from flowlib.grading import (
    autograd_logabsdet,
    check_choice,
    check_close,
    check_own_work,
    check_vectorised,
    hint,
    yours_or_reference,
)
from flowlib.image_models import count_parameters, nice_image, realnvp_image
from flowlib.metrics import bits_per_dim, integrate_density_2d, kl_divergence
from flowlib.models import nice, realnvp
from flowlib.multiscale import MultiScale, squeeze, unsqueeze
from flowlib.nets import MLP
from flowlib.pretrained import checkpoint_info, load_pretrained, shipped_checkpoints
from flowlib.train import fit
from flowlib.transformers import Affine, soft_clamp
from flowlib.viz import image_grid, plot_density_2d
from flowlib.widgets import DequantizationBound, MasksAndSqueeze
from flowlib.widgets.masks import CONDITIONERS as CONDITIONER_NAMES
from flowlib.widgets.masks import MASKS as MASK_NAMES

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
#   recompute $s$ and $t$ from $z_{1:d}$, exactly as the forward pass computed them from
#   $x_{1:d}$, and then undo the elementwise affine map (Exercise 2 asks you for it, and for its
#   log-determinant). The networks are only ever evaluated forwards, so they can be as deep as
#   we like.
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
# ### Exercise 1: the forward pass and its log-determinant (3 points)
#
# Write the affine coupling yourself, in the sliced form in which the equations above are
# written. The split is along dimension 1 (the coordinates of a batch of vectors
# $(\text{batch}, D)$, the channels of a batch of images $(\text{batch}, C, H, W)$) and is
# given by two index tensors `A` (kept) and `B` (transformed), not necessarily contiguous,
# which together list every index once. Take $x_A$ = `x[:, A]` and $x_B$ = `x[:, B]`; the
# conditioner maps $x_A$ to a tensor with $2|B|$ entries along dimension 1, first the raw
# log-scales and then the shifts $t$ (`.chunk(2, dim=1)`). Squash the raw log-scales with
# `soft_clamp(s_raw, clamp)` (section 2 explains why), transform $x_B$, put $z_A = x_A$ and $z_B$
# back in their places, and return $z$ and $\log|\det \partial z/\partial x|$, one value per
# sample. The same code must work for vectors and for images: for an image, every channel in
# $B$ has an $s$ at every pixel, and each of them is one diagonal entry of the Jacobian.
#
# Write it with torch operations (`soft_clamp` is the one flowlib function to use): the tests
# compare your $z$ with the formula and your log-determinant with the one autograd computes
# from your own $z$, on vectors and on images. Section 6 then evaluates a trained RealNVP's
# density through *your* function, so a mistake here shows in a picture there.

# %% nbgrader={"grade": false, "grade_id": "04-ex1-coupling-forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_coupling_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                            clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine coupling in sliced form: keep x[:, A], transform x[:, B] with (s, t) from conditioner(x[:, A]).

    Returns (z, logdet): z shaped like x, logdet = log|det dz/dx| of shape (batch,).
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
def _conv_net(c_in: int, c_out: int, g: torch.Generator) -> nn.Module:
    """A random 3x3 convolution: a conditioner for images (float64)."""
    net = nn.Conv2d(c_in, c_out, 3, padding=1).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def _split(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random kept and transformed indices along dim 1, in any order."""
    perm = torch.randperm(n, generator=g)
    k = int(torch.randint(1, n, (1,), generator=g))
    return perm[:k], perm[k:]


def _check_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, net: nn.Module, clamp: float | None,
                   what: str) -> None:
    with hint(f"{what}: affine_coupling_forward(x, A, B, conditioner, clamp) should return (z, logdet) with z "
              f"shaped like x {tuple(x.shape)} and one logdet per sample; sum s over every dimension but the "
              f"batch (for images: channels, rows and columns)"):
        z, ld = affine_coupling_forward(x, A, B, net, clamp)
        check_close(ld, torch.zeros(x.shape[0], dtype=x.dtype), f"{what}: logdet has the wrong shape",
                    atol=float("inf"))
        with torch.no_grad():
            s_raw, t = net(x[:, A]).chunk(2, dim=1)
        s = soft_clamp(s_raw, clamp)
        want = x.clone()
        want[:, B] = x[:, B] * s.exp() + t
        check_close(z, want, f"{what}: z_A = x_A, and z_B = x_B * exp(s) + t in the order of B, "
                             f"with s = soft_clamp(s_raw, clamp)", atol=1e-9)
        check_close(ld, autograd_logabsdet(lambda v: affine_coupling_forward(v, A, B, net, clamp)[0], x),
                    f"{what}: logdet differs from log|det dz/dx| computed by autograd from your z", atol=1e-8)


# By hand: D = 2, A = [0], B = [1], (s_raw, t) = (x_0, 2 x_0), no clamp: z_1 = x_1 e^{x_0} + 2 x_0.
_net = nn.Linear(1, 2, bias=False)
with torch.no_grad():
    _net.weight.copy_(torch.tensor([[1.0], [2.0]]))
with hint("affine_coupling_forward should return a pair (z, logdet)"):
    _z, _ld = affine_coupling_forward(torch.tensor([[1.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, None)
check_close(_z, torch.tensor([[1.0, 3.0 * math.e + 2.0]]), "z_A = x_A and z_B = x_B * exp(s) + t")
check_close(_ld, torch.tensor([1.0]), "logdet is the sum of the log-scales s, one value per sample")
with hint("affine_coupling_forward should return a pair (z, logdet)"):
    _z, _ld = affine_coupling_forward(torch.tensor([[10.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, 2.0)
_s = 4.0 / math.pi * math.atan(10.0 / 2.0)  # the soft clamp of s_raw = 10 with c = 2
check_close(_ld, torch.tensor([_s]), "clamp the raw log-scale with soft_clamp(s_raw, clamp)")
check_close(_z, torch.tensor([[10.0, 3.0 * math.exp(_s) + 20.0]]), "the shift t is not clamped")
# Vectors: random splits (indices in any order), checked against the formula and autograd.
_g = torch.Generator().manual_seed(41)
for _trial in range(4):
    _d = int(torch.randint(2, 9, (1,), generator=_g))
    _A, _B = _split(_d, _g)
    _net = perturbed_mlp(len(_A), 2 * len(_B)).double()
    _check_forward(2 * torch.randn(5, _d, generator=_g, dtype=torch.float64), _A, _B, _net, [2.0, 3.0, None][_trial % 3],
                   f"vectors, D = {_d}, A = {_A.tolist()}, B = {_B.tolist()}")
# Images (batch, C, H, W): the split is along the channels, s has a value at every pixel of B's channels.
_A, _B = torch.tensor([3, 0]), torch.tensor([1, 2])
_check_forward(torch.randn(3, 4, 2, 3, generator=_g, dtype=torch.float64), _A, _B, _conv_net(2, 4, _g), 2.0,
               "images of shape (4, 2, 3), A = [3, 0], B = [1, 2]")
# One pass for the whole batch, written with torch (soft_clamp is the one flowlib function to use).
_net = perturbed_mlp(1, 2).double()
check_vectorised(affine_coupling_forward, lambda n: (torch.randn(n, 2, dtype=torch.float64), torch.tensor([0]),
                                                     torch.tensor([1]), _net, 2.0),
                 "affine_coupling_forward should treat the whole batch at once")
check_own_work(affine_coupling_forward, torch.randn(4, 2, dtype=torch.float64), torch.tensor([0]),
               torch.tensor([1]), _net, 2.0, allowed=("flowlib.transformers.soft_clamp", "flowlib.nets"),
               message="Write the coupling with torch operations; soft_clamp is the one flowlib function to use.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(141)
for _trial in range(3):
    _d = int(torch.randint(3, 13, (1,), generator=_g))
    _A, _B = _split(_d, _g)
    _check_forward(3 * torch.randn(int(torch.randint(1, 9, (1,), generator=_g)), _d, generator=_g,
                                   dtype=torch.float64), _A, _B, perturbed_mlp(len(_A), 2 * len(_B)).double(),
                   [1.0, None, 2.5][_trial], f"vectors, D = {_d}")
for _c, _h, _w in [(6, 3, 5), (2, 4, 4), (5, 1, 2)]:
    _A, _B = _split(_c, _g)
    _check_forward(torch.randn(2, _c, _h, _w, generator=_g, dtype=torch.float64), _A, _B,
                   _conv_net(len(_A), 2 * len(_B), _g), 2.0, f"images of shape ({_c}, {_h}, {_w})")
### END HIDDEN TESTS
print("ex1 passed")

# %% [markdown]
# ### Exercise 2: the inverse (2 points)
#
# Now the other direction: given $z$, recover $x$ and return $\log|\det \partial x/\partial z|$.
# Derive both from the forward pass: which part of $z$ can the conditioner be given, and why does
# it then compute the same $s$ and $t$ as in the forward pass? Solve $z_B = x_B \odot e^{s} + t$
# for $x_B$, and find the log-determinant of the inverse map (the Jacobian of an inverse is the
# inverse of the Jacobian). No network is inverted. The tests start from an $x$, apply the forward
# map written out by hand, and require your inverse to give $x$ back, with the log-determinant
# that autograd computes from your $x$; for vectors and for images. Section 6 draws samples of a
# trained RealNVP through your inverse.

# %% nbgrader={"grade": false, "grade_id": "04-ex2-coupling-inverse", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_coupling_inverse(z: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                            clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of affine_coupling_forward: returns (x, log|det dx/dz|), one logdet per sample."""
    ### BEGIN SOLUTION
    z_A, z_B = z[:, A], z[:, B]
    s_raw, t = conditioner(z_A).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    x = z.clone()
    x[:, B] = (z_B - t) * torch.exp(-s)
    return x, -s.flatten(start_dim=1).sum(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex2-coupling-inverse-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _forward_by_hand(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, net: nn.Module,
                     clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        s_raw, t = net(x[:, A]).chunk(2, dim=1)
        s = soft_clamp(s_raw, clamp)
        z = x.clone()
        z[:, B] = x[:, B] * s.exp() + t
    return z, s.flatten(start_dim=1).sum(dim=1)


def _check_inverse(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, net: nn.Module, clamp: float | None,
                   what: str) -> None:
    z, ld_forward = _forward_by_hand(x, A, B, net, clamp)
    with hint(f"{what}: affine_coupling_inverse(z, A, B, conditioner, clamp) should return (x, logdet) with x "
              f"shaped like z {tuple(z.shape)} and one logdet per sample; for images, sum over every dimension "
              f"but the batch"):
        x_back, ld = affine_coupling_inverse(z, A, B, net, clamp)
        check_close(x_back, x, f"{what}: inverse(forward(x)) should give x back; the conditioner sees z_A = x_A",
                    atol=1e-9)
        check_close(ld, -ld_forward, f"{what}: the inverse's log-determinant, log|det dx/dz|", atol=1e-9)
        check_close(ld, autograd_logabsdet(lambda v: affine_coupling_inverse(v, A, B, net, clamp)[0], z),
                    f"{what}: logdet differs from log|det dx/dz| computed by autograd from your x", atol=1e-8)


# By hand: A = [0], B = [1], (s_raw, t) = (z_0, 2 z_0), no clamp: x_1 = (3 - 2) e^{-1}.
_net = nn.Linear(1, 2, bias=False)
with torch.no_grad():
    _net.weight.copy_(torch.tensor([[1.0], [2.0]]))
with hint("affine_coupling_inverse should return a pair (x, logdet)"):
    _x, _ld = affine_coupling_inverse(torch.tensor([[1.0, 3.0]]), torch.tensor([0]), torch.tensor([1]), _net, None)
check_close(_x, torch.tensor([[1.0, 1.0 / math.e]]), "x_A = z_A; solve z_B = x_B exp(s) + t for x_B")
check_close(_ld, torch.tensor([-1.0]), "the inverse's log-determinant, one value per sample")
_g = torch.Generator().manual_seed(42)
for _trial in range(4):
    _d = int(torch.randint(2, 9, (1,), generator=_g))
    _A, _B = _split(_d, _g)
    _check_inverse(2 * torch.randn(6, _d, generator=_g, dtype=torch.float64), _A, _B,
                   perturbed_mlp(len(_A), 2 * len(_B)).double(), [2.0, None][_trial % 2],
                   f"vectors, D = {_d}, A = {_A.tolist()}, B = {_B.tolist()}")
_check_inverse(torch.randn(3, 4, 2, 2, generator=_g, dtype=torch.float64), torch.tensor([1, 3]),
               torch.tensor([2, 0]), _conv_net(2, 4, _g), 3.0, "images of shape (4, 2, 2), A = [1, 3], B = [2, 0]")
_net = perturbed_mlp(1, 2).double()
check_vectorised(affine_coupling_inverse, lambda n: (torch.randn(n, 2, dtype=torch.float64), torch.tensor([0]),
                                                     torch.tensor([1]), _net, 2.0),
                 "affine_coupling_inverse should treat the whole batch at once")
check_own_work(affine_coupling_inverse, torch.randn(4, 2, dtype=torch.float64), torch.tensor([0]),
               torch.tensor([1]), _net, 2.0, allowed=("flowlib.transformers.soft_clamp", "flowlib.nets"),
               message="Write the inverse with torch operations; soft_clamp is the one flowlib function to use.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(142)
for _trial in range(3):
    _d = int(torch.randint(3, 13, (1,), generator=_g))
    _A, _B = _split(_d, _g)
    _check_inverse(3 * torch.randn(int(torch.randint(1, 9, (1,), generator=_g)), _d, generator=_g,
                                   dtype=torch.float64), _A, _B, perturbed_mlp(len(_A), 2 * len(_B)).double(),
                   [1.5, None, 2.0][_trial], f"vectors, D = {_d}")
for _c, _h, _w in [(6, 3, 5), (3, 2, 4)]:
    _A, _B = _split(_c, _g)
    _check_inverse(torch.randn(2, _c, _h, _w, generator=_g, dtype=torch.float64), _A, _B,
                   _conv_net(len(_A), 2 * len(_B), _g), 2.0, f"images of shape ({_c}, {_h}, {_w})")
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
# ### Which pixels condition which: a widget
#
# The widget below puts one affine coupling on an $8 \times 8$ image with one channel. Pick a
# mask and a pixel $p$: the left panel shows which pixels the coupling keeps (blue) and which it
# transforms (orange), and, in dark colours, the inputs that the output $z_p$ depends on. Those
# are not drawn from a rule: they are the non-zero entries of row $p$ of $\partial z / \partial
# x$, computed by autograd through a flowlib `AffineCoupling` with that mask and a randomly
# initialised conditioner. The right panel is the squeezed tensor, its four channels placed where
# their pixels sit in each $2 \times 2$ block, every cell numbered with the image pixel it came
# from. The masks "squeeze, then ..." act on that squeezed tensor, as RealNVP's couplings do
# after a squeeze; the left panel still shows them in image coordinates. The conditioner either
# reads every kept entry ("dense") or is two $3 \times 3$ convolutions, which only reach two
# pixels (of the tensor it acts on) in every direction.

# %% tags=["nbval-ignore-output"]
masks_widget = MasksAndSqueeze(size=8, mask="checkerboard", conditioner="dense", pixel=(3, 4))
masks_widget

# %%
print(masks_widget.status)

# %% [markdown]
# Whatever the mask and the conditioner, a transformed pixel depends on itself and on kept
# pixels only, never on another transformed pixel, and a kept pixel on itself alone: the
# Jacobian is triangular once the kept entries are listed first, which is what makes its
# determinant the product of the diagonal. The conditioner decides only *how many* kept pixels
# a transformed one sees. The next cell checks it on every mask and both conditioners, for
# every pixel, from the widget's Jacobians.

# %%
checker = MasksAndSqueeze(size=8)
own = np.eye(64, dtype=bool)
facts = []
for mask_name in MASK_NAMES:
    for conditioner_name in CONDITIONER_NAMES:
        with checker.hold_updates():
            checker.controls["mask"].value = mask_name
            checker.controls["conditioner"].value = conditioner_name
        inputs = (checker.jacobian() != 0).numpy()  # row p: the inputs of z_p
        kept_flat = checker.kept_image().reshape(-1)
        facts.append(bool((inputs[kept_flat] == own[kept_flat]).all())  # kept: itself alone
                     and not (inputs & ~own)[:, ~kept_flat].any())  # nobody reads a transformed pixel but itself
        if conditioner_name == "dense":  # a dense conditioner reads every kept pixel
            facts.append(bool(inputs[~kept_flat][:, kept_flat].all()))
print(f"checked on {len(MASK_NAMES)} masks x {len(CONDITIONER_NAMES)} conditioners x 64 pixels:", all(facts))
#
# ### Exercise 3: predict, then move the widget (1 point)
#
# After a squeeze, the channel mask of parity 0 keeps channels 0 and 1 of the squeezed tensor
# and transforms channels 2 and 3. Before you choose "squeeze, then channel" in the widget,
# predict which pixels of the original $8 \times 8$ image this coupling keeps:
#
# * **a**: a checkerboard, the pixels with $r + c$ even;
# * **b**: every other row, rows 0, 2, 4 and 6;
# * **c**: every other column, columns 0, 2, 4 and 6;
# * **d**: the top half, rows 0 to 3.
#
# Reason with the squeeze: which position $(i, j)$ inside a $2 \times 2$ block does channel
# $2i + j$ hold, and where are those positions in the image? Return your letter from
# `predicted_kept_pixels`, then choose the mask in the widget and compare.

# %% nbgrader={"grade": false, "grade_id": "04-ex3-predict-the-masks", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_kept_pixels() -> str:
    """Your prediction for the pixels that "squeeze, then channel" keeps: "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    # Channels 0 and 1 hold (i, j) = (0, 0) and (0, 1): the top row of every 2x2 block, i.e. the
    # even rows of the image.
    return "b"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex3-predict-the-masks-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_3 = ("Channel 2i + j of the squeezed tensor holds pixel (i, j) of every 2x2 block: for channels 0 and 1, "
          "i = 0. Which rows of the image are the rows i = 0 of the blocks?")
with hint(HINT_3):
    _letter = check_choice(predicted_kept_pixels(), ["a", "b", "c", "d"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
_widget = MasksAndSqueeze(size=8, mask="squeeze, then channel")
_r, _c = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
_patterns = {"a": (_r + _c) % 2 == 0, "b": _r % 2 == 0, "c": _c % 2 == 0, "d": _r < 4}
_right = next(k for k, v in _patterns.items() if np.array_equal(v, _widget.kept_image()))
assert _letter == _right, f"Not {_letter!r}: the widget keeps the pixels of answer {_right!r}. {HINT_3}"
### END HIDDEN TESTS
print("ex3 passed")

# %% [markdown]
# ### Exercise 4: find the bug (2 points)
#
# Here is a masked affine coupling written out by hand, in the form of the formula above,
# $z = m \odot x + (1 - m) \odot \big(x \odot e^{s(m \odot x)} + t(m \odot x)\big)$. It inverts
# exactly and leaves the kept pixels alone, as the next cell shows; but its log-determinant has a
# planted bug. A model built from it would report a wrong likelihood and train towards it, and
# nothing in its samples or its round trip would say so. Find the bug with the check of section
# 1: compare `layer(x)[1]` with the log-determinant that autograd computes from the layer's own
# $z$, `autograd_logabsdet(lambda v: layer(v)[0], x)` (from `flowlib.grading`), on a few
# images, and look at how the difference relates to the log-scales $s$ the layer computes
# (`layer.scales(x)`). Then
#
# 1. name the bug in `bug_in_the_logdet`: **a**: it sums over the batch as well as over the
#    pixels; **b**: it counts the log-scales of the kept pixels too, where $z = x$; **c**: it has
#    the sign of the inverse's, $\log|\det \partial x / \partial z|$; **d**: it leaves out the
#    shifts $t$, which change the volume too;
# 2. write the corrected forward pass, `fixed_masked_forward(x, mask, conditioner, clamp)`,
#    returning $(z, \log|\det \partial z/\partial x|)$. It must work for any binary mask of the
#    event shape (a checkerboard, a channel mask) and a conditioner that maps $C$ channels to
#    $2C$, as in the class below. The tests check it against autograd.

# %%
class MaskedAffineCoupling(nn.Module):
    """z = m x + (1 - m)(x exp(s) + t), (s_raw, t) = conditioner(m x), s = soft_clamp(s_raw). One bug."""

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module, clamp: float = 2.0) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.conditioner, self.clamp = conditioner, clamp

    def scales(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t), each shaped like x: the log-scales and shifts at every entry."""
        s_raw, t = self.conditioner(self.mask * x).chunk(2, dim=1)
        return soft_clamp(s_raw, self.clamp), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask
        s, t = self.scales(x)
        z = m * x + (1 - m) * (x * torch.exp(s) + t)
        return z, s.flatten(start_dim=1).sum(dim=1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask
        s, t = self.scales(z)  # m z = m x: the same s and t as in the forward pass
        x = m * z + (1 - m) * ((z - t) * torch.exp(-s))
        return x, -s.flatten(start_dim=1).sum(dim=1)


def random_conv(c_in: int, c_out: int, seed: int, scale: float = 0.3) -> nn.Module:
    """A random 3x3 convolution (float64): a conditioner that moves."""
    net = nn.Conv2d(c_in, c_out, 3, padding=1).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


buggy = MaskedAffineCoupling(checkerboard_mask(1, 4, 4, 0).double(), random_conv(1, 2, seed=5))
x_bug = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
with torch.no_grad():
    z_bug, logdet_bug = buggy(x_bug)
    x_bug_back, _ = buggy.inverse(z_bug)
print("round trip exact (< 1e-12):", bool((x_bug_back - x_bug).abs().max() < 1e-12))
print("kept pixels unchanged:", torch.equal(z_bug * buggy.mask, x_bug * buggy.mask))
print("its log-determinants:", [round(v, 3) for v in logdet_bug.tolist()])

# %% nbgrader={"grade": false, "grade_id": "04-ex4-debug-the-logdet", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bug_in_the_logdet() -> str:
    """What is wrong with MaskedAffineCoupling's log-determinant: "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    # autograd minus the layer's figure is minus the sum of m * s: the kept entries have z = x,
    # a diagonal entry 1 of the Jacobian, but their (unused) s is counted.
    return "b"
    ### END SOLUTION


def fixed_masked_forward(x: torch.Tensor, mask: torch.Tensor, conditioner: nn.Module,
                         clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked affine coupling of MaskedAffineCoupling, with the right log|det dz/dx| (one per sample)."""
    ### BEGIN SOLUTION
    s_raw, t = conditioner(mask * x).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    z = mask * x + (1 - mask) * (x * torch.exp(s) + t)
    return z, ((1 - mask) * s).flatten(start_dim=1).sum(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex4-debug-the-logdet-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_4 = ("Only the transformed entries have a diagonal entry exp(s) in dz/dx; a kept entry has z = x, a diagonal "
          "entry 1, whatever the conditioner wrote at its place.")


def _check_fixed(x: torch.Tensor, mask: torch.Tensor, net: nn.Module, clamp: float | None, what: str) -> None:
    with hint(f"{what}: fixed_masked_forward(x, mask, conditioner, clamp) should return (z, logdet), z shaped "
              f"like x {tuple(x.shape)}, one logdet per sample. {HINT_4}"):
        z, ld = fixed_masked_forward(x, mask, net, clamp)
        with torch.no_grad():
            s_raw, t = net(mask * x).chunk(2, dim=1)
        want = mask * x + (1 - mask) * (x * soft_clamp(s_raw, clamp).exp() + t)
        check_close(z, want, f"{what}: z must stay the layer's z (only its log-determinant was wrong)", atol=1e-9)
        check_close(ld, autograd_logabsdet(lambda v: fixed_masked_forward(v, mask, net, clamp)[0], x),
                    f"{what}: logdet differs from log|det dz/dx| computed by autograd. {HINT_4}", atol=1e-8)


with hint(HINT_4):
    _letter = check_choice(bug_in_the_logdet(), ["a", "b", "c", "d"], "Answer with one letter.")
_g = torch.Generator().manual_seed(44)
for _parity in (0, 1):
    _check_fixed(torch.randn(3, 1, 4, 4, generator=_g, dtype=torch.float64), checkerboard_mask(1, 4, 4, _parity).double(),
                 random_conv(1, 2, seed=10 + _parity), 2.0, f"a checkerboard of parity {_parity} on (1, 4, 4)")
_check_fixed(torch.randn(2, 4, 2, 2, generator=_g, dtype=torch.float64), channel_mask(4, 2, 2, 1).double(),
             random_conv(4, 8, seed=12), None, "a channel mask on (4, 2, 2)")
check_own_work(fixed_masked_forward, torch.randn(2, 1, 4, 4, dtype=torch.float64), checkerboard_mask(1, 4, 4, 0).double(),
               random_conv(1, 2, seed=13), 2.0, allowed=("flowlib.transformers.soft_clamp",),
               message="Write the corrected coupling with torch operations; soft_clamp is the one flowlib function to use.")
### BEGIN HIDDEN TESTS
with torch.no_grad():
    _s, _ = buggy.scales(x_bug)
_gap = logdet_bug - autograd_logabsdet(lambda v: buggy(v)[0], x_bug)
_kept = (buggy.mask * _s).flatten(start_dim=1).sum(dim=1)
_right = "b" if torch.allclose(_gap, _kept, atol=1e-9) else "?"
assert _letter == _right, f"Not {_letter!r}: compare the gap with the sum of s over the kept pixels. {HINT_4}"
_g = torch.Generator().manual_seed(144)
for _c, _h, _w, _kind in [(2, 4, 6, "checkerboard"), (3, 3, 3, "checkerboard"), (6, 2, 4, "channel")]:
    _m = (checkerboard_mask if _kind == "checkerboard" else channel_mask)(_c, _h, _w, 1).double()
    _check_fixed(torch.randn(int(torch.randint(1, 6, (1,), generator=_g)), _c, _h, _w, generator=_g,
                             dtype=torch.float64), _m, random_conv(_c, 2 * _c, seed=int(_c * _h)), 1.5,
                 f"a {_kind} mask on ({_c}, {_h}, {_w})")
### END HIDDEN TESTS
print("ex4 passed")

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
# ### Exercise 5: squeeze and unsqueeze (2 points)
#
# Write both directions for a batch $(B, C, H, W)$ with even $H$ and $W$, in flowlib's
# channel order: output channel $4c + 2i + j$ holds pixel $(i, j)$ of every $2 \times 2$
# block of input channel $c$, at the block's position. So pixel $(r, q)$ of channel $c$ goes to
# channel $4c + 2 (r \bmod 2) + (q \bmod 2)$, at $(\lfloor r/2 \rfloor, \lfloor q/2 \rfloor)$.
# Use `reshape` and `permute` (no loop: the whole batch at once), not flowlib's own `squeeze`.
# The tests build the squeezed tensor entry by entry from that rule, on single-channel and
# multi-channel images; section 4 then squeezes a digit with your function.

# %% nbgrader={"grade": false, "grade_id": "04-ex5-squeeze", "locked": false, "schema_version": 3, "solution": true, "task": false}
def squeeze2x2(x: torch.Tensor) -> torch.Tensor:
    """Space to depth: (B, C, H, W) -> (B, 4C, H/2, W/2) in flowlib's channel order."""
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


# %% nbgrader={"grade": true, "grade_id": "04-ex5-squeeze-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_5 = ("Reshape (B, C, H, W) to (B, C, H/2, 2, W/2, 2): the two size-2 axes are i and j. Put them right "
          "after the channel axis (permute), then merge (C, 2, 2) into 4C channels; unsqueeze undoes each step.")


def _squeeze_by_hand(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    z = torch.empty(b, 4 * c, h // 2, w // 2, dtype=x.dtype)
    for ch in range(c):
        for r in range(h):
            for q in range(w):
                z[:, 4 * ch + 2 * (r % 2) + q % 2, r // 2, q // 2] = x[:, ch, r, q]
    return z


def _check_squeeze(shape: tuple[int, int, int, int], g: torch.Generator) -> None:
    x = torch.randn(shape, generator=g)
    want = _squeeze_by_hand(x)
    with hint(f"images of shape {shape[1:]}, a batch of {shape[0]}: squeeze2x2 should return shape "
              f"{tuple(want.shape)}. {HINT_5}"):
        check_close(squeeze2x2(x), want, f"squeeze2x2 of a {shape} batch: an entry is in the wrong place", atol=0)
    with hint(f"unsqueeze2x2 of shape {tuple(want.shape)} should return {shape}. {HINT_5}"):
        check_close(unsqueeze2x2(want), x, "unsqueeze2x2(squeeze2x2(x)) should give x back exactly", atol=0)


_g = torch.Generator().manual_seed(45)
for _shape in [(1, 1, 4, 4), (3, 1, 8, 8), (2, 3, 6, 4)]:
    _check_squeeze(_shape, _g)
check_vectorised(squeeze2x2, lambda n: (torch.randn(n, 2, 4, 4),), "squeeze2x2 should treat the whole batch at once")
check_vectorised(unsqueeze2x2, lambda n: (torch.randn(n, 8, 2, 2),), "unsqueeze2x2 should treat the batch at once")
check_own_work(squeeze2x2, torch.randn(2, 1, 4, 4), message="Write the squeeze with reshape and permute.")
check_own_work(unsqueeze2x2, torch.randn(2, 4, 2, 2), message="Write the unsqueeze with reshape and permute.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(145)
for _shape in [(1, 2, 2, 10), (4, 5, 4, 6), (1, 1, 12, 2)]:
    _check_squeeze(_shape, _g)
### END HIDDEN TESTS
print("ex5 passed")

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
# What one squeeze does to a real digit, computed with your `squeeze2x2` of Exercise 5: each of
# the four channels is the digit sampled at one position of the $2 \times 2$ blocks, at half the
# resolution, so every channel still looks like the digit. (Channel order matters: the masks of
# the next couplings are written for flowlib's order.)

# %%
squeeze_used = yours_or_reference(squeeze2x2, squeeze, "Exercise 5")
digit = x_demo[:1].float()
channels = squeeze_used(digit)
fig, axes = plt.subplots(1, 5, figsize=(9, 2.4), gridspec_kw={"width_ratios": [2, 1, 1, 1, 1]})
axes[0].imshow(digit[0, 0], cmap="gray", vmin=0, vmax=DIGITS_GREY_LEVELS - 1)
axes[0].set_title("a digit, 8 x 8", fontsize=9)
for k, ax in enumerate(axes[1:]):
    ax.imshow(channels[0, k], cmap="gray", vmin=0, vmax=DIGITS_GREY_LEVELS - 1)
    ax.set_title(f"channel {k}\n(i, j) = ({k // 2}, {k % 2})", fontsize=8)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()
print("squeezed shape:", tuple(channels.shape), "| the same as flowlib's squeeze:", torch.equal(channels, squeeze(digit)))

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
# histogram whose bins are the cells). In practice we also scale to $[0, 1]$, $y = (x + u)/K$, and the change of
# variables from $v$ to $y$ adds the constant $-D \log K$:
# $\log P(x) \ge \mathbb{E}_u[\log p_Y(y)] - D \log K$.

# %% [markdown]
# ### Why the noise must fill exactly one grey level: a widget
#
# The bound needs $u$ to range over the whole cell, $u \sim U[0, 1)$. What if the noise is
# narrower, $u \sim U[0, w)$ with $w < 1$, or wider? The widget below takes discrete 1D data on
# $K = 6$ grey levels and, as the model, the density that a flow trained on $v = x + u$ with
# noise of width $w$ would learn at best: each level spread evenly over $[x, x + w)$, blurred a
# little (a flow cannot draw perfect steps; the second slider). On the right it traces three
# figures against $w$, in bits per dimension (here $D = 1$): what training and testing with noise
# of width $w$ *reports*, $-\mathbb{E}\log_2 p(x + u)$ with $u \sim U[0, w)$; what the model
# *actually* gives the discrete data, $-\mathbb{E}\log_2 P(x)$ with $P(x)$ the mass of $p$ on
# $[x, x + 1)$; and the entropy $H(P)$ of the data, below which no model of the discrete data can
# go. The reported figure goes through `dequantized_bits_per_dim`, the one bits/dim formula of the
# course. A reported figure is a valid bound when it is no better (no lower) than the actual one.

# %% tags=["nbval-ignore-output"]
dequantization_widget = DequantizationBound(width=0.25, blur=0.03)
dequantization_widget

# %%
print(dequantization_widget.status)

# %% [markdown]
# ### Exercise 6: predict, then move the widget (1 point)
#
# Set the blur to 0: the model is then exactly the density of $v = x + u$, a box of height
# $P(x)/w$ on $[x, x + w)$ for every grey level $x$. Before you move the noise width to
# $w = 0.1$, work out by how many bits per dimension the **reported** figure will lie *below* the
# entropy $H(P)$. (Write $-\log_2 p(x + u)$ for $u$ in $[0, w)$, and average it over $u$ and $x$.)
# Return the number from `predicted_bits_below_entropy`, then move the sliders and compare.

# %% nbgrader={"grade": false, "grade_id": "04-ex6-predict-the-dequantization", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_bits_below_entropy() -> float:
    """Your prediction of H(P) minus the reported bits/dim, for blur 0 and w = 0.1."""
    ### BEGIN SOLUTION
    # p(x + u) = P(x) / w for u in [0, w): -log2 p = -log2 P(x) + log2 w, so the report is
    # H(P) + log2 w, log2(1 / w) = log2(10) = 3.32 bits below the entropy.
    return math.log2(10)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex6-predict-the-dequantization-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_6 = ("On [x, x + w) the box model is p = P(x) / w, so -log2 p(x + u) = -log2 P(x) + log2 w for every u; "
          "average over x ~ P. How does log2 w compare with 0 when w < 1?")
with hint(HINT_6):
    _guess = float(predicted_bits_below_entropy())
assert math.isfinite(_guess), f"Return a number (bits per dimension). {HINT_6}"
### BEGIN HIDDEN TESTS
_widget = DequantizationBound(width=0.1, blur=0.0, curve_points=2)
_gap = _widget.entropy_bits - _widget.reported_bits
assert abs(_guess - _gap) < 0.02, f"The widget reports {_gap:.3f} bits below the entropy, not {_guess:.3f}. {HINT_6}"
### END HIDDEN TESTS
print("ex6 passed")

# %% [markdown]
# So with $w < 1$ the same training reports a figure that beats the entropy, which no model of
# the discrete data can: it is no bound at all, and the narrower the noise the better it looks.
# Tested honestly with $u \sim U[0, 1)$ (the dashed curve), the same spiky model is poor. With
# $w = 1$ the reported figure is above the actual one for every blur (Jensen), and equal to it,
# and to the entropy, for the unblurred box: a density flat in every cell makes the bound tight.
#
# ### Exercise 7: the bound for a histogram, derived (2 points)
#
# How loose is the bound when $p$ is *not* flat in a cell? Take a histogram model on one
# dimension: inside the cell $[x, x + 1)$ of every grey level $x$, $p$ is constant on $n$ equal
# sub-intervals, with heights $h_{x,1}, \dots, h_{x,n}$ (so the total mass is 1 when the heights
# of all cells average to 1 over the cells; the test does not need that). Derive, in closed form,
#
# * the uniform-dequantisation bound $\mathbb{E}_{u \sim U[0,1)}\big[\log p(x + u)\big]$, and
# * the discrete log-likelihood $\log P(x) = \log \int_0^1 p(x + u)\,du$,
#
# for every $x$, and write them in `histogram_bound(log_heights)`, which receives the logarithms
# $\log h_{x,j}$ as a tensor of shape $(K, n)$ and returns the two as tensors of shape $(K,)$, in
# that order. Heights can be huge or tiny: the tests use log-heights up to $\pm 800$, whose
# exponentials overflow float64, so work with the logarithms. The tests compare your formulas with
# a numerical integral of $p$ over each cell, check that the bound never exceeds $\log P(x)$, and
# that it equals it when the cell is flat. Which classical inequality between two means is this?

# %% nbgrader={"grade": false, "grade_id": "04-ex7-histogram-bound", "locked": false, "schema_version": 3, "solution": true, "task": false}
def histogram_bound(log_heights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_u log p(x + u), log P(x)) per cell x, for a histogram with log-heights of shape (K, n)."""
    ### BEGIN SOLUTION
    # p = h_{x,j} on a fraction 1/n of the cell: E_u log p = mean_j log h_{x,j} (log of the geometric
    # mean), P(x) = mean_j h_{x,j} (the arithmetic mean). Jensen for the logarithm is AM >= GM.
    n = log_heights.shape[1]
    return log_heights.mean(dim=1), torch.logsumexp(log_heights, dim=1) - math.log(n)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex7-histogram-bound-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_7 = ("p takes the value h_{x,j} on a fraction 1/n of the cell. E_u log p(x + u) is then an average of log "
          "h_{x,j}; P(x) is an average of the h_{x,j} themselves. Take the log of that average without "
          "exponentiating huge numbers: torch.logsumexp.")


def _by_quadrature(log_h: torch.Tensor, per_bin: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The two integrals by the midpoint rule over u in [0, 1), per_bin points in every sub-interval."""
    k, n = log_h.shape
    u = (torch.arange(n * per_bin, dtype=torch.float64) + 0.5) / (n * per_bin)
    log_p = log_h[:, (u * n).long()]  # log p(x + u) at every midpoint
    return log_p.mean(dim=1), torch.logsumexp(log_p, dim=1) - math.log(n * per_bin)


def _check_histogram(log_h: torch.Tensor, what: str) -> None:
    with hint(f"{what}: histogram_bound(log_heights) of shape {tuple(log_h.shape)} should return two tensors of "
              f"shape ({log_h.shape[0]},). {HINT_7}"):
        bound, log_P = histogram_bound(log_h)
        want_bound, want_log_P = _by_quadrature(log_h)
        check_close(bound, want_bound, f"{what}: the bound E_u log p(x + u) differs from the integral. {HINT_7}",
                    atol=1e-9)
        check_close(log_P, want_log_P, f"{what}: log P(x) differs from the log of the integral of p over the "
                                       f"cell. {HINT_7}", atol=1e-9)
    assert bool((bound <= log_P + 1e-12).all()), f"{what}: a bound above log P(x)? {HINT_7}"


_g = torch.Generator().manual_seed(47)
_check_histogram(torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64), "one cell, heights 1 and 3")
_check_histogram(torch.randn(6, 4, generator=_g, dtype=torch.float64), "6 cells of 4 sub-intervals")
_check_histogram(800 * torch.randn(3, 5, generator=_g, dtype=torch.float64), "log-heights of about +-800")
_flat = torch.full((4, 7), -0.3, dtype=torch.float64)
with hint(HINT_7):
    _b, _l = histogram_bound(_flat)
    check_close(_b, _l, "a flat cell: the bound is tight (equal to log P(x))", atol=1e-12)
check_vectorised(histogram_bound, lambda k: (torch.randn(k, 3, dtype=torch.float64),),
                 "histogram_bound should treat all cells at once")
check_own_work(histogram_bound, torch.randn(2, 3, dtype=torch.float64), message="Write the two formulas with torch.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(147)
for _k, _n in [(1, 1), (17, 3), (5, 12)]:
    _check_histogram(5 * torch.randn(_k, _n, generator=_g, dtype=torch.float64), f"{_k} cells of {_n} sub-intervals")
_check_histogram(torch.tensor([[900.0, -900.0, 0.0]], dtype=torch.float64), "log-heights 900, -900 and 0")
### END HIDDEN TESTS
print("ex7 passed")

# %% [markdown]
# The bound is the logarithm of the *geometric* mean of the heights in each cell and $P(x)$ is
# their *arithmetic* mean: Jensen's inequality here is the inequality of the arithmetic and
# geometric means, with equality only for equal heights. The spikier $p$ is inside a cell, the
# more the bound loses. A learned noise distribution (next) lets $p$ be uneven in a cell without
# paying for it.

# %% [markdown]
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
# ### Exercise 8: bits per dimension from the logit space, derived (2 points)
#
# The image flows of this course do not model $y$ itself. Their first layer is the logit map of
# section 4, $\ell = \operatorname{logit}\big(\alpha + (1 - 2\alpha)\,y\big)$ elementwise
# ($\alpha = 0.05$ in flowlib), and the couplings and the base density give a density
# $p_L(\ell)$ to $\ell$. Write `bits_per_dim_from_logits(log_p_l, y, grey_levels, alpha, log_q)`:
# from $\log p_L(\ell)$ (nats, one value per image) and the dequantised images $y \in [0, 1]^D$,
# return the bits per dimension of the discrete data, one value per image. Two steps:
#
# 1. derive $\log p_Y(y)$ from $\log p_L(\ell)$: the change of variables of lecture 1 for the
#    logit map, which needs $d\ell / dy$ for one coordinate (work it out; it is not written in
#    this lecture), summed over the $D$ coordinates of each image;
# 2. turn $\log p_Y(y)$ into bits per dimension with the formula above, the $\log_2 K$ term and
#    $\log q(u \mid x)$ included.
#
# $D$ is the number of values in one image: `y` is a batch of vectors $(\text{batch}, D)$ or of
# images $(\text{batch}, C, H, W)$. Use torch operations only (not flowlib's `LogitPreprocess` or
# bits/dim functions): the tests compare your figure with one computed from the derivative that
# autograd takes of the logit map.

# %% nbgrader={"grade": false, "grade_id": "04-ex8-bits-per-dim-from-logits", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bits_per_dim_from_logits(log_p_l: torch.Tensor, y: torch.Tensor, grey_levels: int, alpha: float = 0.05,
                             log_q: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Bits/dim of the discrete data from log p_L(logit(alpha + (1 - 2 alpha) y)), one value per image."""
    ### BEGIN SOLUTION
    num_dims = y[0].numel()
    p = alpha + (1 - 2 * alpha) * y
    log_dl_dy = math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)  # dl/dy = (1 - 2 alpha) / (p (1 - p))
    log_p_y = log_p_l + log_dl_dy.flatten(start_dim=1).sum(dim=1)
    return (-log_p_y + num_dims * math.log(grey_levels) + log_q) / (num_dims * math.log(2))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "04-ex8-bits-per-dim-from-logits-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_8 = ("log p_Y(y) = log p_L(l) + sum over the D coordinates of log |dl/dy|, with dl/dy = (1 - 2 alpha) "
          "times the derivative of logit(p) = log p - log(1 - p). Then bits/dim = (-log p_Y + D log K + log q) / "
          "(D ln 2), with D = the number of values in ONE image.")


def _bpd_by_autograd(log_p_l: torch.Tensor, y: torch.Tensor, k: int, alpha: float,
                     log_q: torch.Tensor | float) -> torch.Tensor:
    y = y.detach().clone().requires_grad_(True)
    p = alpha + (1 - 2 * alpha) * y
    (dl_dy,) = torch.autograd.grad((torch.log(p) - torch.log(1 - p)).sum(), y)  # elementwise: the diagonal
    d = y[0].numel()
    log_p_y = log_p_l + dl_dy.log().flatten(start_dim=1).sum(dim=1)
    return ((-log_p_y + d * math.log(k) + log_q) / (d * math.log(2))).detach()


def _check_logits(y: torch.Tensor, k: int, alpha: float, log_q: torch.Tensor | float, g: torch.Generator,
                  what: str) -> None:
    log_p_l = 30 * torch.randn(y.shape[0], generator=g, dtype=torch.float64)
    with hint(f"{what}: bits_per_dim_from_logits should return one value per image, shape ({y.shape[0]},). "
              f"{HINT_8}"):
        mine = bits_per_dim_from_logits(log_p_l, y, k, alpha, log_q)
        check_close(mine, _bpd_by_autograd(log_p_l, y, k, alpha, log_q), f"{what}: {HINT_8}", atol=1e-9)


# By hand: y = 1/2 everywhere, alpha = 0.05: p = 1/2, dl/dy = 0.9 / 0.25 = 3.6 in each of D = 4 coordinates.
with hint(HINT_8):
    _mine = bits_per_dim_from_logits(torch.tensor([-2.0], dtype=torch.float64),
                                     torch.full((1, 4), 0.5, dtype=torch.float64), 2, 0.05)
check_close(_mine, torch.tensor([(2.0 - 4 * math.log(3.6) + 4 * math.log(2)) / (4 * math.log(2))]),
            f"y = 1/2, alpha = 0.05, K = 2, log p_L = -2: {HINT_8}")
_g = torch.Generator().manual_seed(48)
_check_logits(torch.rand(5, 6, generator=_g, dtype=torch.float64), 17, 0.05, 0.0, _g, "vectors (5, 6), K = 17")
_check_logits(torch.rand(3, 1, 8, 8, generator=_g, dtype=torch.float64), 17, 0.05, 0.0, _g,
              "digits (3, 1, 8, 8), K = 17")
_check_logits(torch.rand(2, 3, 4, 4, generator=_g, dtype=torch.float64), 256, 0.1,
              torch.randn(2, generator=_g, dtype=torch.float64), _g, "images (2, 3, 4, 4), K = 256, with log q")
check_vectorised(bits_per_dim_from_logits, lambda n: (torch.zeros(n, dtype=torch.float64),
                                                      torch.rand(n, 1, 2, 2, dtype=torch.float64), 17),
                 "bits_per_dim_from_logits should treat the whole batch at once")
check_own_work(bits_per_dim_from_logits, torch.zeros(2, dtype=torch.float64), torch.rand(2, 1, 2, 2, dtype=torch.float64),
               17, message="Derive and write the formula with torch operations.")
### BEGIN HIDDEN TESTS
_g = torch.Generator().manual_seed(148)
_check_logits(torch.rand(4, 784, generator=_g, dtype=torch.float64), 256, 0.05,
              torch.randn(4, generator=_g, dtype=torch.float64), _g, "vectors (4, 784), K = 256, with log q")
_check_logits(torch.rand(1, 2, 3, 5, generator=_g, dtype=torch.float64), 3, 0.2, 0.5, _g, "images (1, 2, 3, 5), K = 3")
# A model that is uniform in y: log p_Y = 0, so log p_L = -sum log dl/dy, and the figure is log2 K.
_y = torch.rand(3, 1, 4, 4, generator=_g, dtype=torch.float64)
_p = 0.05 + 0.9 * _y
_flat = -(math.log(0.9) - _p.log() - (1 - _p).log()).flatten(start_dim=1).sum(dim=1)
with hint(HINT_8):
    check_close(bits_per_dim_from_logits(_flat, _y, 17), torch.full((3,), math.log2(17), dtype=torch.float64),
                f"a model uniform on [0, 1]^D scores log2 K. {HINT_8}", atol=1e-9)
### END HIDDEN TESTS
print("ex8 passed")

# %% [markdown]
# ## 6. NICE versus RealNVP, with the same budget
#
# Now the experiment the lecture has been building to, on models of the same structure, with the
# same budget and about the same number of parameters (the tables give the counts).
#
# * **2D toys** (exact densities, so we measure $\mathrm{KL}(p_\text{data} \,\|\, p_X)$ in nats
#   by Monte Carlo; 0 is a perfect fit): `nice(2)` with 12 additive couplings and a final
#   scaling, `realnvp(2)` with 12 affine couplings, each conditioner an MLP with two hidden
#   layers of 64 units. We switch off RealNVP's ActNorm layers (a Glow addition, lecture 5) so
#   that the *only* difference is the scale. Each model was trained with `flowlib.train.fit` for
#   6,000 steps of 512 samples, 60 to 80 s of one CPU core each, too long to wait for here, so the
#   lecture loads the six trained models, which were made by
#   `python scripts/train_toy_flows.py` (run from the repository root; its docstring gives the
#   recipe) and are checked as they are read. If they are missing, the cell says so and trains
#   shorter stand-ins.
# * **8x8 digits** (test bits/dim, lower is better; the model with the best validation
#   figure during training is kept): `nice_image` with 4 additive checkerboard couplings at
#   full resolution, `realnvp_image` with the 2-scale architecture of section 4, trained here.
#   Both use uniform dequantisation and ResNet conditioners, with widths chosen so that the two
#   models have about the same number of parameters.

# %%
TOYS = ["eight_gaussians", "two_moons", "checkerboard"]
TOY_BUILDERS = {"NICE": nice, "RealNVP": realnvp}
TOY_FILES = {"NICE": "nice", "RealNVP": "realnvp"}  # the files are <toy>-<nice|realnvp>.pt


def toy_flow_folder() -> Path | None:
    """The folder of the trained toy flows: beside this notebook, or in the repository flowlib came from."""
    for folder in (Path("toy_flows"), Path(flowlib.__file__).resolve().parents[1] / "lectures" / "toy_flows"):
        if (folder / "MANIFEST.json").is_file():
            return folder
    return None


def load_toy_flow(folder: Path, stem: str) -> tuple[nn.Module, dict]:
    """A toy flow written by scripts/train_toy_flows.py, checked before the model is built."""
    remedy = "run `python scripts/train_toy_flows.py` again"
    entry = json.loads((folder / "MANIFEST.json").read_text())["files"][stem]
    path = folder / entry["file"]
    if file_sha256(path) != entry["file_sha256"]:
        raise IntegrityError(f"{path.name} is not the file its manifest describes; {remedy}")
    blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    verify_checksum(blob, path.name, "load_toy_flow", remedy, required=True)
    require_finite(blob, path.name, "load_toy_flow", remedy)
    builder = {"nice": nice, "realnvp": realnvp}[blob["builder"]]  # nothing else is ever looked up
    model = builder(2, **blob["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["metrics"]


toy_models: dict[tuple[str, str], nn.Module] = {}
recorded: dict[tuple[str, str], dict] = {}
folder = toy_flow_folder()
for toy_name in TOYS:
    for model_name in TOY_BUILDERS:
        stem = f"{toy_name}-{TOY_FILES[model_name]}"
        try:
            if folder is None:
                raise FileNotFoundError("no toy_flows/MANIFEST.json beside the lecture")
            toy_models[toy_name, model_name], recorded[toy_name, model_name] = load_toy_flow(folder, stem)
        except (OSError, KeyError, FlowInputError) as err:
            print(f"{stem}: not loaded ({type(err).__name__}: {err}); training a stand-in for {TOY_STEPS} steps "
                  f"(the trained files come from `python scripts/train_toy_flows.py`)")
            torch.manual_seed(0)
            model = TOY_BUILDERS[model_name](2, couplings=12, hidden=64, layers=2,
                                             **({"actnorm": False} if model_name == "RealNVP" else {}))
            x_toy = get_toy(toy_name).sample(20_000, generator=torch.Generator().manual_seed(1))
            fit(model, x_toy, steps=TOY_STEPS, batch_size=512, lr=2e-3, seed=0, device=DEVICE)
            toy_models[toy_name, model_name] = model.cpu().eval()
print("toy flows:", ", ".join(f"{t}/{m}" for t, m in toy_models), "ready")
print("loaded from the trained files, each checked:", len(recorded), "of", len(toy_models))

# %% tags=["nbval-ignore-output"]
results: dict[tuple[str, str], float] = {}
params: dict[tuple[str, str], int] = {}
for (toy_name, model_name), model in toy_models.items():
    params[toy_name, model_name] = count_parameters(model)
    results[toy_name, model_name] = kl_divergence(get_toy(toy_name), model, n=KL_SAMPLES,
                                                  generator=torch.Generator().manual_seed(2))
table = ["| toy | KL, NICE | KL, RealNVP | parameters (NICE / RealNVP) | training |", "| --- | ---: | ---: | ---: | --- |"]
for toy_name in TOYS:
    info = recorded.get((toy_name, "RealNVP"), {})
    budget = f"{info['steps']:,} steps of {info['batch_size']}" if info else f"{TOY_STEPS} steps (stand-ins)"
    table.append(f"| {toy_name} | {results[toy_name, 'NICE']:.3f} | {results[toy_name, 'RealNVP']:.3f} | "
                 f"{params[toy_name, 'NICE']:,} / {params[toy_name, 'RealNVP']:,} | {budget} |")
display(Markdown("\n".join(table)))

# %%
fig, axes = plt.subplots(len(TOYS), 3, figsize=(8, 2.7 * len(TOYS)))
for row, toy_name in zip(axes, TOYS, strict=True):
    toy = get_toy(toy_name)
    plot_density_2d(toy, resolution=GRID, ax=row[0], title=f"{toy_name}: data")
    for ax, model_name in zip(row[1:], TOY_BUILDERS, strict=True):
        plot_density_2d(toy_models[toy_name, model_name], bounds=toy.bounds, resolution=GRID, ax=ax,
                        title=f"{model_name}, KL = {results[toy_name, model_name]:.2f}")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %%
print("RealNVP's KL below NICE's on every toy:", all(results[t, "RealNVP"] < results[t, "NICE"] for t in TOYS))
print("every KL non-negative up to Monte Carlo error:", all(v > -0.05 for v in results.values()))
print("parameter counts within 2% of each other on every toy:",
      all(abs(params[t, "RealNVP"] / params[t, "NICE"] - 1) < 0.02 for t in TOYS))

# %% [markdown]
# The eight Gaussians show the difference best. To turn one round blob (the base) into eight
# small ones, a map must compress space around each mode and stretch it in between. Additive
# couplings can only *move* mass: every layer preserves volume, and the final scaling is the
# same everywhere, so even after 6,000 steps NICE is left with one broad blob. RealNVP's
# $\exp(s(\cdot))$ contracts and expands locally: its eight modes are separate, joined only by
# thin ridges. On the two moons NICE gets the shape roughly right and on the checkerboard only
# partly; RealNVP is more than ten times closer to the data by KL on the first and about six
# times on the second.
#
# **Your coupling at work.** The next cell evaluates the two-moons RealNVP with *your*
# `affine_coupling_forward` in every coupling (Exercise 1) and draws its samples with *your*
# `affine_coupling_inverse` (Exercise 2), layer by layer, from the conditioners the model learnt.
# With both right, the picture is the RealNVP panel above, the density integrates to 1 over the
# plotting box, and the samples fall on the two moons.

# %%
def reference_coupling_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                               clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """flowlib's affine transformer on the sliced coupling (what Exercise 1 asks for)."""
    y, log_derivative = Affine(clamp)(x[:, B], conditioner(x[:, A]))
    z = x.clone()
    z[:, B] = y
    return z, log_derivative.flatten(start_dim=1).sum(dim=1)


def reference_coupling_inverse(z: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conditioner: nn.Module,
                               clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """flowlib's affine transformer, inverted, on the sliced coupling (what Exercise 2 asks for)."""
    y, log_derivative = Affine(clamp).inverse(z[:, B], conditioner(z[:, A]))
    x = z.clone()
    x[:, B] = y
    return x, log_derivative.flatten(start_dim=1).sum(dim=1)


coupling_forward = yours_or_reference(affine_coupling_forward, reference_coupling_forward, "Exercise 1")
coupling_inverse = yours_or_reference(affine_coupling_inverse, reference_coupling_inverse, "Exercise 2")


def log_prob_with(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log p_X(x) = log p_Z(f(x)) + log|det df/dx|, every affine coupling through coupling_forward."""
    z, logdet = x, torch.zeros(x.shape[0])
    with torch.no_grad():
        for layer in model.flow.flows:
            if isinstance(layer, AffineCoupling):
                z, ld = coupling_forward(z, layer.kept_index, layer.moved_index, layer.conditioner, layer.clamp)
            else:
                z, ld = layer(z)
            logdet = logdet + ld
        return model.base.log_prob(z) + logdet


def sample_with(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """x = f^{-1}(z), z ~ N(0, I), every affine coupling inverted through coupling_inverse."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for layer in reversed(model.flow.flows):
            if isinstance(layer, AffineCoupling):
                x, _ = coupling_inverse(x, layer.kept_index, layer.moved_index, layer.conditioner, layer.clamp)
            else:
                x, _ = layer.inverse(x)
    return x


moons, moons_flow = get_toy("two_moons"), toy_models["two_moons", "RealNVP"]
samples = sample_with(moons_flow, 1500, seed=3)
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
plot_density_2d(lambda v: log_prob_with(moons_flow, v), bounds=moons.bounds, resolution=GRID, ax=axes[0],
                title="density, through your forward pass")
plot_density_2d(lambda v: log_prob_with(moons_flow, v), bounds=moons.bounds, resolution=GRID, ax=axes[1],
                title="samples, through your inverse")
axes[1].scatter(samples[:, 0], samples[:, 1], s=1.5, color="w", alpha=0.6, linewidths=0)
axes[1].set(xlim=moons.bounds, ylim=moons.bounds)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()
integral = integrate_density_2d(lambda v: log_prob_with(moons_flow, v), bounds=moons.bounds, resolution=200)
print(f"integral of p_X over the plotting box (midpoint rule, 200 x 200): {integral:.3f}")
real = moons.sample(1500, generator=torch.Generator().manual_seed(4))
print(f"mean log p_data of the samples: {float(moons.log_prob(samples).mean()):.2f} nats "
      f"(of as many real data points: {float(moons.log_prob(real).mean()):.2f})")

# %% [markdown]
# Now the images: the digits arrive as `uint8` grey levels $0..16$, and the image models
# dequantise them inside `log_prob`. NICE's conditioners have 32 channels, RealNVP's 20, which
# gives the two models about the same number of parameters.


# %%
x_train, _ = load_digits("train")
x_val, _ = load_digits("val")
x_test, _ = load_digits("test")
print("digits:", {"train": tuple(x_train.shape), "val": tuple(x_val.shape), "test": tuple(x_test.shape)},
      x_train.dtype, f"grey levels 0..{int(x_train.max())}")
image_builders = {
    "NICE": lambda: nice_image(digits_shape, couplings=4, hidden=32, blocks=1, grey_levels=DIGITS_GREY_LEVELS),
    "RealNVP": lambda: realnvp_image(digits_shape, scales=2, depth=4, hidden=20, blocks=1,
                                     grey_levels=DIGITS_GREY_LEVELS),
}
image_models: dict[str, nn.Module] = {}
for model_name, build in image_builders.items():
    params["digits", model_name] = count_parameters(build())
print("parameters:", {name: f"{params['digits', name]:,}" for name in image_builders})

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
for model_name, build in image_builders.items():
    torch.manual_seed(0)
    model = build()
    fitted = fit(model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(), steps=IMAGE_STEPS,
                 batch_size=128, lr=2e-3, seed=0, device=DEVICE)
    model.cpu()
    image_models[model_name] = model
    results["digits", model_name] = fitted.test
    print(f"{model_name}: best validation {fitted.best_val:.3f} bits/dim at step {fitted.best_step}, "
          f"test {fitted.test:.3f} bits/dim")
print(f"image models trained in {time.perf_counter() - t0:.0f} s")
display(Markdown("\n".join([
    "| data | metric | NICE | RealNVP | parameters (NICE / RealNVP) | training |",
    "| --- | --- | ---: | ---: | ---: | --- |",
    f"| digits 8x8 | test bits/dim | {results['digits', 'NICE']:.3f} | {results['digits', 'RealNVP']:.3f} | "
    f"{params['digits', 'NICE']:,} / {params['digits', 'RealNVP']:,} | {IMAGE_STEPS} steps of 128, on {DEVICE} |"])))
print(f"the uniform model on the digits scores log2(17) = {math.log2(17):.3f} bits/dim")

# %%
print("both figures finite:", all(math.isfinite(results["digits", m]) for m in image_builders))
print(f"digits: RealNVP has {params['digits', 'RealNVP'] / params['digits', 'NICE']:.3f} times NICE's parameters")

# %% [markdown]
# On the digits both beat the uniform baseline of 4.09 bits/dim after a few hundred steps, and
# RealNVP wins by a wide margin, now at equal size (77,760 parameters against NICE's 76,488).
# Its lead still mixes two causes, the scales and the multi-scale architecture (whose deeper
# scales see the whole digit at once), and this table does not separate them. Samples from each
# image model (temperature 1, rounded to grey levels), next to real digits:

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
# not show. Likelihood and sample quality are related but not the same thing, which is one of the
# points of Theis et al. (2016).
#
# ### Exercise 9: design a flow for the digits, under a budget (4 points)
#
# Design an image flow for the 8x8 digits that reaches a **test figure below 2.25 bits/dim**
# with **at most 60,000 parameters** and **300 optimiser steps** of 128 images (AdamW, warm-up
# and cosine decay, `seed=0`, one thread: about 12 s of one CPU core). The budget is the same in
# every mode, so the figure is too. Return the untrained model and the peak learning rate from
# `digits_design()`; the test trains it with
# `fit(model, x_train, val_data=x_val, test_data=x_test, steps=300, batch_size=128, lr=lr, seed=0)`
# and reads `fitted.test` (the figure of the weights with the best validation figure).
#
# Any flowlib builder may be used (`nice_image`, `realnvp_image`, `glow_image` of
# `flowlib.image_models`, with `grey_levels=DIGITS_GREY_LEVELS`), with any keywords. The RealNVP
# of this section, shrunk to 16 channels to fit the budget, reaches about 2.32 with the
# learning rate used above, 2e-3: not enough. Think about what 300 steps leave time for (how far
# can the weights move?), and about where the parameters do most good (wider conditioners or more
# couplings, residual blocks or not). Each trial costs about 12 s: use the budget cell below to
# try a few. The test trains your design a second time with another seed, which must not come out
# more than 0.05 bits/dim worse.

# %% nbgrader={"grade": false, "grade_id": "04-ex9-design-digits", "locked": false, "schema_version": 3, "solution": true, "task": false}
def digits_design() -> tuple[nn.Module, float]:
    """(model, lr): an untrained flow for the 8x8 digits with at most 60,000 parameters, and its peak lr."""
    ### BEGIN SOLUTION
    # 300 steps are few: a learning rate of 5e-3 (warm-up, then cosine decay) moves the weights much
    # further than 2e-3 and is still stable with the soft clamp. Six thinner couplings per scale
    # (12 channels) use the parameter budget better than four of 16.
    torch.manual_seed(0)
    return realnvp_image(digits_shape, scales=2, depth=6, hidden=12, blocks=1, grey_levels=DIGITS_GREY_LEVELS), 5e-3
    ### END SOLUTION


# %%
def try_design(design: tuple[nn.Module, float], seed: int = 0) -> float:
    """Train a (model, lr) design with the exercise's budget; return its test bits/dim."""
    model, lr = design
    fitted = fit(model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(), steps=DESIGN_STEPS,
                 batch_size=DESIGN_BATCH, lr=lr, seed=seed, device="cpu")
    return fitted.test


# Try a design here, e.g. the RealNVP of this section shrunk to the budget, at the learning rate used above:
# print(try_design((realnvp_image(digits_shape, scales=2, depth=4, hidden=16, blocks=1,
#                                 grey_levels=DIGITS_GREY_LEVELS), 2e-3)))
print(f"budget: at most {DESIGN_MAX_PARAMS:,} parameters, {DESIGN_STEPS} steps of {DESIGN_BATCH}; "
      f"target: test bits/dim below {DESIGN_TARGET}")

# %% nbgrader={"grade": true, "grade_id": "04-ex9-design-digits-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false} tags=["nbval-ignore-output"]
HINT_9 = ("digits_design() returns (model, lr): an untrained flowlib image model of shape (1, 8, 8) with "
          "grey_levels=DIGITS_GREY_LEVELS and at most 60,000 parameters, and a learning rate. 300 steps are "
          "few: how large a learning rate does the soft clamp let you use?")
with hint(HINT_9):
    _model, _lr = digits_design()
    _n = count_parameters(_model)
    assert tuple(_model.event_shape) == digits_shape and _model.grey_levels == DIGITS_GREY_LEVELS, \
        f"a model of the digits, event shape {digits_shape}, grey_levels {DIGITS_GREY_LEVELS}. {HINT_9}"
assert _n <= DESIGN_MAX_PARAMS, f"{_n:,} parameters, more than the budget of {DESIGN_MAX_PARAMS:,}. {HINT_9}"
assert isinstance(_lr, float) and 0 < _lr < 1, f"the learning rate should be a float in (0, 1), got {_lr!r}"
with hint(HINT_9):
    _bpd = try_design((_model, _lr))
print(f"your design: {_n:,} parameters, lr {_lr:g}: test {_bpd:.3f} bits/dim (target: below {DESIGN_TARGET})")
assert _bpd < DESIGN_TARGET, f"test {_bpd:.3f} bits/dim, not below {DESIGN_TARGET}. {HINT_9}"
### BEGIN HIDDEN TESTS
with hint(HINT_9):
    _again = try_design(digits_design(), seed=1)
print(f"trained again with seed 1: {_again:.3f} bits/dim")
assert _again < _bpd + 0.05, f"with another seed the design gives {_again:.3f}, more than 0.05 above {_bpd:.3f}"
### END HIDDEN TESTS
print("ex9 passed")

# %% [markdown]
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
    model = realnvp_image(digits_shape, scales=2, depth=4, hidden=20, blocks=1, grey_levels=DIGITS_GREY_LEVELS,
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
    # The unconditional NICE, RealNVP and Glow files: conditional ones score p(x | c), not p(x).
    conditional = {"classes", "context_shape"} & set(info.get("kwargs", {}))
    if info.get("data") == "mnist" and info.get("builder") in MODEL_NAMES and not conditional:
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
# * On images, checkerboard and channel masks alternate; the squeeze trades space for channels
#   (a channel mask after a squeeze keeps every other row of the image); a transformed pixel
#   depends on itself and on kept pixels only, as many as the conditioner reaches, so the
#   Jacobian stays triangular. The multi-scale architecture factors out half the dimensions at
#   every scale.
# * Discrete data need dequantisation: uniform noise of exactly one grey level gives a lower
#   bound on $\log P(x)$ (Jensen; for a histogram, the inequality of the arithmetic and geometric
#   means), narrower noise reports figures that beat the entropy, a learned noise distribution
#   gives a tighter bound; bits/dim carry a $\log_2 K$ term and, for a model in logit space, the
#   logit's log-determinant.
# * With the same budget and about the same number of parameters RealNVP fits the toys and the
#   digits much better than NICE; under a tight budget, the learning rate matters as much as the
#   architecture.
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
