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
# # Lecture 3: NICE, reversible blocks and volume preservation
#
# Lecture 2 left us with a wish list. A flow layer in $D$ dimensions must be invertible, its
# inverse should be cheap, and the log-determinant of its $D \times D$ Jacobian must be
# cheap too: computing a general determinant costs $O(D^3)$, hopeless for a 784-pixel image.
# Dinh, Krueger & Bengio (2015), *NICE: Non-linear Independent Components Estimation*, found
# a block that ticks every box with almost no effort, and whose determinant is not merely
# cheap but exactly **one**.
#
# In this lecture you will
#
# 1. write down the reversible (additive coupling) block, invert it, and see with autograd
#    that its Jacobian is lower triangular with ones on the diagonal;
# 2. understand what "volume preserving" means, and why NICE therefore needs one extra
#    layer, a diagonal scaling, to fit anything at all;
# 3. train NICE on three 2D toys and watch, layer by layer, how the data is pushed towards a
#    Gaussian, with the exact KL divergence as the score;
# 4. train NICE on the 8x8 digits with dequantisation, report bits per dimension on a test
#    split, and meet overfitting;
# 5. see a second gift of reversible blocks: backpropagation without storing activations
#    (RevNets, Gomez et al. 2017), measured live;
# 6. along the way, solve six exercises: write the coupling that the later sections train,
#    predict what a widget will measure, find two planted bugs, derive how close NICE can
#    come to a flat density, design a NICE under a fixed budget, and recompute a RevNet's
#    activations.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ (the
# normalizing direction), $p_Z$ the standard-normal base and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f/\partial x\right|$.

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. With the environment variable `CI` set, every cell
# still runs, on the smallest sizes that exercise it; on a GPU the models train for longer.
# The architectures are the same in every mode, only the training budgets change.

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: train at full size (change to True/False to override)
TOY_STEPS = 40 if SMOKE else (8000 if FULL else 4000)  # steps per NICE model on each 2D toy
WIDE_STEPS = 30 if SMOKE else (1500 if FULL else 400)  # steps of the volume-preservation demo
DIGIT_STEPS = 30 if SMOKE else (6000 if FULL else 1000)  # steps of NICE on the 8x8 digits
MLP_STEPS = 30 if SMOKE else 1500  # steps of the fully connected NICE that shows overfitting
KL_SAMPLES = 5_000 if SMOKE else 50_000  # Monte Carlo samples of each KL estimate
GRID = 60 if SMOKE else 150  # resolution of the density pictures
# Exercise 5's budget is the same in every mode, CI included: its test trains your design.
DESIGN_STEPS = 2000  # optimiser steps (batch 256)
DESIGN_MAX_PARAMS = 10_000  # parameters of the model
# The models here are small: splitting their operations over several CPU threads costs more
# than it saves, and a shared 2-core machine (Binder) is fastest with one.
if DEVICE == "cpu":
    torch.set_num_threads(1)

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor, nn

from flowlib import Compose, Flow, FlowModel, StandardNormal
from flowlib.coupling import AdditiveCoupling, Coupling, Scaling, checkerboard_mask, half_mask
from flowlib.data import DIGITS_GREY_LEVELS, DatasetError, get_toy, load_digits, load_mnist, pad_to
from flowlib.dequantize import LogitPreprocess
from flowlib.grading import (
    autograd_logabsdet,
    check_close,
    check_own_work,
    check_vectorised,
    hint,
    yours_or_reference,
)
from flowlib.image_models import ImageFlowModel, count_parameters, nice_image
from flowlib.metrics import density_on_grid, integrate_density_2d, kl_divergence_estimate
from flowlib.models import nice
from flowlib.nets import MLP
from flowlib.pretrained import checkpoint_info, load_pretrained, shipped_checkpoints
from flowlib.reversible import MemorySavingCompose
from flowlib.train import fit
from flowlib.transformers import Additive
from flowlib.viz import image_grid, plot_density_2d, plot_training_curve
from flowlib.widgets import ShearAndScale2D

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})


def randomize_last_layer(net: MLP, std: float, generator: torch.Generator) -> MLP:
    """flowlib's conditioners start with a zero last layer (the coupling is then the identity).

    For pictures of an *untrained* coupling we want it to do something, so we draw that
    layer's weights at random instead.
    """
    with torch.no_grad():
        net.last.weight.copy_(std * torch.randn(net.last.weight.shape, generator=generator))
        net.last.bias.copy_(std * torch.randn(net.last.bias.shape, generator=generator))
    return net


# %% [markdown]
# ## 1. The reversible block
#
# Split the coordinates of $x \in \mathbb{R}^D$ into two groups, $x = (x_1, x_2)$. The
# **additive coupling** leaves the first group alone and shifts the second by an amount that
# depends on the first only:
# $$z_1 = x_1, \qquad z_2 = x_2 + m(x_1).$$
# Here $m$ is *any* function: in practice a neural network with as many outputs as $x_2$ has
# coordinates, and nobody ever needs to invert it. The inverse comes for free, because $z_1$
# hands us $x_1$ back, and with it the shift that was added: one evaluation of $m$ undoes the
# block, the same cost as the forward pass (Exercise 1 asks you to write the inverse out).
# (Other texts
# write the same block with other roles or in the other direction: half of a RevNet block
# (Gomez et al., 2017, section 6 here) reads $y_1 = x_1 + F(x_2)$, $y_2 = x_2$, and the review
# of Papamakarios et al. (2021) writes flows in the generative direction, from latent to data.
# These are conventions. In this course, as in the NICE paper, $f$ maps data to latent.)
#
# **Three parts of one layer.** It pays to see this block as three separate choices
# (Papamakarios et al., 2021, sections 3 and 4). The *structure* says which coordinates
# condition which: here a coupling, where $x_1$ conditions $x_2$ and nothing conditions
# $x_1$. The *conditioner*, the network $m$, turns the conditioning coordinates into
# parameters. The elementwise *transformer* then applies those parameters to each coordinate
# of $x_2$ on its own: here the additive one, $x_i \mapsto x_i + t_i$. Lecture 4 keeps the
# structure and swaps in an affine transformer, $x_i \mapsto e^{s_i} x_i + t_i$. flowlib
# builds the layer from exactly these parts, `flowlib.coupling.Coupling(mask, conditioner,
# Additive())`, and `AdditiveCoupling(mask, conditioner)` is short for it.
#
# The split is a binary **mask** $b$ of the input's shape: $b = 1$ marks the coordinates of
# $x_1$ (they pass through and feed the network), $b = 0$ those of $x_2$. `Coupling` reads off
# the mask how to separate them. When the mask has one value per coordinate of a vector (or
# per channel of an image), as in this section, it **slices** by index: the conditioner reads
# only the entries of $x_1$ and returns one shift per entry of $x_2$. When the mask varies
# inside a channel, like the checkerboards used for images in section 4, the layer
# multiplies by the mask instead: the conditioner reads $b \odot x$, which has the full
# shape, and its output is used where $b = 0$,
# $$z = b \odot x + (1 - b) \odot \big(x + m(b \odot x)\big).$$
# Both ways compute the same kind of map; slicing spares the network the zeros.
# `Coupling.conditioner_sizes(mask, Additive)` gives the sizes the network must have, and a
# layer's `sliced` attribute says which way it works.
#
# **Why the determinant is one.** Order the coordinates as $(x_1, x_2)$. The Jacobian of
# the block is a $2\times 2$ block matrix:
# $$\frac{\partial z}{\partial x} =
#   \begin{pmatrix} \partial z_1/\partial x_1 & \partial z_1/\partial x_2 \\
#                   \partial z_2/\partial x_1 & \partial z_2/\partial x_2 \end{pmatrix}
# = \begin{pmatrix} I & 0 \\ \partial m/\partial x_1 & I \end{pmatrix}.$$
# The top-right block is zero because $z_1 = x_1$ ignores $x_2$; the bottom-right block is
# the identity because $x_2$ enters $z_2$ only through the sum $x_2 + \dots$. The matrix is
# lower triangular, and the determinant of a triangular matrix is the product of its
# diagonal: $1 \cdot 1 \cdots 1 = 1$. Whatever the network $m$ computes (the whole
# complicated block $\partial m/\partial x_1$), it never enters the determinant.
#
# Let us check all of this on a real layer: $D = 6$, the mask keeps the first three
# coordinates, and the conditioner is a small MLP with random weights.

# %%
D_DEMO = 6
gen = torch.Generator().manual_seed(0)
torch.manual_seed(0)
mask = half_mask(D_DEMO, 0)  # b = (1, 1, 1, 0, 0, 0): x_1 is the first half
sizes = Coupling.conditioner_sizes(mask, Additive)  # (3, 3): reads x_1, one shift per entry of x_2
coupling = AdditiveCoupling(mask, randomize_last_layer(MLP(*sizes, hidden=32, layers=2), 0.5, gen))
coupling = coupling.double()  # float64: the printed checks below are then exact to many digits
print("conditioner sizes (in, out):", sizes, "| the layer slices:", coupling.sliced)

x = torch.randn(5, D_DEMO, generator=gen, dtype=torch.float64)
z, logdet = coupling(x)
x_back, _ = coupling.inverse(z)
print("mask b:", mask.int().tolist())
print("z_1 is x_1 unchanged:", torch.equal(z[:, :3], x[:, :3]))
print("z_2 differs from x_2:", bool((z[:, 3:] - x[:, 3:]).abs().min() > 0))
print("inverse recovers x, max |x - f^-1(f(x))| < 1e-12:", bool((x_back - x).abs().max() < 1e-12))
print("log|det| returned by the layer:", logdet.tolist())

# %% [markdown]
# A checkerboard mask for a one-channel image, by contrast, keeps half of the pixels of the
# same channel, so the layer cannot slice it: its conditioner reads the one channel $b \odot x$
# and writes one channel of shifts, here with a $3\times 3$ convolution.

# %%
board = checkerboard_mask(1, 4, 4, 0)
board_sizes = Coupling.conditioner_sizes(board, Additive)
board_layer = AdditiveCoupling(board, nn.Conv2d(*board_sizes, kernel_size=3, padding=1))
print("checkerboard b:", board[0].int().tolist())
print("conditioner channels (in, out):", board_sizes, "| the layer slices:", board_layer.sliced)

# %% [markdown]
# Back to the sliced layer on vectors: the Jacobian of one sample, computed by autograd (no use
# of the formula above):

# %%
J = torch.autograd.functional.jacobian(lambda v: coupling(v.unsqueeze(0))[0].squeeze(0), x[0])

fig, ax = plt.subplots(figsize=(4.6, 4.2))
lim = float(J.abs().max())
ax.imshow(J.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
for i in range(D_DEMO):
    for j in range(D_DEMO):
        ax.text(j, i, f"{float(J[i, j]):.2f}", ha="center", va="center", fontsize=8)
ax.axhline(2.5, color="k", lw=1)
ax.axvline(2.5, color="k", lw=1)
ax.set_xticks(range(D_DEMO), [f"$x_{{{j + 1}}}$" for j in range(D_DEMO)])
ax.set_yticks(range(D_DEMO), [f"$z_{{{i + 1}}}$" for i in range(D_DEMO)])
ax.set_title(r"autograd's $\partial z/\partial x$ of an AdditiveCoupling", fontsize=10)
plt.show()

print("top-right block dz_1/dx_2 is zero:", bool((J[:3, 3:] == 0).all()))
print("bottom-right block dz_2/dx_2 is the identity:", torch.equal(J[3:, 3:], torch.eye(3, dtype=J.dtype)))
print("lower triangular:", torch.equal(J, torch.tril(J)))
print("diagonal all ones:", bool((J.diagonal() == 1).all()))
print(f"det = {float(torch.linalg.det(J)):.3f}")

# %% [markdown]
# The only non-trivial numbers sit in the bottom-left block, $\partial m/\partial x_1$, and the
# determinant does not see them.
#
# **Stacking blocks.** One block leaves $x_1$ untouched, so a single block cannot be a good
# model. The cure is to stack blocks and swap the roles of the halves from one to the next
# ($z_1 = x_1 + m_2(x_2)$ next time), so every coordinate is transformed by every other
# block. The composition stays invertible (invert the blocks in reverse order) and the
# determinants multiply: $1 \cdot 1 \cdots 1$ is still $1$. NICE alternates between the odd
# and the even coordinates, and treats an image the same way, as a flattened vector of pixels
# (Dinh et al., 2015, in its experiments). The checkerboard masks that flowlib uses for images
# (section 4) come from RealNVP (Dinh et al., 2017), lecture 4.

# %% [markdown]
# ### Exercise 1: the additive coupling, both ways
#
# Write the sliced additive coupling and its inverse, with torch operations only (no flowlib
# inside your functions). `kept` and `moved` are the index tensors $A$ and $B$ of the two
# groups (between them every coordinate once), so that $x_A$ is `x[:, kept]` and $x_B$ is
# `x[:, moved]`. `conditioner` is the network $m$: any callable that maps a batch of $x_A$,
# shape `(batch, |A|)`, to one shift per entry of $x_B$, shape `(batch, |B|)`. The forward
# map is $z_A = x_A$, $z_B = x_B + m(x_A)$; the inverse you work out from the argument above.
# Each function returns its output and the log-determinant of its own Jacobian, one value
# per sample (shape `(batch,)`), and treats the whole batch at once (no Python loop over the
# samples).
#
# The next two sections run on your answer: their NICE models are built from couplings that
# call these two functions, for training and for sampling, so a mistake here shows in their
# figures. The test compares autograd's Jacobian of your map with the one that follows from
# autograd's Jacobian of $m$, checks that $m$ is evaluated once, on exactly the kept entries,
# and works one small example by hand.

# %% nbgrader={"grade": false, "grade_id": "03-ex1-additive-coupling", "locked": false, "schema_version": 3, "solution": true, "task": false}
def additive_coupling_forward(x: Tensor, kept: Tensor, moved: Tensor, conditioner) -> tuple[Tensor, Tensor]:
    """(z, log|det dz/dx|) of NICE's additive coupling: x[:, kept] passes, x[:, moved] is shifted."""
    ### BEGIN SOLUTION
    z = x.clone()
    z[:, moved] = x[:, moved] + conditioner(x[:, kept])
    return z, x.new_zeros(x.shape[0])
    ### END SOLUTION


def additive_coupling_inverse(z: Tensor, kept: Tensor, moved: Tensor, conditioner) -> tuple[Tensor, Tensor]:
    """(x, log|det dx/dz|) of the same coupling's inverse, x = f^{-1}(z)."""
    ### BEGIN SOLUTION
    x = z.clone()
    x[:, moved] = z[:, moved] - conditioner(z[:, kept])
    return x, z.new_zeros(z.shape[0])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-ex1-additive-coupling-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _pair(name: str, fn, args: tuple, batch: int, dim: int) -> tuple[Tensor, Tensor]:
    """Call one of your functions and check that it returns (output, logdet) of the right shapes."""
    with hint(f"{name}: calling {fn.__name__}(x, kept, moved, conditioner) failed; it should return a "
              f"pair (output of shape (batch, D), logdet of shape (batch,))"):
        out = fn(*args)
    assert isinstance(out, tuple) and len(out) == 2, f"{name}: return a pair (output, logdet), got {type(out)}"
    y, logdet = out
    assert isinstance(y, Tensor) and y.shape == (batch, dim), (
        f"{name}: the output must have the input's shape {(batch, dim)}, got {getattr(y, 'shape', type(y))}")
    assert isinstance(logdet, Tensor) and logdet.shape == (batch,), (
        f"{name}: logdet must have shape (batch,) = ({batch},), got {getattr(logdet, 'shape', type(logdet))}")
    return y, logdet


def _check_by_hand() -> None:
    """x = (1, 2, 3, 4), A = (0, 2), B = (1, 3), m(a) = (a_0 a_1, a_0 + a_1): z = (1, 2 + 3, 3, 4 + 4)."""
    kept, moved = torch.tensor([0, 2]), torch.tensor([1, 3])

    def m(a: Tensor) -> Tensor:
        return torch.stack([a[:, 0] * a[:, 1], a[:, 0] + a[:, 1]], dim=1)

    x, z = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[1.0, 5.0, 3.0, 8.0]])
    z_mine, _ = _pair("forward", additive_coupling_forward, (x, kept, moved, m), 1, 4)
    check_close(z_mine, z, f"forward of x = {x.tolist()} with m(a) = (a_0 a_1, a_0 + a_1): expected {z.tolist()}")
    x_mine, _ = _pair("inverse", additive_coupling_inverse, (z, kept, moved, m), 1, 4)
    check_close(x_mine, x, f"inverse of z = {z.tolist()}: expected x = {x.tolist()}, the point that forward maps to z")


def _check_additive(seed: int, dim: int, batch: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(dim, generator=g)
    n_kept = int(torch.randint(1, dim, (1,), generator=g))  # both groups non-empty
    kept, moved = order[:n_kept].sort().values, order[n_kept:].sort().values
    torch.manual_seed(seed)
    net = randomize_last_layer(MLP(n_kept, dim - n_kept, hidden=16, layers=2), 0.5, g).double()
    inputs_seen = []

    def conditioner(x_kept: Tensor) -> Tensor:
        inputs_seen.append(x_kept.detach().clone())
        return net(x_kept)

    x = 2 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    where = f"(dim {dim}, kept {kept.tolist()}, moved {moved.tolist()})"
    for name, fn, sign in [("forward", additive_coupling_forward, 1.0), ("inverse", additive_coupling_inverse, -1.0)]:
        inputs_seen.clear()
        y, logdet = _pair(name, fn, (x, kept, moved, conditioner), batch, dim)
        assert len(inputs_seen) == 1 and torch.equal(inputs_seen[0], x[:, kept]), (
            f"{name} {where}: evaluate the conditioner once, on the kept entries x[:, kept] only")
        assert torch.equal(y[:, kept], x[:, kept]), f"{name} {where}: the kept entries must pass unchanged"
        jac = torch.autograd.functional.jacobian(
            lambda v, fn=fn: fn(v.unsqueeze(0), kept, moved, conditioner)[0].squeeze(0), x[0])
        jac_m = torch.autograd.functional.jacobian(lambda a: net(a.unsqueeze(0)).squeeze(0), x[0, kept])
        expected = torch.eye(dim, dtype=torch.float64)
        expected[moved.unsqueeze(1), kept] = sign * jac_m
        check_close(jac, expected, f"{name} {where}: autograd's Jacobian of your map is not the expected one. Rows "
                    f"of kept entries: those of the identity; rows of moved entries: the identity on the moved "
                    f"columns, {'+' if sign > 0 else '-'}dm/dx_A on the kept ones", atol=1e-8)
        check_close(logdet, autograd_logabsdet(lambda v, fn=fn: fn(v, kept, moved, conditioner)[0], x),
                    f"{name} {where}: your logdet is not autograd's log|det| of your map", atol=1e-8)
        check_own_work(fn, x, kept, moved, conditioner, allowed=("flowlib.nets",),
                       message=f"{name}: write the coupling with torch operations, not with flowlib's layers")
        check_vectorised(fn, lambda n: (torch.randn(n, dim, dtype=torch.float64), kept, moved, net),
                         f"{name}: treat the whole batch at once")
    z, _ = additive_coupling_forward(x, kept, moved, conditioner)
    back, _ = additive_coupling_inverse(z, kept, moved, conditioner)
    check_close(back, x, f"{where}: your inverse does not undo your forward", atol=1e-10)


_check_by_hand()
_check_additive(seed=31, dim=6)
### BEGIN HIDDEN TESTS
for _seed, _dim, _batch in [(300, 2, 1), (301, 5, 4), (302, 9, 11)]:
    _check_additive(_seed, _dim, _batch)
### END HIDDEN TESTS
print("ex1 passed")

# %% [markdown]
# **Your coupling as a flowlib layer.** The next cell wraps your two functions into a layer
# with flowlib's contract: `forward(x) -> (z, logdet)` calls your `additive_coupling_forward`,
# `inverse(z) -> (x, logdet)` your `additive_coupling_inverse`, with the mask and the network
# of an `AdditiveCoupling`. `your_nice` stacks such layers, shifting the two coordinates of the
# plane in turn, and ends with flowlib's `Scaling`: this is the NICE that sections 2 and 3
# train. While Exercise 1 is not done, the layer says so and runs flowlib's `AdditiveCoupling`.

# %%
def flowlib_coupling(direction: str):
    """flowlib's AdditiveCoupling with the arguments of Exercise 1 (the stand-in until it is done)."""
    def run(x: Tensor, kept: Tensor, moved: Tensor, conditioner) -> tuple[Tensor, Tensor]:
        mask = torch.zeros(x.shape[1], device=x.device)
        mask[kept] = 1.0
        layer = AdditiveCoupling(mask, conditioner).to(x.device)
        return layer(x) if direction == "forward" else layer.inverse(x)
    return run


coupling_forward = yours_or_reference(additive_coupling_forward, flowlib_coupling("forward"), "Exercise 1")
coupling_inverse = yours_or_reference(additive_coupling_inverse, flowlib_coupling("inverse"), "Exercise 1")


class YourCoupling(Flow):
    """An additive coupling that runs your Exercise 1: mask b (1 = kept), network m."""

    def __init__(self, mask: Tensor, conditioner: nn.Module) -> None:
        super().__init__(tuple(mask.shape))
        self.register_buffer("kept", torch.nonzero(mask > 0.5).flatten())
        self.register_buffer("moved", torch.nonzero(mask < 0.5).flatten())
        self.conditioner = conditioner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_forward(x, self.kept, self.moved, self.conditioner)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_inverse(z, self.kept, self.moved, self.conditioner)


def your_nice(couplings: int, hidden: int, layers: int = 2, activation: type[nn.Module] = nn.ReLU) -> FlowModel:
    """NICE in the plane: `couplings` of your couplings (x_2 shifted by an MLP of x_1, then the
    other way round, in turn), each MLP with `layers` hidden layers of `hidden` units and a zero
    last layer, then flowlib's Scaling. The same layout as flowlib.models.nice(2, ...)."""
    flows: list[Flow] = []
    for k in range(couplings):
        flows.append(YourCoupling(half_mask(2, k % 2), MLP(1, 1, hidden=hidden, layers=layers, activation=activation)))
    return FlowModel(Compose(*flows, Scaling(2)), StandardNormal(2))


x_check = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    z_check, logdet_check = your_nice(4, hidden=8).flow(x_check)
print("a new NICE from your couplings starts as the identity:", torch.allclose(z_check, x_check),
      "| log-det:", logdet_check.tolist())

# %% [markdown]
# ## 2. Volume preservation, and why NICE needs a scaling layer
#
# A map with $|\det \partial f/\partial x| = 1$ everywhere is **volume preserving**: a region
# of data space and its image in latent space have the same volume (area, in 2D). The shape
# may be sheared and bent beyond recognition, but the area cannot change. Below, the square
# $[-1, 1]^2$ goes through two additive couplings with random networks (one shifting the
# vertical coordinate, the next the horizontal one). We measure the area enclosed by its
# image with the shoelace formula on a finely sampled boundary.

# %%
def random_2d_coupling(parity: int, generator: torch.Generator) -> AdditiveCoupling:
    """An additive coupling in the plane with a random (not zero-initialised) network."""
    mask = half_mask(2, parity)
    net = randomize_last_layer(MLP(*Coupling.conditioner_sizes(mask, Additive), hidden=32, layers=2), 0.7, generator)
    return AdditiveCoupling(mask, net).double()


def square_boundary(n_per_side: int = 2000) -> Tensor:
    """Points along the boundary of [-1, 1]^2, counter-clockwise, shape (4n, 2)."""
    t = torch.linspace(-1, 1, n_per_side + 1, dtype=torch.float64)[:-1]
    one = torch.ones_like(t)
    return torch.cat([torch.stack(side, dim=1) for side in
                      [(t, -one), (one, t), (-t, one), (-one, -t)]])


def shoelace_area(points: Tensor) -> float:
    """The area enclosed by a closed polygon (vertices in order, shape (n, 2))."""
    x1, x2 = points[:, 0], points[:, 1]
    return 0.5 * float((x1 * x2.roll(-1) - x2 * x1.roll(-1)).sum().abs())


gen = torch.Generator().manual_seed(3)
shear = Compose(random_2d_coupling(0, gen), random_2d_coupling(1, gen))
boundary = square_boundary()
lines = [torch.stack([torch.full((200,), c, dtype=torch.float64),
                      torch.linspace(-1, 1, 200, dtype=torch.float64)], 1) for c in np.linspace(-1, 1, 9)]
lines += [line.flip(1) for line in lines]  # vertical and horizontal grid lines

with torch.no_grad():
    sheared_boundary = shear(boundary)[0]
    sheared_lines = [shear(line)[0] for line in lines]

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, b, ls, title in [(axes[0], boundary, lines, "the square $[-1,1]^2$ in x-space"),
                         (axes[1], sheared_boundary, sheared_lines, "its image after two additive couplings")]:
    ax.fill(b[:, 0], b[:, 1], color="C0", alpha=0.25)
    for line in ls:
        ax.plot(line[:, 0], line[:, 1], color="C0", lw=0.6)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
plt.show()

print(f"area before: {shoelace_area(boundary):.3f}")
print(f"area after two additive couplings: {shoelace_area(sheared_boundary):.3f}")

# %% [markdown]
# The shape is very different, the area is still 4.
#
# **Why that is a problem for a density model.** With $\det = 1$ the change of variables
# reads $p_X(x) = p_Z(f(x))$: the model cannot make any region denser or sparser than the
# base makes its image. Think of entropy, the average of $-\log p$: a volume-preserving map
# does not change it, $H(f(X)) = H(X)$. Suppose the data are spread wide, say
# $X \sim \mathcal{N}(0, \sigma^2 I)$ with $\sigma = 3$. Then $z = f(x)$ has the same large
# entropy as $x$, and can never look like the narrow $\mathcal{N}(0, I)$ base. One can work
# out how close it can get: among all distributions of a given entropy, the isotropic
# Gaussian has the smallest second moment, so no volume-preserving $f$ beats the identity,
# and
# $$\mathrm{KL}\big(p_\text{data}\,\|\,p_X\big) \;\ge\; \tfrac{D}{2}\left(\sigma^2 - 1 - \ln \sigma^2\right)$$
# for every such model ($5.80$ nats for $D = 2$, $\sigma = 3$).
#
# NICE's fix is one more layer at the end: a **diagonal scaling** $z_i = e^{s_i}\,h_i$ with a
# learned $s \in \mathbb{R}^D$ (`flowlib.coupling.Scaling`). Its Jacobian is
# $\mathrm{diag}(e^{s})$, so $\log|\det| = \sum_i s_i$: the only place where a NICE model
# changes volume, and the same amount everywhere. (The NICE paper points out that the scales
# also show which directions matter: a large $e^{-s_i}$, i.e. a large spread of $x$ along
# latent direction $i$, marks an important one.)
#
# Let us see the difference. Both models below are NICE models built from your couplings of
# Exercise 1 (`your_nice`, the layout of `flowlib.models.nice`) with four couplings; from one
# of them we drop the final `Scaling`. Both are trained on samples of
# $\mathcal{N}(0, 3^2 I)$ for the same number of steps, and we measure the exact KL.

# %%
class WideGaussian:
    """x ~ N(0, sigma^2 I) in the plane, with sample(n, generator) and an exact log_prob."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sigma * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        return (-0.5 * (x / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)).sum(1)


wide = WideGaussian(3.0)
x_wide = wide.sample(10_000, generator=torch.Generator().manual_seed(1))



def without_scaling(model: FlowModel) -> FlowModel:
    """The same couplings (the very same modules) without NICE's final Scaling layer."""
    layers = list(model.flow.flows)
    assert isinstance(layers[-1], Scaling)
    return FlowModel(Compose(layers[:-1]), StandardNormal(2))


torch.manual_seed(1)
with_scaling = your_nice(4, hidden=32)
torch.manual_seed(1)
volume_preserving = without_scaling(your_nice(4, hidden=32))
print("parameters with scaling:", count_parameters(with_scaling), "| without:", count_parameters(volume_preserving))

# %% tags=["nbval-ignore-output"]
for model in (volume_preserving, with_scaling):
    fit(model, x_wide, steps=WIDE_STEPS, batch_size=256, lr=2e-2, device=DEVICE, seed=1)
    model.cpu()

# %% tags=["nbval-ignore-output"]
kl_gen = torch.Generator().manual_seed(2)
kl_vp = kl_divergence_estimate(wide, volume_preserving, n=KL_SAMPLES, generator=kl_gen)
kl_nice = kl_divergence_estimate(wide, with_scaling, n=KL_SAMPLES, generator=kl_gen)
print(f"couplings only:          KL = {kl_vp.value:.3f} +- {kl_vp.stderr:.3f} nats")
print(f"couplings + Scaling:     KL = {kl_nice.value:.3f} +- {kl_nice.stderr:.3f} nats")
print("learned scale factors exp(s):", torch.exp(with_scaling.flow.flows[-1].log_scale).tolist())

# %%
bound = 0.5 * 2 * (3.0**2 - 1 - math.log(3.0**2))
print(f"lower bound on KL for any volume-preserving model: {bound:.2f} nats")
print("couplings only respects it (KL + 3 standard errors >= bound):", kl_vp.value + 3 * kl_vp.stderr >= bound)

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
circle = torch.linspace(0, 2 * math.pi, 200)
with torch.no_grad():
    z_vp = volume_preserving.encode(x_wide[:2000])
    z_nice = with_scaling.encode(x_wide[:2000])
for ax, points, title in [(axes[0], x_wide[:2000], "data x ~ N(0, 3² I)"),
                          (axes[1], z_vp, "z = f(x), couplings only"),
                          (axes[2], z_nice, "z = f(x), couplings + Scaling")]:
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4)
    for r in (1, 2, 3):  # where the base N(0, I) puts 39%, 86% and 99% of its mass
        ax.plot(r * torch.cos(circle), r * torch.sin(circle), color="C3", lw=0.8)
    ax.set(xlim=(-10, 10), ylim=(-10, 10), aspect="equal", title=title)
plt.show()

# %% [markdown]
# The red circles hold 39%, 86% and 99% of the base's mass. Without the scaling layer the
# latent cloud is still as wide as the data: the couplings could shear it, but not shrink it,
# and the KL stays at the bound. With the scaling layer the cloud is squeezed by
# $e^{s} \approx 1/3$ in each direction and lands on the base.
#
# The lesson generalises: in NICE, all changes of volume happen in one diagonal layer, the
# same everywhere in space. The couplings can only rearrange. That is a real limitation, and
# we will see it again on the toys below; lecture 4 (RealNVP) lets every coupling scale as
# well as shift.

# %% [markdown]
# ### Shear and scale it yourself
#
# The widget below applies one additive coupling of the plane,
# $h_1 = x_1$, $h_2 = x_2 + t(x_1)$, with the shift $t(x_1) = a\,x_1 + b \sin(c\,x_1)$, to a
# shape (the square $[-1, 1]^2$ or the unit disc), a grid and points inside it. With
# "scaling layer" ticked, NICE's scaling $z = (e^{s_1} h_1,\, e^{s_2} h_2)$ follows. Both
# panels share one scale. The widget measures the area of the image with the shoelace
# formula on its boundary, and $\det \partial z/\partial x$ by autograd at the points.
#
# ### Exercise 2: predict, then move the sliders
#
# Before you move anything, write down what area the image will have, as a function of the
# settings: fill in `predicted_area` (the shape's name, then $a, b, c$, whether the scaling
# layer is on, $s_1, s_2$). Then move the sliders and compare with what the widget measures.
# On the way, watch which grid lines stay straight and which bend, and why points of one
# colour (one value of $x_1$) always move together. The test compares your function with the
# widget's measured area at settings you have not seen.

# %% nbgrader={"grade": false, "grade_id": "03-ex2-predict-area", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_area(shape: str, a: float, b: float, c: float, scaling: bool, s1: float, s2: float) -> float:
    """Your prediction of the area of z = f(shape); shape is "square" ([-1, 1]^2) or "disc" (radius 1)."""
    ### BEGIN SOLUTION
    area = 4.0 if shape == "square" else math.pi  # the shear keeps it, whatever t is
    return area * math.exp(s1 + s2) if scaling else area
    ### END SOLUTION


# %% tags=["nbval-ignore-output"]
shear_widget = ShearAndScale2D()
shear_widget

# %%
print(shear_widget.status)

# %% nbgrader={"grade": true, "grade_id": "03-ex2-predict-area-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
with hint("predicted_area(shape, a, b, c, scaling, s1, s2) should return a number"):
    _answer = predicted_area("square", 0.8, 0.5, 2.0, False, 0.0, 0.0)
assert isinstance(_answer, (int, float)) and not isinstance(_answer, bool) and math.isfinite(_answer), (
    f"predicted_area should return a finite number (an area), got {_answer!r}")
### BEGIN HIDDEN TESTS
_probe = ShearAndScale2D(n_points=20, boundary_points=2000)
_g = torch.Generator().manual_seed(23)
for _shape, _scaling in [("square", False), ("disc", False), ("square", True), ("disc", True), ("disc", True)]:
    _u = (2 * torch.rand(5, generator=_g) - 1).tolist()
    _set = {"a": round(2 * _u[0], 2), "b": round(1.5 * _u[1], 2), "c": round(2 + 2 * _u[2], 1),
            "s1": round(_u[3], 2), "s2": round(_u[4], 2)}
    with _probe.hold_updates():
        _probe.controls["shape"].value, _probe.controls["scaling"].value = _shape, _scaling
        for _key, _value in _set.items():
            _probe.controls[_key].value = _value
    with hint(f"predicted_area failed for the {_shape} with {_set}, scaling {_scaling}"):
        _mine = float(predicted_area(_shape, _set["a"], _set["b"], _set["c"], _scaling, _set["s1"], _set["s2"]))
    assert abs(_mine - _probe.area_after) < 1e-3 * _probe.area_after, (
        f"the {_shape} with {_set}, scaling layer {'on' if _scaling else 'off'}: you predict {_mine:.4f}, the "
        f"widget measures {_probe.area_after:.4f}. Set the widget to these values and look again")
### END HIDDEN TESTS
print("ex2 passed")

# %% [markdown]
# ### Exercise 3: find the two bugs
#
# Here is a NICE for the plane written out by hand: $K$ couplings, where coupling $k$ keeps
# coordinate $x_1$ and shifts $x_2$ by `nets[k]` of it when $k$ is even, and the other way round
# when $k$ is odd, then the scaling $z = h \odot e^{s}$ (`log_scale` is $s$).
# `nice_forward(x, nets, log_scale)` should return $z = f(x)$ and
# $\log|\det \partial f/\partial x|$, `nice_inverse(z, nets, log_scale)` the point
# $x = f^{-1}(z)$ and $\log|\det \partial f^{-1}/\partial z|$, one value per point. Two lines
# are wrong. The cell after them shows the symptoms: the density
# $p_Z(f(x))\,e^{\log|\det|}$ built from `nice_forward` does not integrate to 1, and points
# sampled with `nice_inverse` do not come back when mapped with `nice_forward`.
#
# Find the two bugs with checks of your own, on single layers or the whole map: each
# log-determinant against autograd's (`autograd_logabsdet(fn, x)` from `flowlib.grading`
# computes $\log|\det|$ of a map `fn` at each row of `x`), and the round trip in each
# direction. Then write `fixed_nice_forward` and `fixed_nice_inverse`, the same model with
# correct log-determinants and a true inverse. The test checks them with autograd, the round
# trip both ways, the density's integral and a map worked by hand, for other networks and
# other numbers of couplings.

# %%
def nice_forward(x: Tensor, nets: list, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """z = f(x) of the hand-written NICE, and log|det df/dx| (one value per point)."""
    x1, x2 = x[:, :1], x[:, 1:]
    for k, net in enumerate(nets):
        if k % 2 == 0:
            x2 = x2 + net(x1)
        else:
            x1 = x1 + net(x2)
    z = torch.cat([x1, x2], dim=1) * torch.exp(log_scale)
    return z, -log_scale.sum().expand(x.shape[0])


def nice_inverse(z: Tensor, nets: list, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """x = f^{-1}(z) of the same NICE, and log|det df^{-1}/dz|."""
    h = z * torch.exp(-log_scale)
    h1, h2 = h[:, :1], h[:, 1:]
    for k in reversed(range(len(nets))):
        if k % 2 == 0:
            h2 = h2 - nets[k](h1)
        else:
            h1 = h1 - nets[k](h1)
    return torch.cat([h1, h2], dim=1), -log_scale.sum().expand(z.shape[0])


def hand_nice_parts(couplings: int, seed: int) -> tuple[list, Tensor]:
    """Random (not zero) networks 1 -> 1 and log-scales for the hand-written NICE, in float64."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = [randomize_last_layer(MLP(1, 1, hidden=16, layers=2), 0.5, g).double() for _ in range(couplings)]
    return nets, 0.6 * torch.randn(2, generator=g, dtype=torch.float64)


def grid_integral(forward, nets: list, log_scale: Tensor, half_width: float = 14.0, n: int = 500) -> float:
    """The integral of p_Z(f(x)) exp(logdet) over [-w, w]^2 by the midpoint rule, from a forward function."""
    h = 2 * half_width / n
    axis = torch.linspace(-half_width + h / 2, half_width - h / 2, n, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        z, logdet = forward(grid, nets, log_scale)
        density = torch.exp(StandardNormal(2).log_prob(z) + logdet)
    return float(density.sum() * h * h)


nets_demo, s_demo = hand_nice_parts(4, seed=8)
print("log-scales s:", [round(v, 3) for v in s_demo.tolist()])

# %%
print(f"integral of the density from nice_forward: {grid_integral(nice_forward, nets_demo, s_demo):.3f}")
with torch.no_grad():
    z_demo = torch.randn(1000, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_demo, _ = nice_inverse(z_demo, nets_demo, s_demo)
    print(f"largest |f(f^-1(z)) - z| over 1000 samples: {float((nice_forward(x_demo, nets_demo, s_demo)[0] - z_demo).abs().max()):.3f}")

# %% nbgrader={"grade": false, "grade_id": "03-ex3-fix-the-bugs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fixed_nice_forward(x: Tensor, nets: list, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """z = f(x) and log|det df/dx|, fixed."""
    ### BEGIN SOLUTION
    x1, x2 = x[:, :1], x[:, 1:]
    for k, net in enumerate(nets):
        if k % 2 == 0:
            x2 = x2 + net(x1)
        else:
            x1 = x1 + net(x2)
    z = torch.cat([x1, x2], dim=1) * torch.exp(log_scale)
    return z, log_scale.sum().expand(x.shape[0])  # was -sum(s): the scaling multiplies volumes by exp(sum s)
    ### END SOLUTION


def fixed_nice_inverse(z: Tensor, nets: list, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """x = f^{-1}(z) and log|det df^{-1}/dz|, fixed."""
    ### BEGIN SOLUTION
    h = z * torch.exp(-log_scale)
    h1, h2 = h[:, :1], h[:, 1:]
    for k in reversed(range(len(nets))):
        if k % 2 == 0:
            h2 = h2 - nets[k](h1)
        else:
            h1 = h1 - nets[k](h2)  # was nets[k](h1): an odd coupling shifts x_1 by a function of x_2
    return torch.cat([h1, h2], dim=1), -log_scale.sum().expand(z.shape[0])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-ex3-fix-the-bugs-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _call_fixed(fn, v: Tensor, nets: list, s: Tensor) -> tuple[Tensor, Tensor]:
    with hint(f"{fn.__name__}(v, nets, log_scale) failed; it should return (points of shape (n, 2), "
              f"logdet of shape (n,))"):
        out, logdet = fn(v, nets, s)
    assert isinstance(out, Tensor) and out.shape == v.shape, (
        f"{fn.__name__}: the output should have the shape of the input, {tuple(v.shape)}; got "
        f"{getattr(out, 'shape', type(out).__name__)}")
    assert isinstance(logdet, Tensor) and logdet.shape == (v.shape[0],), (
        f"{fn.__name__}: logdet should have one value per point, shape ({v.shape[0]},); got "
        f"{getattr(logdet, 'shape', type(logdet).__name__)}")
    return out, logdet


def _check_fixed(couplings: int, seed: int, n: int) -> None:
    nets, s = hand_nice_parts(couplings, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    where = f"({couplings} couplings, s = {[round(v, 3) for v in s.tolist()]})"
    with torch.no_grad():
        fx, ld_forward = _call_fixed(fixed_nice_forward, x, nets, s)
        gz, ld_inverse = _call_fixed(fixed_nice_inverse, z, nets, s)
        back_x, _ = _call_fixed(fixed_nice_inverse, fx, nets, s)
        back_z, _ = _call_fixed(fixed_nice_forward, gz, nets, s)
    check_close(back_x, x, f"{where}: fixed_nice_inverse(fixed_nice_forward(x)) is not x", atol=1e-9)
    check_close(back_z, z, f"{where}: fixed_nice_forward(fixed_nice_inverse(z)) is not z", atol=1e-9)
    check_close(ld_forward, autograd_logabsdet(lambda v: fixed_nice_forward(v, nets, s)[0], x),
                f"{where}: fixed_nice_forward's logdet is not autograd's log|det df/dx|", atol=1e-9)
    check_close(ld_inverse, autograd_logabsdet(lambda v: fixed_nice_inverse(v, nets, s)[0], z),
                f"{where}: fixed_nice_inverse's logdet is not autograd's log|det df^-1/dz|", atol=1e-9)
    integral = grid_integral(fixed_nice_forward, nets, s)
    assert abs(integral - 1.0) < 1e-2, f"{where}: your density integrates to {integral:.4f}, not 1"


def _check_fixed_by_hand() -> None:
    """One coupling, m(a) = a^2, s = (0.5, -0.25): x = (1, 2) -> h = (1, 2 + 1) -> z = (e^0.5, 3 e^-0.25)."""
    s = torch.tensor([0.5, -0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    z, _ = _call_fixed(fixed_nice_forward, x, [lambda a: a**2], s)
    check_close(z, torch.tensor([[math.exp(0.5), 3 * math.exp(-0.25)]], dtype=torch.float64),
                "one coupling that shifts x_2 by x_1^2, then the scaling: f(1, 2) = (e^0.5, 3 e^-0.25)", atol=1e-12)


_check_fixed_by_hand()
_check_fixed(couplings=4, seed=8, n=6)
### BEGIN HIDDEN TESTS
def _intended(x: Tensor, nets: list, s: Tensor) -> Tensor:
    x1, x2 = x[:, :1], x[:, 1:]
    for k, net in enumerate(nets):
        x1, x2 = (x1, x2 + net(x1)) if k % 2 == 0 else (x1 + net(x2), x2)
    return torch.cat([x1, x2], dim=1) * torch.exp(s)


for _k, _seed, _n in [(1, 80, 3), (3, 81, 1), (6, 82, 9)]:
    _check_fixed(_k, _seed, _n)
    _nets, _s = hand_nice_parts(_k, _seed)
    _x = torch.randn(5, 2, generator=torch.Generator().manual_seed(_seed), dtype=torch.float64)
    with torch.no_grad():
        check_close(_call_fixed(fixed_nice_forward, _x, _nets, _s)[0], _intended(_x, _nets, _s),
                    f"({_k} couplings) fixed_nice_forward is not the model described in the text", atol=1e-10)
### END HIDDEN TESTS
print("ex3 passed")

# %% [markdown]
# ## 3. NICE on 2D toys
#
# The model is `your_nice` again, larger: 24 of your additive couplings that shift
# the two coordinates in turn, each with an MLP conditioner (from the coordinate it reads to
# the shift of the other, through two hidden layers of 32 units with the smooth tanh
# activation), and the final scaling. Every conditioner's last layer starts at zero, so the
# untrained model is the identity and its density is the base. We train one model per toy by
# maximum likelihood with `flowlib.train.fit`, on 20 000 samples, with a peak learning rate
# of $10^{-2}$ (after a warm-up, decayed to zero along a cosine).

# %%
TOY_COUPLINGS, TOY_HIDDEN, TOY_LR = 24, 32, 1e-2  # the same model for every toy, in every mode
TOY_NAMES = ["eight_gaussians", "two_moons", "checkerboard"]
toys = {name: get_toy(name) for name in TOY_NAMES}
toy_data = {name: toy.sample(20_000, generator=torch.Generator().manual_seed(10 + i))
            for i, (name, toy) in enumerate(toys.items())}
toy_models = {}
for name in TOY_NAMES:
    torch.manual_seed(0)
    toy_models[name] = your_nice(TOY_COUPLINGS, hidden=TOY_HIDDEN, activation=nn.Tanh)
print("layers:", [type(f).__name__ for f in toy_models["two_moons"].flow.flows])
print("parameters per model:", count_parameters(toy_models["two_moons"]))

# %% tags=["nbval-ignore-output"]
toy_results = {}
for name in TOY_NAMES:
    print(name)
    toy_results[name] = fit(toy_models[name], toy_data[name], steps=TOY_STEPS, batch_size=256, lr=TOY_LR,
                            device=DEVICE, seed=0)
    toy_models[name].cpu()

# %% [markdown]
# ### Layer by layer
#
# Each row follows 3000 data points through the trained model: the first panel is the data
# $x$, the next ones the output of every fourth coupling (panel "after $k$": after coupling
# $k$), the last panel $z = f(x)$, after the scaling. Points keep the colour of
# their starting angle, so you can follow a mode from panel to panel, and all panels of a row
# share one scale. Notice two things. Each coupling moves points only *vertically* or only
# *horizontally*: it shifts one coordinate by a function of the other. And however much the
# couplings stretch the cloud in one direction, they squeeze it in another, so the area it
# covers stays the same; only the last layer, the scaling, shrinks it onto the base (the black
# circle holds 86% of the mass of $\mathcal{N}(0, I)$).

# %%
def flow_steps_figure(models: dict, data: dict, n: int = 3000, every: int = 4) -> None:
    """One row per toy: the data, then after every `every`-th layer of its trained NICE, then z
    (Compose.forward_steps)."""
    depth = len(next(iter(models.values())).flow.flows)
    shown = sorted({0, *range(every, depth, every), depth})  # 0: the data, depth: z = f(x)
    rows, cols = len(models), len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.2 * rows), squeeze=False)
    circle = torch.linspace(0, 2 * math.pi, 100)
    for row, name in enumerate(models):
        x = data[name][:n]
        with torch.no_grad():
            steps = [models[name].flow.forward_steps(x)[k] for k in shown]
        # One scale per row, so that a change of spread from panel to panel is visible.
        lim = 1.05 * max(float(h.abs().quantile(0.995)) for h in steps)
        colour = torch.atan2(x[:, 1], x[:, 0])
        for k, ax, h in zip(shown, axes[row], steps, strict=True):
            ax.scatter(h[:, 0], h[:, 1], c=colour, cmap="hsv", s=1, alpha=0.6, linewidths=0)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
            if row == 0:
                title = "x (data)" if k == 0 else ("z: Scaling" if k == depth else f"after {k}")
                ax.set_title(title, fontsize=8)
        # Where the base N(0, I) puts 86% of its mass: the target of the last panel.
        axes[row, -1].plot(2 * torch.cos(circle), 2 * torch.sin(circle), color="k", lw=0.8)
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    plt.show()


flow_steps_figure(toy_models, toy_data)

# %% [markdown]
# ### How good is the fit?
#
# The toys come with their exact log-densities, so we can measure
# $\mathrm{KL}(p_\text{data}\,\|\,p_X) = \mathbb{E}_{x\sim p_\text{data}}[\log p_\text{data}(x) - \log p_X(x)]$
# by Monte Carlo (`flowlib.metrics.kl_divergence_estimate`): zero for a perfect model, in nats.

# %% tags=["nbval-ignore-output"]
toy_kl = {}
for name in TOY_NAMES:
    toy_kl[name] = kl_divergence_estimate(toys[name], toy_models[name], n=KL_SAMPLES,
                                          generator=torch.Generator().manual_seed(5))
    print(f"{name:>16}: KL(data || NICE) = {toy_kl[name].value:.3f} +- {toy_kl[name].stderr:.3f} nats")

# %%
fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
for col, name in enumerate(TOY_NAMES):
    bounds = toys[name].bounds
    # One colour scale per column, the data's: equally bright means equally probable.
    vmax = float(density_on_grid(toys[name], bounds, resolution=GRID)[2].max())
    plot_density_2d(toys[name], bounds=bounds, resolution=GRID, ax=axes[0, col], title=f"{name}: data", vmax=vmax)
    plot_density_2d(toy_models[name], bounds=bounds, resolution=GRID, ax=axes[1, col], title="NICE", vmax=vmax)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %%
# Whatever the training did, each model is a normalised density: the change of variables is
# exact. (A box of half-width 12 holds practically all of its mass.)
for name in TOY_NAMES:
    print(f"{name}: integral of p_X over [-12, 12]^2 = {integrate_density_2d(toy_models[name], bounds=12.0):.2f}")

# %% [markdown]
# The KL values above and the pictures tell the same story. The two moons are fitted fairly
# well, and the eight Gaussians are eight blobs. (Compare the brightness: both panels of a
# column share one colour scale, the data's.) Both pictures also show thin bright threads
# that join the separate pieces of the data, and longer training does not remove them: they
# are forced on NICE. Its density is $p_X(x) = e^{\sum_i s_i}\,p_Z(f(x))$, so the region
# where $p_X$ exceeds any level is $f^{-1}$ of a disc about the origin, which is one connected
# piece, because $f$ is continuous and invertible. A density whose densest region comes in
# eight pieces cannot be matched: the model joins the pieces by threads as thin as it can make
# them, and they carry the base's highest values.
#
# The checkerboard is a different matter, and no amount of training will fix it. Its density
# is flat: $1/32$ on eight squares, zero elsewhere. A NICE model's volume factor
# $e^{\sum_i s_i}$ is the same everywhere: to be flat on the squares, $p_Z$ would have to be
# flat on their image $f(\text{squares})$, and a Gaussian is flat nowhere. Whatever its
# couplings, **no NICE model comes closer than about 0.307 nats to the checkerboard**:
# Exercise 4 asks you to derive this floor, in any dimension, and the cell after it measures
# the floor of all three toys. The model above sits just above it, and its picture shows the
# price: the squares are torn and smeared, and mass has spilled between them.
#
# This is volume preservation at work: couplings only rearrange, and the one scaling layer
# changes all volumes alike. Letting each coupling scale as well as shift (RealNVP, lecture
# 4) makes the volume factor vary from place to place, and the floor goes: flowlib's RealNVP
# reaches 0.055 nats on the checkerboard (`benchmarks/HISTORY.md`).

# %% [markdown]
# ### Exercise 4: how close can NICE come to a flat density? (a derivation)
#
# Let $p_\text{data}$ be uniform on a region $S \subset \mathbb{R}^D$ of volume $V$, and let
# $p_X$ be any NICE model: any number of couplings, any networks, any scaling. Show that
# $\mathrm{KL}(p_\text{data}\,\|\,p_X)$ is bounded below by a number that depends on $D$ only
# (not on $S$, not on $V$), find the best such bound (the one that some choice of $S$ and
# of the model attains), and write it as `uniform_kl_floor(D)`, in nats.
#
# Hints, in order. (1) The KL between two distributions does not change when both are mapped
# by the same bijection: map by $f$. What is the distribution of $z = f(x)$ for
# $x \sim p_\text{data}$, and what does a NICE model's constant determinant say about it?
# (2) Among all regions of a given volume, which one makes $\mathbb{E}\,\|z\|^2$ smallest for
# $z$ uniform on it? (3) One size is left to choose: optimise it. Facts you may use: the unit
# ball in $\mathbb{R}^D$ has volume $\pi^{D/2}/\Gamma(D/2 + 1)$ (`math.lgamma` is
# $\log \Gamma$), and for $z$ uniform on a ball of radius $R$ about the origin,
# $\mathbb{E}\,\|z\|^2 = D R^2/(D + 2)$.
#
# The test compares your function with values worked out by hand and by Monte Carlo, in
# several dimensions, and with the checkerboard's KL measured above, which no lower bound may
# exceed.

# %% nbgrader={"grade": false, "grade_id": "03-ex4-uniform-kl-floor", "locked": false, "schema_version": 3, "solution": true, "task": false}
def uniform_kl_floor(D: int) -> float:
    """The smallest KL(uniform on a region of R^D || NICE model) over all regions and all NICE models, in nats."""
    ### BEGIN SOLUTION
    # z = f(x) is uniform on f(S), of volume V exp(sum s): KL = KL(uniform on f(S) || N(0, I))
    # = -log vol(f(S)) + (D/2) log(2 pi) + E|z|^2 / 2. For a given volume the centred ball
    # minimises E|z|^2; over its radius R the minimum is at R^2 = D + 2.
    return math.lgamma(D / 2 + 1) + (D / 2) * math.log(2 / (D + 2)) + D / 2
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-ex4-uniform-kl-floor-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _floor(D: int) -> float:
    with hint(f"uniform_kl_floor({D}) failed: it takes a dimension D and returns a number of nats"):
        value = uniform_kl_floor(D)
    assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (
        f"uniform_kl_floor({D}) should return a finite number, got {value!r}")
    return float(value)


_checkerboard = toy_kl["checkerboard"]
assert abs(_floor(2) - 0.307) < 5e-4, f"for D = 2 the floor is about 0.307 nats (see the text); you return {_floor(2):.4f}"
assert _floor(2) <= _checkerboard.value + 3 * _checkerboard.stderr, (
    f"your floor for D = 2, {_floor(2):.4f}, is above the KL {_checkerboard.value:.4f} that a trained NICE reached "
    f"on the checkerboard: it cannot be a lower bound")
assert 0 < _floor(1) < _floor(2) < _floor(3), "the floor should be positive, and grow with the dimension"
### BEGIN HIDDEN TESTS
def _ball_kl(D: int, radius: float, n: int = 400_000, seed: int = 0) -> float:
    """Monte Carlo KL(uniform on the centred ball of this radius || N(0, I))."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, D, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    r = radius * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1 / D)
    z = r * direction
    log_volume = (D / 2) * math.log(math.pi) - math.lgamma(D / 2 + 1) + D * math.log(radius)
    return float(-log_volume - StandardNormal(D).log_prob(z).mean())


for _D in (1, 3, 5, 10, 40):
    _hand = math.lgamma(_D / 2 + 1) + (_D / 2) * math.log(2 / (_D + 2)) + _D / 2
    assert abs(_floor(_D) - _hand) < 1e-6, f"D = {_D}: you return {_floor(_D):.6f}, the floor is {_hand:.6f}"
for _D in (2, 3, 6):
    _best = _ball_kl(_D, math.sqrt(_D + 2))
    assert abs(_best - _floor(_D)) < 1e-2, f"D = {_D}: Monte Carlo gives {_best:.4f} for the best ball, you {_floor(_D):.4f}"
    for _factor in (0.7, 1.4):  # a smaller or larger ball does worse
        assert _ball_kl(_D, _factor * math.sqrt(_D + 2)) > _floor(_D), f"D = {_D}: a ball of another size beats your floor"
### END HIDDEN TESTS
print("ex4 passed")

# %% [markdown]
# **The floor of every toy.** The argument of Exercise 4 works for any density, once it is
# sorted. Write $p^{\ast}(a)$ for the density's values in decreasing order, as a function of the
# area $a$ of the region where the density is larger (the *decreasing rearrangement*). For a
# NICE model, $p_X(x) = p_Z(f(x))\,e^{\sum_i s_i}$ and the volume factor is constant, so
# $p_X^{\ast}$ is the Gaussian's own: $\lambda e^{-\lambda a}$, exponential in the area, for
# some rate $\lambda > 0$ that the scaling sets. Replacing both densities by their decreasing
# rearrangements can only lower the KL (a rearrangement inequality: Lieb & Loss, 2001,
# chapter 3), $\mathrm{KL}(p_\text{data}\,\|\,p_X) \ge \mathrm{KL}(p_\text{data}^{\ast}\,\|\,p_X^{\ast})$,
# so the smallest KL between $p^{\ast}_\text{data}$ and an exponential is a floor for every
# NICE model.
# The cell computes it on a grid: sort the grid's density values, add up the areas, and use
# the best rate, $\lambda = 1/\mathbb{E}[a]$.

# %%
def nice_floor(toy, resolution: int = 300) -> float:
    """min over lambda of KL(p* || lambda exp(-lambda a)) for the toy's decreasing rearrangement p*, on a grid."""
    half_width = max(abs(b) for b in toy.bounds) + 1.0
    h = 2 * half_width / resolution
    axis = torch.linspace(-half_width + h / 2, half_width - h / 2, resolution, dtype=torch.float64)
    p = toy.log_prob(torch.cartesian_prod(axis, axis)).exp().sort(descending=True).values
    mass = p * h * h / float((p * h * h).sum())  # the probability of each grid cell
    area = (torch.arange(len(p), dtype=torch.float64) + 0.5) * h * h  # a at the cell's place in the order
    inside = mass > 0
    mean_log_p = float((mass[inside] * p[inside].log()).sum())
    return mean_log_p + math.log(float((mass * area).sum())) + 1.0  # the KL at lambda = 1 / E[a]


toy_floor = {name: nice_floor(toys[name]) for name in TOY_NAMES}
for name in TOY_NAMES:
    print(f"{name:>16}: no NICE model goes below KL = {toy_floor[name]:.3f} nats")

# %% tags=["nbval-ignore-output"]
for name in TOY_NAMES:
    print(f"{name:>16}: trained NICE {toy_kl[name].value:.3f} nats, floor {toy_floor[name]:.3f} nats")

# %% [markdown]
# The eight Gaussians have (almost) no floor: eight separate round blobs, sorted, look like
# one round Gaussian. What keeps our model above it is the map it would need, with threads
# ever thinner between ever sharper blobs, which shears build only slowly. The two moons are
# flat along their arcs, so they have a small floor of their own, about half of what the
# model reaches. The checkerboard's floor is the 0.307 nats of Exercise 4, and the model is
# within a few hundredths of it.

# %% [markdown]
# ### Exercise 5: design a NICE for the eight Gaussians, on a budget
#
# Your turn to choose the architecture. Write `my_nice_design()`: it returns a new, untrained
# NICE model for the plane and the learning rate to train it with. The model must be a
# `FlowModel` with a `StandardNormal(2)` base whose flow is a `Compose` of flowlib
# `AdditiveCoupling` layers followed by one `Scaling` (`flowlib.models.nice(2, ...)` builds
# such models; you may also assemble one from `AdditiveCoupling`, `Scaling` and conditioner
# networks of your own), with at most `DESIGN_MAX_PARAMS` = 10,000 parameters.
#
# **Target: KL(data || model) below 0.25 nats on the eight Gaussians** after exactly
# `DESIGN_STEPS` = 2000 steps of `fit` (batch 256, on 20 000 samples, `fit`'s warm-up and
# cosine schedule, your learning rate), measured on 20 000 fresh samples. The test runs the
# training itself: 10 to 30 CPU-seconds (more couplings take longer), the same budget in every
# mode. Worth varying: the number of couplings against their width, the networks' activation
# (`nice` and `MLP` take `activation=`), the learning rate; and worth thinking about what a
# stack of shears has to build to pull eight separate blobs into one Gaussian. The models of
# this section (27,674 parameters, and more steps) do not fit the budget.

# %% nbgrader={"grade": false, "grade_id": "03-ex5-design-nice", "locked": false, "schema_version": 3, "solution": true, "task": false}
def my_nice_design() -> tuple[FlowModel, float]:
    """(a new NICE model for the plane, the learning rate to train it with)."""
    ### BEGIN SOLUTION
    torch.manual_seed(0)
    return nice(2, couplings=24, hidden=16, layers=2, activation=nn.Tanh), 2e-2
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-ex5-design-nice-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false} tags=["nbval-ignore-output"]
DESIGN_TARGET = 0.25
with hint("my_nice_design() should return a pair (model, learning rate)"):
    _design = my_nice_design()
assert isinstance(_design, tuple) and len(_design) == 2, f"return a pair (model, learning rate), got {type(_design)}"
_model, _lr = _design
assert isinstance(_model, FlowModel) and isinstance(_model.base, StandardNormal) and _model.base.event_shape == (2,), (
    "the model should be a FlowModel with the base StandardNormal(2)")
_layers = list(_model.flow.flows) if isinstance(_model.flow, Compose) else []
assert len(_layers) >= 2 and all(isinstance(layer, AdditiveCoupling) for layer in _layers[:-1]) \
    and isinstance(_layers[-1], Scaling), (
    f"the flow should be a Compose of AdditiveCoupling layers and one final Scaling; got "
    f"{[type(layer).__name__ for layer in _layers] or type(_model.flow).__name__}")
_params = count_parameters(_model)
assert _params <= DESIGN_MAX_PARAMS, f"{_params:,} parameters: the budget is {DESIGN_MAX_PARAMS:,}"
assert isinstance(_lr, float) and 0 < _lr <= 0.05, f"the learning rate should be a float in (0, 0.05], got {_lr!r}"
_toy = get_toy("eight_gaussians")
_before = kl_divergence_estimate(_toy, _model, n=5_000, generator=torch.Generator().manual_seed(102))
assert _before.value > 1.0, f"return a new, untrained model (its KL is already {_before.value:.2f} nats)"
with hint("training your model with fit failed"):
    fit(_model, _toy.sample(20_000, generator=torch.Generator().manual_seed(100)), steps=DESIGN_STEPS,
        batch_size=256, lr=_lr, device="cpu", seed=0)
_kl = kl_divergence_estimate(_toy, _model, n=20_000, generator=torch.Generator().manual_seed(101))
print(f"your design: {_params:,} parameters, KL after {DESIGN_STEPS} steps = {_kl.value:.3f} +- {_kl.stderr:.3f} nats")
assert _kl.value < DESIGN_TARGET, f"KL {_kl.value:.3f} nats: the target is below {DESIGN_TARGET}"
### BEGIN HIDDEN TESTS
_kl_again = kl_divergence_estimate(_toy, _model, n=20_000, generator=torch.Generator().manual_seed(103))
assert _kl_again.value < DESIGN_TARGET + 0.02, f"on other fresh samples the KL is {_kl_again.value:.3f} nats"
### END HIDDEN TESTS
print("ex5 passed")

# %% [markdown]
# ## 4. NICE on the 8x8 digits
#
# Now images: scikit-learn's 1797 handwritten digits, $8\times 8$ pixels with 17 grey levels
# $0,\dots,16$, split once and for all into train / validation / test
# (`flowlib.data.load_digits`). Small enough to train on a laptop, big enough to learn
# something real.

# %%
x_train, _ = load_digits("train")
x_val, _ = load_digits("val")
x_test, _ = load_digits("test")
for split, images in [("train", x_train), ("val", x_val), ("test", x_test)]:
    print(f"{split:>5}: {tuple(images.shape)}, {images.dtype}, grey levels {int(images.min())}..{int(images.max())}")

fig, ax = plt.subplots(figsize=(9, 1.6))
image_grid(x_train[:24].float() / (DIGITS_GREY_LEVELS - 1), nrow=24, ax=ax, title="training digits")
plt.show()

# %% [markdown]
# **Dequantisation, in brief.** A density on a continuous space can cheat on discrete data:
# it could pile up infinitely high spikes on the 17 grey levels and report an infinite
# likelihood. So we spread each level $k$ over the cell $[k, k+1)$: the model sees
# $y = (x + u)/K$ with uniform noise $u \sim U[0,1)^D$ and $K = 17$, and the bound
# $\log P(x) \ge \mathbb{E}_u\!\left[\log p_Y\big((x+u)/K\big)\right] - D \log K$ turns the
# continuous density into an honest probability of the discrete image (Theis et al., 2016).
# The score is **bits per dimension**, $-\log_2 P(x) / D$: how many bits a code built from the
# model would need per pixel. Storing each pixel naively, as one of 17 equally likely levels,
# costs $\log_2 17 \approx 4.087$ bits: any model worth having goes below that. Lecture 4
# treats dequantisation in depth (and a learned, tighter version of it).
#
# `flowlib.image_models.nice_image` builds NICE for images: the dequantisation, a logit map
# from $[0,1]$ to the real line, four additive couplings with checkerboard masks and small
# convolutional conditioners, and one learned scale per pixel. Its `log_prob` takes the
# discrete images directly, and `fit` reports bits/dim.

# %%
print(f"naive baseline, log2({DIGITS_GREY_LEVELS}) = {math.log2(DIGITS_GREY_LEVELS):.3f} bits/dim")
torch.manual_seed(0)
digit_model = nice_image((1, 8, 8), couplings=4, hidden=32, blocks=1, grey_levels=DIGITS_GREY_LEVELS)
print("couplings:", sum(isinstance(m, AdditiveCoupling) for m in digit_model.modules()),
      "| parameters:", f"{count_parameters(digit_model):,}")

# %% [markdown]
# We train on the training split and evaluate the validation split regularly. `fit` keeps the
# weights with the best **validation** figure and restores them at the end; only then is the
# **test** split scored, once. Using the test split to choose anything (the step, the model
# size) would make its figure optimistic.

# %% tags=["nbval-ignore-output"]
digit_result = fit(digit_model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(),
                   steps=DIGIT_STEPS, batch_size=128, lr=2e-3, eval_every=max(DIGIT_STEPS // 30, 5),
                   device=DEVICE, seed=0)
digit_model.cpu().eval()
print(f"best validation bits/dim {digit_result.best_val:.3f} at step {digit_result.best_step} "
      f"of {digit_result.steps}")
print(f"test bits/dim of that model: {digit_result.test:.3f}  (naive: {math.log2(DIGITS_GREY_LEVELS):.3f})")

# %% [markdown]
# Samples: draw $z \sim \mathcal{N}(0, T^2 I)$ and invert. At temperature $T = 1$ the samples
# show the full variety the model learned, noise included; a lower temperature
# ($T = 0.7$) trades variety for cleaner strokes.

# %%
torch.manual_seed(3)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
for ax, temperature in zip(axes, (1.0, 0.7), strict=True):
    samples = digit_model.sample_levels(48, temperature=temperature)
    image_grid(samples.float() / (DIGITS_GREY_LEVELS - 1), nrow=8, ax=ax, title=f"NICE samples, T = {temperature}")
plt.show()

# %% [markdown]
# NICE's samples look like blurry, noisy digits. Remember that a NICE model changes volume
# in exactly one place, the per-pixel scaling, and the NICE paper points out that those
# scales say which dimensions matter. With $z = e^{s} \odot h$, a pixel whose values hardly
# vary must be *stretched* (large $s_i$) to reach the unit spread of the base, while a pixel
# that varies a lot is compressed (small $s_i$). Here the columns near the left and right
# edges, blank in most digits, get the largest log-scales, and the middle of the image, where
# the strokes of different digits differ most, gets the smallest.

# %%
scaling = [m for m in digit_model.modules() if isinstance(m, Scaling)][-1]
fig, ax = plt.subplots(figsize=(3.6, 3.2))
shown = ax.imshow(scaling.log_scale.detach()[0].numpy(), cmap="magma")
fig.colorbar(shown, ax=ax, shrink=0.8, label="s (log-scale)")
ax.set_title("the learned log-scales s, per pixel", fontsize=10)
ax.axis("off")
plt.show()

# %% [markdown]
# ### Overfitting, and why we keep a validation split
#
# The digits are only 1797 images, and 1259 of them are for training. A flexible model can
# learn those particular images by heart: its training figure keeps improving while its
# figure on images it has never seen stops improving and then gets *worse*. The
# convolutional model above is fairly safe from this: each of its small filters is shared by
# all 64 pixel positions, a strong prior that also fits unseen digits.
#
# The NICE of the paper had no such prior: its conditioners were fully connected networks on
# the flattened image. We build one from the same flowlib pieces (RealNVP's checkerboard masks
# where the paper split odd from even pixels, `AdditiveCoupling`, `Scaling`, the logit and the
# dequantisation of `ImageFlowModel`), with an MLP of two hidden layers of 512 units as each
# conditioner, and train it with a constant learning rate, which makes what happens easy to see.

# %%
def fully_connected_nice(shape: tuple[int, int, int] = (1, 8, 8), couplings: int = 4,
                         hidden: int = 512) -> ImageFlowModel:
    """NICE in the style of Dinh et al. (2015): MLP conditioners on the flattened image."""
    c, h, w = shape

    def conditioner() -> nn.Module:
        return nn.Sequential(nn.Flatten(), MLP(c * h * w, c * h * w, hidden=hidden, layers=2),
                             nn.Unflatten(1, shape))

    # Checkerboards: the layers multiply by the mask, so each MLP reads and writes all c*h*w pixels.
    layers = [AdditiveCoupling(checkerboard_mask(c, h, w, k % 2), conditioner()) for k in range(couplings)]
    flow = Compose(LogitPreprocess(0.05), Compose(*layers, Scaling(shape)))
    return ImageFlowModel(flow, StandardNormal(shape), grey_levels=DIGITS_GREY_LEVELS)


torch.manual_seed(0)
mlp_model = fully_connected_nice()
print(f"parameters: {count_parameters(mlp_model):,}, for {x_train.shape[0]} training images of 64 pixels")

# %% tags=["nbval-ignore-output"]
mlp_result = fit(mlp_model, x_train.float(), val_data=x_val.float(), test_data=x_test.float(),
                 steps=MLP_STEPS, batch_size=128, lr=1e-3, schedule="constant",
                 eval_every=max(MLP_STEPS // 30, 5), device=DEVICE, seed=0)
mlp_model.cpu().eval()
print(f"best validation bits/dim {mlp_result.best_val:.3f} at step {mlp_result.best_step} of {mlp_result.steps}; "
      f"last validation {mlp_result.val[-1]:.3f}")
print(f"test bits/dim of the selected model: {mlp_result.test:.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, result, title in [(axes[0], digit_result, "convolutional conditioners (nice_image)"),
                          (axes[1], mlp_result, "fully connected conditioners (as in the paper)")]:
    plot_training_curve(result, ax=ax)
    ax.axvline(result.best_step, color="C2", ls="--", lw=1, label="selected: best validation")
    ax.axhline(math.log2(DIGITS_GREY_LEVELS), color="0.5", ls=":", lw=1, label="naive: log2 17")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
axes[0].set_ylim(1.6, 4.6)
plt.show()

# %% [markdown]
# Read the right panel from left to right. At first both curves fall together: the model
# learns what all digits share. Then they part: the training figure keeps falling, the
# validation figure flattens and climbs back up. From there on, the model is getting better
# at the 1259 training images and worse at digits in general. (The training curve is noisy
# because each step sees 128 images with fresh dequantisation noise; each validation point
# averages the whole split.) `fit` kept the weights from the dashed line and restored them at
# the end, so the test figure printed above belongs to that model, not to the overfitted
# one at the end of training. With `early_stopping_patience=...` it would also have stopped
# training soon after the turn.
#
# In the left panel, within this budget, the convolutional model's two curves stay close:
# it has 17 times fewer parameters and shares them across the image. Three standard
# remedies against overfitting, then: more data, a model whose structure suits the data
# (weight sharing), and selecting on a validation split.

# %% [markdown]
# ## 5. MNIST, from a shipped checkpoint
#
# NICE was introduced on MNIST, $28 \times 28$ pixels with 256 grey levels. Training it there
# takes far longer than a lecture should wait, so the course ships a small trained NICE
# together with what its training run measured (test bits/dim, parameters, training time,
# machine). `flowlib.pretrained` reads it: `checkpoint_info("nice_mnist")` returns the
# measurements, `load_pretrained("nice_mnist")` rebuilds the model (both also take the path of
# a model you trained yourself).
#
# Read its figure honestly: it is a short run of a small model on a laptop-class CPU, far
# from the figures of papers that trained much larger models for days. If the file is
# missing, or MNIST itself is not available offline, the cells below say what to do and the
# lecture goes on with the digits.

# %% tags=["nbval-ignore-output"]
# The shipped file is flowlib/checkpoints/nice_mnist.pt, written by scripts/train_image_flow.py
# (flowlib/checkpoints/README.md has the command). It holds only plain values and tensors and is
# read with torch.load(..., weights_only=True), so loading it runs no code.
NICE_MNIST_COMMAND = ("python scripts/train_image_flow.py --model nice --data mnist --minutes 10 --lr 3e-3 "
                      "--set hidden=16 --out flowlib/checkpoints/nice_mnist.pt")
mnist_model, mnist_info = None, None
nice_mnist_path = shipped_checkpoints().get("nice_mnist")
if nice_mnist_path is None:
    print("No NICE for MNIST in flowlib/checkpoints/. To make one, with MNIST available (see below),\n"
          f"run from the repository root (a GPU helps):\n\n    {NICE_MNIST_COMMAND}\n\n"
          "and run this section again. Meanwhile the digits above are the CPU stand-in.")
else:
    try:
        mnist_info = checkpoint_info(nice_mnist_path)
        mnist_model = load_pretrained(nice_mnist_path)
    except Exception as err:  # a damaged file or another format: say so and go on
        mnist_model = None
        print(f"{nice_mnist_path.name} could not be loaded ({type(err).__name__}: {err}); "
              "the digits above are the CPU stand-in.")
if mnist_model is not None:
    metrics = mnist_info.get("metrics", {})
    print(f"{nice_mnist_path.name}: {mnist_info['builder']}({mnist_info['kwargs']}), "
          f"{count_parameters(mnist_model):,} parameters")
    print(f"trained {metrics.get('steps', '?')} steps in {metrics.get('train_seconds', float('nan')) / 60:.0f} min "
          f"on {mnist_info.get('hardware', '?')}")
    print(f"recorded test bits/dim: {metrics.get('test_bpd', float('nan')):.3f} "
          f"({metrics.get('test_images', '?')} test images, {metrics.get('test_iw_samples', '?')} "
          f"dequantisation draws each; uniform noise would score {math.log2(256):.0f})")

try:
    mnist_test, _ = load_mnist("test", download=False)
    print(f"MNIST test split available: {tuple(mnist_test.shape)}")
except DatasetError as err:
    mnist_test = None
    print(f"MNIST is not available offline here ({type(err).__name__}: no local copy of its files).")
    print("To use it, set the environment variable FLOWLIB_DATA to a folder holding mnist/*.gz before "
          "starting Jupyter,\nor run flowlib.data.load_mnist('test') once with internet access "
          "(it downloads and caches the files).")

# %% [markdown]
# Samples at temperature $T = 1$ and $T = 0.7$, next to real test digits when MNIST is
# available, and a quick check that the weights came back intact: the model is scored again
# on 500 test images with one dequantisation draw each (the recorded figure used several
# draws on all 10000, so the two agree to a few hundredths).

# %% tags=["nbval-ignore-output"]
if mnist_model is not None:
    torch.manual_seed(4)
    panels = [(f"NICE samples, T = {t}", mnist_model.sample_levels(36, temperature=t)) for t in (1.0, 0.7)]
    if mnist_test is not None:
        x_check = mnist_test[:500].float()
        if mnist_info.get("pad"):  # trained on padded images: score them the same way
            x_check = pad_to(x_check, mnist_info["pad"])
        with torch.no_grad():
            print(f"bits/dim on 500 test images now: {float(mnist_model.bits_per_dim(x_check).mean()):.3f}")
        panels.append(("real MNIST test digits", mnist_test[:36]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (title, images) in zip(np.atleast_1d(axes), panels, strict=True):
        image_grid(images.float() / (mnist_model.grey_levels - 1), nrow=6, ax=ax, title=title)
    plt.show()
else:
    print("skipped: no NICE checkpoint for MNIST")

# %% [markdown]
# The samples have MNIST's texture, bright strokes on a black background, but few of them
# are readable digits: this is a small NICE trained for minutes on a CPU (printed above).
# The RealNVP and Glow models shipped for lectures 4 and 5 (larger, and trained for similar
# times) do clearly better.

# %% [markdown]
# ## 6. RevNets: backpropagation without storing activations
#
# The additive coupling looks a lot like a residual block, $y = x + F(x)$, except that the
# input is split and only one half is updated from the other. Gomez, Ren, Urtasun & Grosse
# (2017), *The Reversible Residual Network: Backpropagation Without Storing Activations*,
# built image classifiers ("RevNets") from exactly these blocks, two per unit:
# $$y_1 = x_1 + F(x_2), \qquad y_2 = x_2 + G(y_1),$$
# and noticed a second gift of invertibility. To compute gradients, ordinary backpropagation
# keeps every layer's input (and much of what happens inside it) in memory until the
# backward pass, so memory grows linearly with depth. But a reversible network can
# **recompute** each layer's input from its output, $x_{k-1} = f_k^{-1}(x_k)$, on the way
# back. Only the final output needs to be stored, whatever the depth; the price is about one
# extra inverse and forward pass per layer.
#
# Every normalizing flow is reversible, so the same trick applies to all of them.
# `flowlib.reversible.MemorySavingCompose` is a drop-in replacement for `Compose` that does
# it: same map, same parameters, same gradients, activations recomputed. We measure it
# live: stacks of 4 to 32 additive couplings on 32-dimensional vectors (batch 512), the same
# modules once under `Compose` and once under `MemorySavingCompose`, and we count the bytes
# that autograd saves for the backward pass (`torch.autograd.graph.saved_tensors_hooks`).

# %%
REV_DIM, REV_BATCH, DEPTHS = 32, 512, [4, 8, 16, 32]


def coupling_stack(depth: int, seed: int = 0) -> list[AdditiveCoupling]:
    """``depth`` additive couplings (alternating masks) with MLP conditioners, slightly trained-looking."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.Linear draws its initial weights from the global generator
    masks = [half_mask(REV_DIM, k % 2, kind="alternate") for k in range(depth)]
    return [AdditiveCoupling(mask, randomize_last_layer(
                MLP(*Coupling.conditioner_sizes(mask, Additive), hidden=128, layers=2), 0.05, gen))
            for mask in masks]


def saved_mib(model: FlowModel, x: Tensor) -> float:
    """MiB of distinct tensors autograd keeps between the forward and the backward pass."""
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -model.log_prob(x).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def gradients(model: FlowModel, x: Tensor) -> Tensor:
    """All parameter gradients of the mean negative log-likelihood, flattened into one vector."""
    model.zero_grad(set_to_none=True)
    (-model.log_prob(x).mean()).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def step_seconds(model: FlowModel, x: Tensor, repeats: int = 3) -> float:
    """Median wall time of one forward + backward pass."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (-model.log_prob(x).mean()).backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


x_rev = torch.randn(REV_BATCH, REV_DIM, generator=torch.Generator().manual_seed(7))
memory = {"plain": [], "memory-saving": []}
seconds = {"plain": [], "memory-saving": []}
grad_diffs = []
for depth in DEPTHS:
    layers = coupling_stack(depth)
    models = {"plain": FlowModel(Compose(layers), StandardNormal(REV_DIM)),
              "memory-saving": FlowModel(MemorySavingCompose(layers), StandardNormal(REV_DIM))}
    for name, model in models.items():
        memory[name].append(saved_mib(model.train(), x_rev))
        seconds[name].append(step_seconds(model, x_rev))
    grad_diffs.append(float((gradients(models["plain"], x_rev) - gradients(models["memory-saving"], x_rev))
                            .abs().max()))

fig, ax = plt.subplots(figsize=(5.5, 3.6))
for name, marker in (("plain", "o"), ("memory-saving", "s")):
    ax.plot(DEPTHS, memory[name], marker=marker, label=name)
ax.set(xlabel="number of coupling layers", ylabel="saved for backward (MiB)", xticks=DEPTHS)
ax.set_title("activation memory of one training step", fontsize=10)
ax.legend(frameon=False)
plt.show()

# %% tags=["nbval-ignore-output"]
print("depth | saved MiB: plain  memory-saving | time per step: plain  memory-saving")
for i, depth in enumerate(DEPTHS):
    print(f"{depth:>5} | {memory['plain'][i]:>15.2f} {memory['memory-saving'][i]:>14.3f} | "
          f"{1e3 * seconds['plain'][i]:>17.1f} ms {1e3 * seconds['memory-saving'][i]:>9.1f} ms")

# %%
growing = all(a < b for a, b in zip(memory["plain"][:-1], memory["plain"][1:], strict=True))
print("plain autograd: saved memory grows with depth:", growing)
print("memory-saving: the same at every depth:", len(set(memory["memory-saving"])) == 1)
print(f"memory-saving stores less than 1/50 of plain at depth {DEPTHS[-1]}:",
      memory["memory-saving"][-1] < memory["plain"][-1] / 50)
print("max |grad diff| < 1e-5:", max(grad_diffs) < 1e-5)

# %% [markdown]
# The plain stack's memory grows in proportion to the number of layers; the memory-saving
# one keeps just the output $z$ (a batch of 512 vectors of 32 floats, 64 KiB) at every depth,
# and its gradients agree with plain autograd's to round-off. A step takes longer, roughly
# twice as long (see the table; the exact ratio depends on the machine): memory is traded for
# computation. One caveat: the
# recomputed inputs are only as exact as the inverse in floating point, so errors can build
# up over very deep stacks of steep layers. Additive couplings are the friendliest case
# (addition and subtraction of the same number); `MemorySavingCompose.reconstruction_error`
# measures the error on your own data. Gomez et al. used the same trick to train RevNets on
# ImageNet to about the accuracy of ResNets of similar size, with activation memory that no
# longer grows with depth.

# %% [markdown]
# ### Exercise 6: recompute the activations
#
# The backward pass of a RevNet needs each layer's input, and recovers it from the output.
# Given a `Compose` of flowlib layers (`flow.flows` lists them in the forward order) and its
# final output $z = x_K$ alone, return the list of all intermediate values
# $[x_0, x_1, \dots, x_K]$ in the forward order, $x_k$ being the output of layer $k$, using
# each layer's `inverse` (which returns a pair, the value and a log-determinant). The test
# compares your list with the values it records on the way forward, layer by layer, and
# refuses an answer that runs the whole composition in one call instead of its layers.

# %% nbgrader={"grade": false, "grade_id": "03-ex6-recompute-activations", "locked": false, "schema_version": 3, "solution": true, "task": false}
def recompute_activations(flow: Compose, z: Tensor) -> list[Tensor]:
    """[x_0, ..., x_K] of a composition, recovered from x_K = z alone."""
    ### BEGIN SOLUTION
    values = [z]
    for layer in reversed(flow.flows):
        z, _ = layer.inverse(z)
        values.append(z)
    return values[::-1]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "03-ex6-recompute-activations-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def random_nice(dim: int, couplings: int, seed: int) -> FlowModel:
    """A NICE model with random (not zero) conditioner outputs and random scales."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nice(dim, couplings=couplings, hidden=16, layers=2)
    with torch.no_grad():
        for layer in model.flow.flows[:-1]:
            randomize_last_layer(layer.conditioner, 0.4, g)
        model.flow.flows[-1].log_scale.copy_(0.5 * torch.randn(dim, generator=g))
    return model


def _check_recompute(seed: int, dim: int, couplings: int, batch: int) -> None:
    flow = random_nice(dim, couplings, seed).flow
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 2))
    expected = [x]
    with torch.no_grad():
        for layer in flow.flows:  # the way forward, one layer at a time
            expected.append(layer(expected[-1])[0])
        with hint("recompute_activations(flow, z) failed: it should return a list of tensors"):
            mine = recompute_activations(flow, expected[-1])
    assert isinstance(mine, list) and len(mine) == len(expected), (
        f"return a list of {len(expected)} tensors (the input, then the output of each of the {len(flow.flows)} "
        f"layers); got {type(mine).__name__} of length {len(mine) if isinstance(mine, list) else '?'}")
    for k, (a, b) in enumerate(zip(mine, expected, strict=True)):
        check_close(a, b, f"entry {k} of your list is not x_{k}: is the list in forward order (x_0 first), and "
                    f"did you invert the layers from the last to the first?", atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        check_own_work(recompute_activations, flow, expected[-1],
                       allowed=("flowlib.coupling", "flowlib.transformers", "flowlib.nets", "flowlib.core.Flow.",
                                "flowlib.core.sum_except_batch"),
                       message="recompute the values with each layer's inverse, not with the composition's own methods")


_check_recompute(seed=61, dim=4, couplings=3, batch=6)
### BEGIN HIDDEN TESTS
_check_recompute(seed=600, dim=6, couplings=5, batch=3)
_check_recompute(seed=601, dim=3, couplings=1, batch=1)
### END HIDDEN TESTS
print("ex6 passed")

# %% [markdown]
# ## Summary
#
# * The additive coupling $z_1 = x_1$, $z_2 = x_2 + m(x_1)$ is inverted by a subtraction,
#   whatever the network $m$; its Jacobian is lower triangular with a unit diagonal, so
#   $\det = 1$ at no cost.
# * The layer is three parts: a structure (the coupling: which coordinates condition which),
#   a conditioner network, and an elementwise transformer (here the additive one). flowlib's
#   `Coupling` slices by index when the mask has one value per coordinate or channel, and
#   multiplies by the mask otherwise (checkerboards).
# * Determinant one means **volume preserving**: a stack of couplings can only rearrange
#   probability mass, never concentrate it. NICE adds one diagonal scaling layer,
#   $\log|\det| = \sum_i s_i$, and its log-likelihood is
#   $\log p_X(x) = \log p_Z(f(x)) + \sum_i s_i$.
# * A NICE model's density is $p_Z(f(x))\,e^{\sum_i s_i}$ with a constant volume factor, so
#   its sorted density profile is a Gaussian's: on a flat density (the checkerboard) no NICE
#   model comes closer than $0.307$ nats, whatever its couplings (Exercise 4), and the two
#   moons have a small floor too. The eight Gaussians have none; there, depth, smooth
#   conditioners and the learning rate decide (Exercise 5).
# * On images, discrete pixels are dequantised and scored in bits per dimension. With 1259
#   training images the model overfits; selecting the weights on a validation split and
#   scoring the test split once keeps the reported figure honest.
# * Reversible blocks let backpropagation recompute activations instead of storing them
#   (RevNets): memory constant in depth, for roughly twice the compute per step.
#
# Next lecture: RealNVP, where every coupling scales as well as shifts.
#
# ## References
#
# * L. Dinh, D. Krueger and Y. Bengio (2015). *NICE: Non-linear Independent Components
#   Estimation.* ICLR workshop track.
# * A. N. Gomez, M. Ren, R. Urtasun and R. B. Grosse (2017). *The Reversible Residual Network:
#   Backpropagation Without Storing Activations.* NeurIPS.
# * G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed and B. Lakshminarayanan (2021).
#   *Normalizing Flows for Probabilistic Modeling and Inference.* JMLR 22(57).
# * L. Theis, A. van den Oord and M. Bethge (2016). *A note on the evaluation of generative
#   models.* ICLR.
# * L. Dinh, J. Sohl-Dickstein and S. Bengio (2017). *Density estimation using Real NVP.* ICLR.
# * E. H. Lieb and M. Loss (2001). *Analysis*, 2nd edition. American Mathematical Society.
