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
# # Lecture 6: autoregressive flows, neural splines and a transformer flow
#
# Lectures 3 to 5 built every layer from one structure, the *coupling*: half of the
# coordinates stay, the other half is moved by an affine map whose parameters depend on the
# half that stayed. This lecture takes the structure apart and puts it back together in its
# general form, and changes the one-dimensional map that does the moving:
#
# 1. the **chain rule of probability** turns any density into a product of one-dimensional
#    conditionals; models that learn those conditionals (NADE, MADE, PixelCNN, WaveNet) are
#    *autoregressive*, and with an invertible map per coordinate they become flows;
# 2. **MADE** computes all the conditionals in one pass of one network, by cutting
#    connections with masks built from *degrees*: you derive the masks;
# 3. **MAF and IAF** are the same layer run in the two directions: density in one pass and
#    sampling in $d$ passes, or the other way round; you write the sampling loop, time both
#    against the dimension, and hunt a bug that lets a model "beat" the true density;
# 4. a **coupling** is an autoregressive layer with only two blocks;
# 5. the **rational-quadratic spline** is a one-dimensional map that bends instead of only
#    stretching and shifting; you derive its derivative, and move its knots in a widget;
# 6. on the 2D toys, RealNVP, MAF and a neural spline flow at equal size and equal training,
#    compared by their exact KL divergence; then you design a flow under a budget;
# 7. a **transformer autoregressive flow** on image patches, in the spirit of TarFlow (Zhai et
#    al., 2024), trained here on the 8x8 digits, and a larger one trained beforehand on MNIST.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ (the
# normalizing direction), $p_Z$ the base density (a standard normal) and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f / \partial x\right|$. Inside one layer,
# $z_i = \tau(x_i; h_i)$: the *transformer* $\tau$ is an invertible map of one coordinate and
# $h_i$ its parameters, computed by a *conditioner* network (the vocabulary of Papamakarios et
# al., 2021, sections 3 and 4, and of `flowlib.transformers`).

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. With the environment variable `CI` set, every cell
# still runs, with the shortest training that exercises it; on a GPU the models train longer.
# Model sizes are the same in every mode, and so is the budget of Exercise 6.

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: train at full size (change to True/False to override)
TOY_STEPS = 40 if SMOKE else (5000 if FULL else 1000)  # steps per model per 2D toy (section 6)
DIGITS_STEPS = 20 if SMOKE else (4000 if FULL else 500)  # steps of the transformer flow on the digits (section 7)
MNIST_CHECK = 1000  # MNIST test images that score the shipped transformer flow (section 7)
KL_SAMPLES = 5_000 if SMOKE else 50_000  # Monte Carlo samples of each KL estimate (section 6)
GRID = 60 if SMOKE else 150  # resolution of the density pictures
TIMING_DIMS = (2, 4, 8, 16, 32, 64)  # dimensions timed in section 3 (a second in all; the same in every mode)
MNIST_DOWNLOAD = not SMOKE  # may load_mnist fetch MNIST from the internet when no local copy exists?
# Small networks: on a shared 2-core machine (Binder) one thread is fastest, because threads
# that compete for the cores cost more than they bring.
torch.set_num_threads(1)

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
from torch import Tensor, nn

from flowlib.autoregressive import (
    MADE,
    InverseAutoregressive,
    MaskedAutoregressive,
    MaskedLinear,
    made_degrees,
)
from flowlib.core import Compose, FlowModel
from flowlib.coupling import AffineCoupling, half_mask
from flowlib.data import DIGITS_GREY_LEVELS, MNIST_GREY_LEVELS, DatasetError, get_toy, load_digits, load_mnist
from flowlib.grading import (
    autograd_logabsdet,
    check_choice,
    check_close,
    check_own_work,
    check_vectorised,
    hint,
    torch_calls,
    yours_or_reference,
)
from flowlib.image_models import count_parameters
from flowlib.metrics import kl_divergence, mean_bits_per_dim
from flowlib.models import maf, nsf, realnvp_vector
from flowlib.nets import MLP
from flowlib.pretrained import checkpoint_info, load_pretrained, shipped_checkpoints
from flowlib.splines import RationalQuadraticSpline
from flowlib.tarflow import tarflow_image
from flowlib.train import fit
from flowlib.transformers import Affine, Transformer
from flowlib.viz import image_grid, plot_density_2d
from flowlib.widgets import SplineKnots

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})
T_START = time.perf_counter()


def randomise_last_layer(made: MADE, scale: float = 0.5, seed: int = 0) -> MADE:
    """A MADE whose zero-initialised last layer gets random weights, so that its layer moves."""
    g = torch.Generator().manual_seed(seed)
    last = made.net[-1]
    with torch.no_grad():
        last.weight.copy_(scale * torch.randn(last.weight.shape, generator=g, dtype=last.weight.dtype))
        last.bias.copy_(scale * torch.randn(last.bias.shape, generator=g, dtype=last.bias.dtype))
    return made


# %% [markdown]
# ## 1. Autoregressive models: the chain rule as a model
#
# Every density on $\mathbb{R}^d$ factorises, in any order of the coordinates, into
# one-dimensional conditionals:
# $$p(x) = p(x_1)\,p(x_2 \mid x_1)\,p(x_3 \mid x_1, x_2)\cdots p(x_d \mid x_{<d})
#        = \prod_{i=1}^d p(x_i \mid x_{<i}).$$
# This is not an assumption: it is the definition of conditional densities applied $d - 1$
# times. An **autoregressive model** learns each factor, usually with one network that reads
# $x_{<i}$ and returns the parameters of the $i$-th conditional. Two kinds of models live on
# this idea:
#
# * **Density estimators for vectors.** NADE (Larochelle & Murray, 2011) computes the
#   conditionals of binary vectors with hidden units shared between them; RNADE (Uria, Murray &
#   Larochelle, 2013) does the same for real-valued data with mixture-of-Gaussians
#   conditionals; MADE (Germain et al., 2015) gets all $d$ conditionals from **one** pass of an
#   ordinary MLP whose weights are masked (section 2).
# * **Their discrete cousins for images and sound.** PixelCNN (van den Oord, Kalchbrenner &
#   Kavukcuoglu, 2016) gives each pixel a 256-way softmax over its grey levels, conditioned on
#   the pixels above and to the left through masked convolutions; WaveNet (van den Oord et al.,
#   2016) does the same for audio samples with dilated causal convolutions. They model
#   *discrete* values with categorical conditionals, so they are not flows; but they have the
#   trade-off of every model in this lecture: the likelihood of a given image is one parallel
#   pass, a sample takes one pass per pixel.
#
# The order of the coordinates is a choice, and it matters: the same density can have simple
# conditionals in one order and complicated ones in another. MADE can be trained with many
# orders at once (Germain et al., 2015); MAF changes the order from one layer to the next
# (Papamakarios et al., 2017).
#
# **From conditionals to a flow.** Suppose each conditional is Gaussian,
# $p(x_i \mid x_{<i}) = \mathcal N\big(x_i;\ \mu_i(x_{<i}),\ e^{-2 s_i(x_{<i})}\big)$. Then
# $z_i = (x_i - \mu_i)\,e^{s_i}$ is a standard normal variable independent of $x_{<i}$: the
# model is a flow with $z = f(x)$, coordinate by coordinate,
# $$z_i = \tau(x_i; h_i), \qquad h_i = h_i(x_{<i}) = (s_i, t_i), \qquad
#   \tau(x_i; s_i, t_i) = x_i\, e^{s_i} + t_i, \qquad t_i = -\mu_i\, e^{s_i} .$$
# Because $z_i$ depends on $x_1, \dots, x_i$ only, the Jacobian $\partial z / \partial x$ is
# lower triangular, its diagonal holds $\partial z_i / \partial x_i = \tau'(x_i; h_i)$, and
# $$\log p_X(x) = \log p_Z(z) + \sum_{i=1}^d \log\left|\tau'(x_i; h_i(x_{<i}))\right| .$$
# This is the observation behind MAF (Papamakarios, Pavlakou & Murray, 2017). Nothing needs
# $\tau$ to be affine: any invertible one-dimensional map with parameters $h_i$ will do
# (section 5 uses splines), and nothing needs the conditioner $h_i(x_{<i})$ to be invertible.

# %% [markdown]
# ## 2. MADE: all the conditionals in one pass
#
# Computing $h_i(x_{<i})$ with a separate network for each $i$ costs $d$ networks. MADE
# (Germain et al., 2015) uses one MLP and removes the connections that would let an output see
# an input it must not see. Each weight matrix $W$ of the MLP is multiplied elementwise by a
# binary **mask** $M$ of the same shape ($M_{kj} = 1$: unit $k$ of the layer above reads unit
# $j$ of the layer below), and the masks come from **degrees**, one integer per unit:
#
# * input $x_j$ has the degree $m(j) \in \{1, \dots, D\}$: its place in the order
#   ($m(j) = 1$ for the coordinate that comes first);
# * a hidden unit $k$ has a degree $m(k) \in \{1, \dots, D - 1\}$, which means: *unit $k$ may
#   depend on the inputs of degree at most $m(k)$, and on no other input*;
# * an output that holds a parameter of coordinate $i$ has the degree $m(i)$ of that
#   coordinate, and may depend only on the inputs of degree **strictly below** $m(i)$.
#
# Usually the degrees of the inputs are $1, \dots, d$ (so $D = d$), but nothing forbids equal
# degrees (section 4 uses only two). The output stacks the parameters of all coordinates in
# flowlib's layout: `params` groups of $d$ numbers, one group after the other (for the affine
# transformer, first the $d$ log-scales, then the $d$ shifts).
#
# ### Exercise 1: MADE's masks from degrees (a derivation)
#
# Derive, for each kind of layer (inputs to the first hidden layer, hidden to hidden, the last
# hidden layer to the outputs), which connections must be cut so that the meaning of every
# degree holds, and keep **every other** connection: each connection kept is a path along which
# the network can learn something. Then write `made_masks`:
#
# * `input_degrees`: an int64 tensor of shape `(d,)`; `hidden_degrees`: a list with one int64
#   tensor per hidden layer, of shape `(width,)`; `params`: the number of parameter groups;
# * return the list of the masks, one per layer, as boolean tensors of shapes
#   `(width_1, d)`, `(width_2, width_1)`, ..., `(params * d, width_L)`;
# * compare whole vectors of degrees at once (broadcasting), without a Python loop over the
#   units, and without flowlib (its `MADE` builds such masks: the test refuses it).
#
# The test builds an MLP with your masks and random weights and reads off, with automatic
# differentiation, which outputs depend on which inputs: when every hidden layer holds every
# degree $1, \dots, D - 1$, the parameters of coordinate $i$ must depend on $x_j$ exactly when
# $m(j) < m(i)$. Your masks are used again: to draw the masks below, to build the MAF that
# trains on the toys in section 6, and to repair the bug of Exercise 3.

# %% nbgrader={"grade": false, "grade_id": "06-ex1-made-masks", "locked": false, "schema_version": 3, "solution": true, "task": false}
def made_masks(input_degrees: Tensor, hidden_degrees: list[Tensor], params: int) -> list[Tensor]:
    """MADE's masks (out, in), one per layer, from the degrees of the inputs and of each hidden layer."""
    ### BEGIN SOLUTION
    # A hidden unit of degree m may read any unit of degree <= m: everything that unit depends on
    # has degree <= its own, hence <= m. An output of degree m(i) must not see inputs of degree
    # m(i) itself, so it reads only hidden units of degree < m(i).
    masks = []
    below = input_degrees
    for above in hidden_degrees:
        masks.append(above[:, None] >= below[None, :])
        below = above
    outputs = input_degrees.repeat(params)
    masks.append(outputs[:, None] > below[None, :])
    return masks
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex1-made-masks-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_1 = ("A hidden unit of degree m may depend on inputs of degree <= m; what the units it reads depend on, "
          "it depends on too. An output of degree m(i) must not depend on x_i itself. Compare the degree "
          "vectors with broadcasting: degrees_above[:, None] against degrees_below[None, :].")


def _as_masks(masks: object, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """The student's masks as boolean tensors of the expected shapes (a hint if not)."""
    assert isinstance(masks, (list, tuple)) and len(masks) == len(shapes), (
        f"Return a list of {len(shapes)} masks (one per layer), got {type(masks).__name__}"
        f"{' of length ' + str(len(masks)) if isinstance(masks, (list, tuple)) else ''}. {HINT_1}")
    out = []
    for k, (mask, shape) in enumerate(zip(masks, shapes, strict=True)):
        assert isinstance(mask, Tensor) and tuple(mask.shape) == shape, (
            f"Mask {k} should be a tensor of shape {shape}, got {getattr(mask, 'shape', type(mask).__name__)}. "
            f"{HINT_1}")
        values = mask.detach().to(torch.float64)
        assert bool(((values == 0) | (values == 1)).all()), f"Mask {k} should hold only 0/1 (or False/True)."
        out.append(values.bool())
    return out


def _dependence_of(masks: list[Tensor], d: int, seed: int) -> Tensor:
    """(outputs, d): does each output of a tanh MLP with these masks and random weights depend on x_j?"""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(m.shape, generator=g, dtype=torch.float64) * m for m in masks]

    def net(x: Tensor) -> Tensor:
        for k, w in enumerate(weights):
            x = x @ w.T
            x = torch.tanh(x + 0.3) if k < len(weights) - 1 else x
        return x

    x = torch.randn(d, generator=g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(net, x)
    return jac.abs() > 1e-12


def _check_masks(input_degrees: Tensor, hidden_degrees: list[Tensor], params: int, seed: int) -> list[Tensor]:
    d = len(input_degrees)
    shapes = [(len(h), len(b)) for h, b in zip(hidden_degrees, [input_degrees, *hidden_degrees[:-1]], strict=True)]
    shapes.append((params * d, len(hidden_degrees[-1])))
    with hint(HINT_1):
        masks = _as_masks(made_masks(input_degrees, hidden_degrees, params), shapes)
        seen = _dependence_of(masks, d, seed)
    out_degrees = input_degrees.repeat(params)
    allowed = out_degrees[:, None] > input_degrees[None, :]
    leaks = seen & ~allowed
    if bool(leaks.any()):
        k, j = (int(v) for v in leaks.nonzero()[0])
        raise AssertionError(f"With input degrees {input_degrees.tolist()}: output {k} (a parameter of coordinate "
                             f"{k % d}, degree {int(out_degrees[k])}) depends on x_{j} (degree "
                             f"{int(input_degrees[j])}). {HINT_1}")
    missing = allowed & ~seen
    if bool(missing.any()):
        k, j = (int(v) for v in missing.nonzero()[0])
        raise AssertionError(f"With input degrees {input_degrees.tolist()}: output {k} (degree {int(out_degrees[k])}) "
                             f"should be able to depend on x_{j} (degree {int(input_degrees[j])}), but no path "
                             f"of your masks connects them. Keep every connection the degrees allow. {HINT_1}")
    return masks


# By hand: d = 3 in the order x_2, x_0, x_1 (degrees 2, 3, 1), one hidden layer with degrees 1, 2, 1, 2.
_masks = _check_masks(torch.tensor([2, 3, 1]), [torch.tensor([1, 2, 1, 2])], params=2, seed=0)
_by_hand = [torch.tensor([[0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]]).bool(),
            torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]] * 2).bool()]
for _k, (_mine, _hand) in enumerate(zip(_masks, _by_hand, strict=True)):
    assert torch.equal(_mine, _hand), f"Mask {_k} differs from the one worked out by hand:\n{_mine.int()}\n{HINT_1}"
# Two hidden layers, another order, three parameter groups.
_check_masks(torch.tensor([3, 1, 4, 2]), [torch.tensor([1, 2, 3, 1, 2, 3, 2]), torch.tensor([3, 2, 1, 1, 2])],
             params=3, seed=1)
with hint(HINT_1):
    _small = torch_calls(made_masks, torch.tensor([2, 1, 3]), [torch.tensor([1, 2] * 3)] * 2, 2)
    _large = torch_calls(made_masks, torch.tensor([2, 1, 3]), [torch.tensor([1, 2] * 20)] * 2, 2)
    assert _small == _large, ("Your masks take more torch operations for wider layers: is there a Python loop over "
                              "the units? Compare whole degree vectors at once.")
    check_own_work(made_masks, torch.tensor([2, 1, 3]), [torch.tensor([1, 2])], 2,
                   message="Build the masks from the degrees yourself, with torch comparisons (not flowlib's MADE).")
### BEGIN HIDDEN TESTS
for _seed in range(100, 106):
    _g = torch.Generator().manual_seed(_seed)
    _d = int(torch.randint(1, 8, (1,), generator=_g))
    _inputs = torch.randperm(_d, generator=_g) + 1
    _top = max(_d - 1, 1)
    _hidden = []
    for _ in range(int(torch.randint(1, 4, (1,), generator=_g))):
        _extra = torch.randint(1, _top + 1, (int(torch.randint(0, 6, (1,), generator=_g)),), generator=_g)
        _layer = torch.cat([torch.arange(1, _top + 1), _extra])
        _hidden.append(_layer[torch.randperm(len(_layer), generator=_g)])
    _params = int(torch.randint(1, 4, (1,), generator=_g))
    _masks = _check_masks(_inputs, _hidden, _params, _seed)
    _expected, _below = [], _inputs
    for _above in _hidden:
        _expected.append(_above[:, None] >= _below[None, :])
        _below = _above
    _expected.append(_inputs.repeat(_params)[:, None] > _below[None, :])
    for _k, (_mine, _want) in enumerate(zip(_masks, _expected, strict=True)):
        assert torch.equal(_mine, _want), (f"With degrees {_inputs.tolist()}, mask {_k} cuts a connection that the "
                                           f"degrees allow. {HINT_1}")
# Two blocks of equal degrees (section 4) and a single coordinate.
_check_masks(torch.tensor([1, 1, 1, 2, 2]), [torch.ones(6, dtype=torch.long)], params=2, seed=7)
_check_masks(torch.tensor([1]), [torch.ones(3, dtype=torch.long)], params=2, seed=8)
### END HIDDEN TESTS
print("ex1 passed")

# %% [markdown]
# Below, MADE for $d = 4$ in the order $x_2, x_0, x_3, x_1$, two hidden layers of 6 units,
# with **your** masks (flowlib's `made_degrees` chooses the hidden degrees: they cycle through
# $1, \dots, d - 1$). On the left the network: each unit is labelled with its degree, each line
# a connection the masks keep (one parameter group drawn). Next to it the product of the
# masks, which says along which paths each output can see each input, and the dependence of a
# MADE with random weights read off by automatic differentiation. Both must be strictly lower
# triangular once rows and columns are sorted by the order. Below them, the three masks
# themselves, rows and columns labelled with the degrees.

# %%
def flowlib_made_on(input_degrees: Tensor, hidden_degrees: list[Tensor], params: int) -> MADE:
    """flowlib's MADE built on the given degrees instead of those it would choose."""
    return MADE(len(input_degrees), params, degrees=[input_degrees, *hidden_degrees])


def flowlib_masks(input_degrees: Tensor, hidden_degrees: list[Tensor], params: int) -> list[Tensor]:
    """The masks of flowlib's MADE for these degrees (used while Exercise 1 is not done)."""
    made = flowlib_made_on(input_degrees, hidden_degrees, params)
    return [m.mask.bool() for m in made.net if isinstance(m, MaskedLinear)]


masks_for = yours_or_reference(made_masks, flowlib_masks, "Exercise 1")


def install_masks(made: MADE, masks: list[Tensor]) -> MADE:
    """Replace the masks of a flowlib MADE by ``masks`` (same shapes); returns the MADE."""
    layers = [m for m in made.net if isinstance(m, MaskedLinear)]
    with torch.no_grad():
        for layer, mask in zip(layers, masks, strict=True):
            layer.mask.copy_(mask.to(layer.mask.dtype).reshape(layer.mask.shape))
    return made


def made_with_your_masks(features: int, params: int, hidden: int, layers: int, order=None,
                         activation=nn.ReLU) -> MADE:
    """flowlib's MADE with the masks of made_masks (Exercise 1) for its degrees."""
    made = MADE(features, params, hidden=hidden, layers=layers, order=order, activation=activation)
    degrees = made_degrees(made.order, [hidden] * layers)
    return install_masks(made, masks_for(degrees[0], degrees[1:], params))


order_demo = [2, 0, 3, 1]
degrees_demo = made_degrees(torch.tensor(order_demo), [6, 6])
masks_demo = masks_for(degrees_demo[0], degrees_demo[1:], 1)
# tanh units: none is switched off at the point where the dependence is read.
made_demo = randomise_last_layer(made_with_your_masks(4, 1, hidden=6, layers=2, order=order_demo,
                                                      activation=nn.Tanh), seed=1).double()

fig, (ax_net, ax_prod, ax_grad) = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1]})
columns = [degrees_demo[0], degrees_demo[1], degrees_demo[2], degrees_demo[0]]
names = ["inputs x", "hidden 1", "hidden 2", "outputs h"]
positions = []
for deg in columns:
    positions.append(np.linspace(0, 1, len(deg)) if len(deg) > 1 else np.array([0.5]))
for level, mask in enumerate(masks_demo):
    for k, j in mask.nonzero().tolist():
        ax_net.plot([level, level + 1], [positions[level][j], positions[level + 1][k]], color="C0", lw=0.6, alpha=0.5)
for level, deg in enumerate(columns):
    ax_net.scatter(np.full(len(deg), level), positions[level], s=260, color="w", edgecolors="k", zorder=3)
    for y, m in zip(positions[level], deg.tolist(), strict=True):
        ax_net.text(level, y, str(m), ha="center", va="center", fontsize=9, zorder=4)
    ax_net.text(level, 1.12, names[level], ha="center", fontsize=9)
for j, y in enumerate(positions[0]):
    ax_net.text(-0.18, y, f"$x_{j}$", ha="right", va="center", fontsize=9)
    ax_net.text(3.18, y, f"$h_{j}$", ha="left", va="center", fontsize=9)
ax_net.set(xlim=(-0.5, 3.5), ylim=(-0.1, 1.2))
ax_net.axis("off")
ax_net.set_title("MADE, order $x_2, x_0, x_3, x_1$: unit degrees and kept connections", fontsize=9)

reach = masks_demo[0].double()
for mask in masks_demo[1:]:
    reach = mask.double() @ reach
x_point = torch.randn(4, dtype=torch.float64)
jac_made = torch.autograd.functional.jacobian(lambda v: made_demo(v.unsqueeze(0))[0], x_point)
for ax, matrix, title in [(ax_prod, reach, "paths: product of the masks"),
                          (ax_grad, jac_made.abs() > 1e-12, "autograd: $\\partial h_i / \\partial x_j \\neq 0$")]:
    ax.imshow((matrix > 0).numpy(), cmap="Blues", vmin=0, vmax=1.3)
    ax.set(xticks=range(4), yticks=range(4), xlabel="input $x_j$", ylabel="output $h_i$", title=title)
    ax.title.set_fontsize(9)
plt.show()

fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), gridspec_kw={"width_ratios": [4, 6, 6]})
for ax, mask, below, above, title in zip(axes, masks_demo, columns[:-1], columns[1:],
                                         ["inputs -> hidden 1", "hidden 1 -> hidden 2", "hidden 2 -> outputs"],
                                         strict=True):
    ax.imshow(mask.numpy(), cmap="Blues", vmin=0, vmax=1.3)
    ax.set_xticks(range(len(below)), [str(m) for m in below.tolist()])
    ax.set_yticks(range(len(above)), [str(m) for m in above.tolist()])
    ax.set(xlabel="degree of the unit read", ylabel="degree of the reading unit", title=f"mask {title}")
    ax.title.set_fontsize(9)
plt.show()

rank = torch.empty(4, dtype=torch.long)
rank[torch.tensor(order_demo)] = torch.arange(4)  # rank[i]: the place of x_i in the order
strictly_before = rank[None, :] < rank[:, None]
print("paths exactly where the order allows (x_j before x_i):", torch.equal(reach > 0, strictly_before))
print("autograd dependence the same:", torch.equal(jac_made.abs() > 1e-12, strictly_before))

# %% [markdown]
# With the masks, one MADE pass gives every $h_i(x_{<i})$ at once, and a MAF layer
# $z_i = \tau(x_i; h_i)$ has a triangular Jacobian *in the order*: sort its rows and columns by
# the order and the entries above the diagonal vanish; the diagonal holds
# $\tau'(x_i; h_i) = e^{s_i}$, whose logs add up to the layer's log-determinant. Automatic
# differentiation checks all three on a random layer.

# %%
maf_demo = MaskedAutoregressive(
    randomise_last_layer(made_with_your_masks(4, Affine.params, hidden=6, layers=2, order=order_demo), seed=2),
    Affine(clamp=None)).double()
x_point = torch.randn(1, 4, dtype=torch.float64)
jac_layer = torch.autograd.functional.jacobian(lambda v: maf_demo(v.unsqueeze(0))[0][0], x_point[0])
sorted_jac = jac_layer[order_demo][:, order_demo]
with torch.no_grad():
    scales = maf_demo.transformer.scale_shift(x_point, maf_demo.conditioner(x_point))[0][0]
    logdet_layer = maf_demo(x_point)[1]
print(np.round(sorted_jac.numpy(), 3))
print("upper triangle zero in the order:", bool((sorted_jac.triu(1).abs() < 1e-12).all()))
print("diagonal = exp(s_i):", torch.allclose(torch.diagonal(jac_layer), scales.exp()))
print("log|det| by autograd = the layer's logdet:",
      torch.allclose(torch.linalg.slogdet(jac_layer)[1], logdet_layer[0]))

# %% [markdown]
# ## 3. MAF and IAF: one pass one way, $d$ passes the other
#
# **MAF** (Papamakarios, Pavlakou & Murray, 2017) puts the *data* on MADE's input side:
# $z = \tau(x;\ \mathrm{MADE}(x))$. The density direction $x \mapsto z$ is one pass: all the
# $h_i(x_{<i})$ come out of one MADE call, and every coordinate is moved at once. Sampling goes
# the other way: given $z$, find the $x$ with $\tau(x_i; h_i(x_{<i})) = z_i$ for every $i$. The
# first coordinate in the order needs nothing ($h$ of the first coordinate depends on no input),
# the second needs the first, and so on: $x$ is found coordinate by coordinate, one MADE pass
# each.
#
# ### Exercise 2: the sampling loop of MAF (implementation used later)
#
# Write `autoregressive_inverse(conditioner, transformer, z)`, which returns $x$ and
# $\log\left|\det \partial x / \partial z\right|$ (shape `(n,)`) for one MAF layer:
#
# * `conditioner(x)` is a MADE: it maps a batch `(n, d)` to the parameters `(n, params * d)`,
#   and output $i$ depends only on the coordinates before $i$ in **its** order (which you do not
#   need to know);
# * `transformer` is a flowlib transformer (affine or spline): `transformer.inverse(z, h)`
#   returns $x_i = \tau^{-1}(z_i; h_i)$ for every coordinate at once, with
#   $\log|\partial x_i / \partial z_i|$ elementwise, both of shape `(n, d)`;
# * use **at most $d$ calls** of the conditioner, each on the whole batch (no loop over the
#   points), and not flowlib's `MaskedAutoregressive.inverse` (the test refuses it).
#
# Think first: start from any guess of $x$ (zeros), call the conditioner on it and invert every
# coordinate with the parameters it gives. Which coordinates of the result are exact, whatever
# the guess? What is exact after the second pass? From which pass must the log-derivatives
# come? The test checks the round trip through the layer's one-pass forward, your
# log-determinant against automatic differentiation of your own map, and counts the calls.
# Your loop draws the samples of the MAFs of section 6 and is timed below.

# %% nbgrader={"grade": false, "grade_id": "06-ex2-autoregressive-inverse", "locked": false, "schema_version": 3, "solution": true, "task": false}
def autoregressive_inverse(conditioner: nn.Module, transformer: Transformer, z: Tensor) -> tuple[Tensor, Tensor]:
    """x with tau(x; conditioner(x)) = z, and log|det dx/dz| of shape (n,); at most d conditioner calls."""
    ### BEGIN SOLUTION
    # After pass k the first k coordinates in the order are exact (their parameters only read
    # coordinates that were already exact), so d passes make all of them exact; the last pass's
    # parameters are then all exact, and so are its log-derivatives.
    x = torch.zeros_like(z)
    for _ in range(z.shape[1]):
        x, log_derivative = transformer.inverse(z, conditioner(x))
    return x, log_derivative.sum(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex2-autoregressive-inverse-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_2 = ("Start from x = zeros, and repeat d times: x, log_derivative = transformer.inverse(z, conditioner(x)). "
          "After pass k, the first k coordinates in the order are exact. The log-determinant is the sum over the "
          "coordinates of the LAST pass's log-derivatives.")
_OWN_2 = ("flowlib.autoregressive.MADE", "flowlib.autoregressive.MaskedLinear", "flowlib.transformers",
          "flowlib.splines", "flowlib.core.sum_except_batch")


class _Counted(nn.Module):
    """A conditioner that counts its calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.net(x) if context is None else self.net(x, context)


def _layer(d: int, transformer: Transformer, order, seed: int) -> MaskedAutoregressive:
    torch.manual_seed(seed)
    made = randomise_last_layer(MADE(d, transformer.params, hidden=12, layers=2, order=order), scale=0.4, seed=seed)
    return MaskedAutoregressive(made, transformer).double()


def _check_inverse(layer: MaskedAutoregressive, n: int, seed: int) -> None:
    d = layer.conditioner.features
    z = 1.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    counted = _Counted(layer.conditioner)
    with hint(HINT_2), torch.no_grad():
        answer = autoregressive_inverse(counted, layer.transformer, z)
        assert isinstance(answer, tuple) and len(answer) == 2, "Return a pair (x, logdet)."
        x, logdet = answer
        assert isinstance(x, Tensor) and x.shape == z.shape, (
            f"x must have the shape of z, {tuple(z.shape)}; got {getattr(x, 'shape', type(x).__name__)}. {HINT_2}")
        assert counted.calls <= d, f"Your loop called the conditioner {counted.calls} times for d = {d}. {HINT_2}"
        back = layer(x)[0]
    check_close(back, z, f"The layer's forward pass does not map your x back to z (d = {d}). {HINT_2}", atol=1e-8)
    with hint(HINT_2):
        expected = autograd_logabsdet(lambda v: autoregressive_inverse(layer.conditioner, layer.transformer, v)[0],
                                      z)
    check_close(logdet, expected, f"Your log|det dx/dz| is off (d = {d}). {HINT_2}", atol=1e-8)


_check_inverse(_layer(4, Affine(clamp=None), [2, 0, 3, 1], seed=1), n=16, seed=1)
_check_inverse(_layer(3, RationalQuadraticSpline(bins=5, bound=3.0), None, seed=2), n=16, seed=2)
_affine_layer = _layer(5, Affine(), None, seed=3)
with hint(HINT_2):
    check_vectorised(autoregressive_inverse,
                     lambda n: (_affine_layer.conditioner, _affine_layer.transformer,
                                torch.randn(n, 5, dtype=torch.float64)),
                     "One pass of the conditioner for the whole batch each time: loop over passes, not over points.")
    check_own_work(autoregressive_inverse, _affine_layer.conditioner, _affine_layer.transformer,
                   torch.randn(3, 5, dtype=torch.float64), allowed=_OWN_2,
                   message="Write the loop yourself (not MaskedAutoregressive.inverse).")
### BEGIN HIDDEN TESTS
for _seed, _d, _order, _tau in [(200, 1, None, Affine()), (201, 7, [6, 2, 4, 0, 1, 5, 3], Affine(clamp=None)),
                                (202, 6, [5, 4, 3, 2, 1, 0], RationalQuadraticSpline(bins=4, bound=2.0)),
                                (203, 2, [1, 0], RationalQuadraticSpline(bins=8, bound=4.0))]:
    _check_inverse(_layer(_d, _tau, _order, seed=_seed), n=[1, 9, 33, 64][_seed - 200], seed=_seed)
### END HIDDEN TESTS
print("ex2 passed")

# %% [markdown]
# **IAF** (Kingma et al., 2016) is the same layer with the roles of $x$ and $z$ swapped: MADE
# reads the *noise*, $x = \tau(z;\ \mathrm{MADE}(z))$. Now sampling is one pass and the density
# of a given $x$ needs $d$ passes. flowlib's `InverseAutoregressive` is exactly
# `MaskedAutoregressive` run the other way round.
#
# The costs, measured: one layer of each kind (a MADE with two hidden layers of 64 units) on a
# batch of 256 points, for growing $d$, each direction timed several times (the fastest of a few
# short runs, to keep other programs on the machine out of the figure). MAF's sampling uses
# **your** loop of Exercise 2.

# %%
class CountedMADE(nn.Module):
    """A MADE that counts how often it is called (to count the passes of each direction)."""

    def __init__(self, made: MADE) -> None:
        super().__init__()
        self.made, self.calls = made, 0
        self.features, self.params = made.features, made.params

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.made(x, context)


def reference_inverse(conditioner: nn.Module, transformer: Transformer, z: Tensor) -> tuple[Tensor, Tensor]:
    """flowlib's MAF sampling (used while Exercise 2 is not done)."""
    made = conditioner.made if isinstance(conditioner, CountedMADE) else conditioner
    layer = MaskedAutoregressive(made, transformer)
    if isinstance(conditioner, CountedMADE):  # count flowlib's passes too
        conditioner.calls += made.features
    return layer.inverse(z)


maf_inverse = yours_or_reference(autoregressive_inverse, reference_inverse, "Exercise 2")


def fastest(fn, repeats: int = 5, number: int = 3) -> float:
    """The fastest of ``repeats`` timings of ``number`` calls of fn, in seconds per call."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def time_one_dimension(d: int) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds per call and conditioner passes of each direction of a MAF and an IAF layer in d dimensions."""
    torch.manual_seed(d)
    made_maf = CountedMADE(randomise_last_layer(MADE(d, 2, hidden=64, layers=2), scale=0.1))
    iaf_made = CountedMADE(randomise_last_layer(MADE(d, 2, hidden=64, layers=2), scale=0.1))
    iaf_layer = InverseAutoregressive(iaf_made.made, Affine())
    iaf_layer.conditioner = iaf_made  # the layer's passes are counted by its conditioner
    x_batch = torch.randn(256, d)
    runs = {
        "MAF density": (made_maf, lambda: Affine()(x_batch, made_maf(x_batch))),
        "MAF sampling": (made_maf, lambda: maf_inverse(made_maf, Affine(), x_batch)),
        "IAF sampling": (iaf_made, lambda: iaf_layer.inverse(x_batch)),
        "IAF density": (iaf_made, lambda: iaf_layer(x_batch)),
    }
    seconds, counts = {}, {}
    with torch.no_grad():
        for key, (counter, run) in runs.items():
            counter.calls = 0
            run()
            counts[key] = counter.calls
            seconds[key] = fastest(run)
    return seconds, counts


timings: dict[str, list[float]] = {"MAF density": [], "MAF sampling": [], "IAF sampling": [], "IAF density": []}
passes: dict[str, list[int]] = {key: [] for key in timings}
for d in TIMING_DIMS:
    seconds, counts = time_one_dimension(d)
    for key in timings:
        timings[key].append(seconds[key])
        passes[key].append(counts[key])

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6.5, 3.8))
styles = {"MAF density": ("C0", "-"), "MAF sampling": ("C0", "--"), "IAF sampling": ("C3", "-"),
          "IAF density": ("C3", "--")}
for key, seconds in timings.items():
    colour, line = styles[key]
    ax.plot(TIMING_DIMS, 1e3 * np.array(seconds), marker="o" if key.startswith("MAF") else "x", ms=6,
            color=colour, ls=line, lw=2.5 if key.startswith("MAF") else 1.2, label=key)
ax.set(xscale="log", yscale="log", xlabel="dimension d", ylabel="ms per call (batch of 256)",
       title="one layer: one pass one way, d passes the other")
ax.set_xticks(TIMING_DIMS, [str(d) for d in TIMING_DIMS])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.legend(frameon=False, fontsize=8)
plt.show()
for key, seconds in timings.items():
    print(f"{key:>13}: " + ", ".join(f"d={d}: {1e3 * s:.2f} ms" for d, s in zip(TIMING_DIMS, seconds, strict=True)))

# %%
for key, counts in passes.items():
    print(f"{key:>13}: conditioner passes {counts} for d = {list(TIMING_DIMS)}")
print("MAF sampling slower than MAF density at the largest d:", timings["MAF sampling"][-1] > timings["MAF density"][-1])

# %% [markdown]
# The counts are the whole story: the one-pass directions call MADE once whatever $d$, the
# sequential ones $d$ times, so their cost grows about linearly with $d$ while the one-pass cost
# barely moves at these sizes (the timings above). Which way round to build the layer depends
# on which direction the job needs often:
#
# * **Density estimation** (fit data by maximum likelihood, then score new points): every
#   training step evaluates $\log p_X$ of a batch of data. MAF does that in one pass; its slow
#   sampling is paid only when samples are wanted.
# * **Fast sampling and variational inference**: a variational posterior $q(z \mid x)$ in a VAE
#   is trained on its *own samples*, and needs their log-density; IAF gives both in one pass
#   (Kingma et al., 2016), and never needs the density of a point it did not draw.
# * **Both, by distillation**: WaveNet is trained by maximum likelihood (fast, parallel) but
#   samples one audio sample at a time. Parallel WaveNet (van den Oord et al., 2018) trains an
#   IAF *student* to match a trained WaveNet *teacher*: the student draws samples in one
#   parallel pass, and the main loss, a KL divergence from the student to the teacher, needs
#   only the student's density of its own samples (one pass of an IAF) and the teacher's density
#   of those samples (one parallel pass of WaveNet). The student then generates speech in
#   parallel.
#
# ### Exercise 3: a bug hunt, a MAF that beats the truth
#
# A colleague wrote a first draft of MADE's masks, one rule for every layer, and trained a small
# MAF with it on the two moons, whose true density we know. Its negative log-likelihood ends up
# **below** that of the true density, on the training points and on held-out ones:

# %%
def draft_masks(input_degrees: Tensor, hidden_degrees: list[Tensor], params: int) -> list[Tensor]:
    """A colleague's first draft of MADE's masks: one rule for every layer."""
    degrees = [input_degrees, *hidden_degrees, input_degrees.repeat(params)]
    return [after[:, None] >= before[None, :] for before, after in zip(degrees[:-1], degrees[1:], strict=True)]


def maf_with_masks(mask_fn, dim: int = 2, layers: int = 5, hidden: int = 32, seed: int = 0) -> FlowModel:
    """flowlib's maf(dim, ...) with the masks of every MADE replaced by mask_fn's."""
    torch.manual_seed(seed)
    model = maf(dim, layers=layers, hidden=hidden, made_layers=2)
    for layer in model.flow:
        if isinstance(layer, MaskedAutoregressive):
            made = layer.conditioner
            degrees = made_degrees(made.order, [hidden, hidden])
            install_masks(made, mask_fn(degrees[0], degrees[1:], made.params))
    return model


moons = get_toy("two_moons")
x_moons = moons.sample(20_000, generator=torch.Generator().manual_seed(1))
x_moons_heldout = moons.sample(20_000, generator=torch.Generator().manual_seed(2))
log_p_truth = moons.log_prob(x_moons_heldout)
nll_truth = float(-log_p_truth.mean())
nll_truth_stderr = float(log_p_truth.std() / math.sqrt(len(log_p_truth)))

# %% tags=["nbval-ignore-output"]
draft_model = maf_with_masks(draft_masks)
fit(draft_model, x_moons, steps=400, batch_size=256, lr=5e-3, seed=0, device="cpu")
with torch.no_grad():
    nll_draft_train = float(-draft_model.log_prob(x_moons).mean())
    nll_draft_heldout = float(-draft_model.log_prob(x_moons_heldout).mean())
print(f"the draft MAF: NLL {nll_draft_train:.3f} nats on the training points, {nll_draft_heldout:.3f} held out")
print(f"the true density of the two moons: NLL {nll_truth:.3f} nats on the held-out points")

# %%
print("the draft's held-out NLL is below the true density's:", nll_draft_heldout < nll_truth)
print(f"Monte Carlo standard error of the true density's NLL on these points: {nll_truth_stderr:.4f} nats")

# %% [markdown]
# No density can do that: $\mathbb{E}_{p}[-\log q] = H(p) + \mathrm{KL}(p \,\|\, q) \ge H(p)$
# for every density $q$, so the held-out NLL of a model can only be above the truth's, up to
# Monte Carlo error (the standard error printed above). The draft's $p_X$ is therefore not a
# density: its log-determinant does not measure how the layer changes volume. Find out why,
# with automatic differentiation rather than by staring at the code:
#
# * (a) write `conditioner_dependence(conditioner, x)`: for a conditioner that maps `(n, d)` to
#   `(n, params * d)` (flowlib's layout: `params` groups of `d` numbers), return the `(d, d)`
#   boolean tensor whose entry $(i, j)$ says whether some parameter of coordinate $i$ depends on
#   $x_j$ at some point of the batch `x` (a derivative that is not exactly zero). Use
#   automatic differentiation of the conditioner itself, not flowlib's `MADE.connectivity`
#   (which reads the masks, not the network). The test tries it on MADEs, on the draft and on
#   functions written by hand;
# * then look at what it says about the draft's first MADE (the cell after the test prints it),
#   compare with section 2, and (b) name the bug in `bug_in_the_draft`, one letter:
#   - **a**: the hidden masks let a unit of degree $m$ read inputs of degree $m$, which should
#     be cut;
#   - **b**: the output mask lets the parameters of coordinate $i$ read hidden units of degree
#     $m(i)$, so that $h_i$ depends on $x_i$ itself;
#   - **c**: the output degrees stack the coordinates in the wrong layout (coordinate after
#     coordinate instead of group after group);
#   - **d**: nothing is wrong with the masks: the model overfits the training points.
#
# The repaired MAF, built with your masks of Exercise 1, is trained after the tests.

# %% nbgrader={"grade": false, "grade_id": "06-ex3a-conditioner-dependence", "locked": false, "schema_version": 3, "solution": true, "task": false}
def conditioner_dependence(conditioner, x: Tensor) -> Tensor:
    """(d, d) bool: does some parameter of coordinate i depend on x_j at some point of the batch x?"""
    ### BEGIN SOLUTION
    n, d = x.shape
    jac = torch.autograd.functional.jacobian(conditioner, x)  # (n, params * d, n, d)
    per_point = jac[torch.arange(n), :, torch.arange(n), :]  # (n, params * d, d): each point's own rows
    params = per_point.shape[1] // d
    return (per_point.reshape(n, params, d, d) != 0).any(dim=1).any(dim=0)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex3a-conditioner-dependence-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_3A = ("Differentiate the conditioner's output with respect to its input (torch.autograd.functional.jacobian, "
           "or one torch.autograd.grad per output); output g * d + i holds parameter g of coordinate i. Entry (i, j) "
           "is True if any parameter of coordinate i has a non-zero derivative in x_j at any point of the batch.")
_OWN_3A = ("flowlib.autoregressive.MADE.forward", "flowlib.autoregressive.MaskedLinear")


def _check_dependence(conditioner, x: Tensor, expected: Tensor, what: str) -> None:
    with hint(HINT_3A):
        mine = conditioner_dependence(conditioner, x)
    assert isinstance(mine, Tensor) and tuple(mine.shape) == tuple(expected.shape), (
        f"For {what}: return a tensor of shape {tuple(expected.shape)}, got {getattr(mine, 'shape', type(mine))}. "
        f"{HINT_3A}")
    mine = mine.bool()
    if not torch.equal(mine, expected):
        i, j = (int(v) for v in (mine != expected).nonzero()[0])
        raise AssertionError(f"For {what}: entry ({i}, {j}) is {bool(mine[i, j])}, expected {bool(expected[i, j])}.\n"
                             f"{HINT_3A}")


def _order_dependence(order: list[int]) -> Tensor:
    place = torch.empty(len(order), dtype=torch.long)
    place[torch.tensor(order)] = torch.arange(len(order))
    return place[None, :] < place[:, None]


_x3 = torch.randn(5, 3, generator=torch.Generator().manual_seed(40), dtype=torch.float64)
# tanh units, so that no unit is switched off at every point of the batch.
_made = randomise_last_layer(MADE(3, 2, hidden=8, order=[2, 0, 1], activation=nn.Tanh), seed=40).double()
_check_dependence(_made, _x3, _order_dependence([2, 0, 1]), "a MADE in the order x_2, x_0, x_1")
_check_dependence(lambda v: torch.cat([v.cumsum(1) - v, 0 * v], dim=1), _x3,
                  torch.ones(3, 3).tril(-1).bool(), "h = (cumulative sums minus x, 0)")
_check_dependence(lambda v: torch.cat([v ** 2, v.flip(1)], dim=1), _x3,
                  torch.eye(3).bool() | torch.eye(3).flip(1).bool(), "h = (x squared, x reversed)")
_draft = randomise_last_layer(MADE(3, 2, hidden=8, activation=nn.Tanh), seed=41).double()
_deg = made_degrees(_draft.order, [8, 8])
install_masks(_draft, draft_masks(_deg[0], _deg[1:], 2))
# Hidden degrees go up to d - 1 = 2: h_0 and h_1 see their own input, h_2 sees x_0 and x_1.
_check_dependence(_draft, _x3, torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 0]]).bool(),
                  "a MADE with the draft's masks")
with hint(HINT_3A):
    check_own_work(conditioner_dependence, _made, _x3, allowed=_OWN_3A,
                   message="Read the dependence by automatic differentiation (not MADE.connectivity).")
### BEGIN HIDDEN TESTS
# A dependence that exists only at some points of the batch: relu(x_{i-1}) is flat where x_{i-1} < 0.
_x4 = torch.tensor([[1.0, -1.0, 2.0, -0.5], [-1.0, -2.0, -3.0, 0.7]], dtype=torch.float64)
_expected = torch.zeros(4, 4, dtype=torch.bool)
_expected[1, 0] = _expected[3, 2] = _expected[0, 3] = True  # x_1 is never positive: h_2 does not see it here
_check_dependence(lambda v: torch.cat([torch.relu(v).roll(1, dims=1)] * 3, dim=1), _x4, _expected,
                  "h_i = relu(x_(i-1)), three groups")
for _seed, _order in [(400, [0]), (401, [4, 1, 0, 3, 2]), (402, [1, 0])]:
    _d = len(_order)
    _x = torch.randn(7, _d, generator=torch.Generator().manual_seed(_seed), dtype=torch.float64)
    _m = randomise_last_layer(MADE(_d, 3, hidden=10, order=_order, activation=nn.Tanh), seed=_seed).double()
    _check_dependence(_m, _x, _order_dependence(_order), f"a MADE in the order {_order}")
### END HIDDEN TESTS
print("ex3a passed")

# %%
dependence_of = yours_or_reference(conditioner_dependence, lambda conditioner, x: conditioner.connectivity(),
                                   "Exercise 3 (a)")
first_made = next(layer.conditioner for layer in draft_model.flow if isinstance(layer, MaskedAutoregressive))
with torch.enable_grad():
    draft_dependence = dependence_of(first_made, x_moons[:64])
print("the draft's first MADE, order", first_made.order.tolist(), "- does h_i depend on x_j?")
print(draft_dependence.int())

# %% nbgrader={"grade": false, "grade_id": "06-ex3b-name-the-bug", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bug_in_the_draft() -> str:
    """The letter of the bug in draft_masks: "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    return "b"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex3b-name-the-bug-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_3B = ("Read the diagonal of the draft's dependence matrix: may h_i depend on x_i? Then ask which of the "
           "draft's masks lets it: the hidden ones (a unit of degree m reading degree m is fine there, see "
           "Exercise 1) or the output one. Overfitting cannot push a held-out NLL below the truth's.")
with hint(HINT_3B):
    _letter = check_choice(bug_in_the_draft(), ["a", "b", "c", "d"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
assert _letter == "b", f"Not {_letter!r}. {HINT_3B}"
### END HIDDEN TESTS
print("ex3b passed")

# %% [markdown]
# With $h_i$ allowed to read $x_i$, the layer is $z_i = x_i\, e^{s_i(x_{\le i})} + t_i(x_{\le i})$:
# still lower triangular, but its diagonal is no longer $e^{s_i}$, so the log-determinant
# $\sum_i s_i$ is wrong, and training exploits it (a large $s_i$ with a $t_i$ that cancels
# $x_i e^{s_i}$ scores well without describing the data). The same MAF with **your** masks
# of Exercise 1, trained the same way, stays above the truth:

# %% tags=["nbval-ignore-output"]
fixed_model = maf_with_masks(masks_for)
fit(fixed_model, x_moons, steps=400, batch_size=256, lr=5e-3, seed=0, device="cpu")
with torch.no_grad():
    nll_fixed_heldout = float(-fixed_model.log_prob(x_moons_heldout).mean())
fixed_made = next(layer.conditioner for layer in fixed_model.flow if isinstance(layer, MaskedAutoregressive))
with torch.enable_grad():
    print("the repaired first MADE: does h_i depend on x_j?\n", dependence_of(fixed_made, x_moons[:64]).int())
print(f"repaired MAF: held-out NLL {nll_fixed_heldout:.3f} nats; true density {nll_truth:.3f}; "
      f"KL estimate {nll_fixed_heldout - nll_truth:.3f} nats")

# %%
print("the repaired MAF's held-out NLL is above the truth's (up to three standard errors):",
      nll_fixed_heldout > nll_truth - 3 * nll_truth_stderr)

# %% [markdown]
# ## 4. A coupling is an autoregressive layer with two blocks
#
# Give the inputs only two degrees: 1 for the first half of the coordinates, 2 for the
# second. The hidden units can then only have degree 1, so they read the first half; the
# parameters of the first half (degree 1) may read nothing, those of the second half
# (degree 2) read the first half. That is the connectivity of a coupling layer (lectures 3 and
# 4): the second half is moved by a function of the first. Below, the dependence of such a
# two-block MADE built with **your** masks, next to that of flowlib's `AffineCoupling`
# (keeping the first half), read by automatic differentiation of the layer.

# %%
d_blocks = 6
block_degrees = torch.tensor([1] * (d_blocks // 2) + [2] * (d_blocks // 2))
hidden_blocks = [torch.ones(16, dtype=torch.long), torch.ones(16, dtype=torch.long)]
two_block = install_masks(flowlib_made_on(block_degrees, hidden_blocks, Affine.params),
                          masks_for(block_degrees, hidden_blocks, Affine.params))
made_reach = two_block.connectivity()

torch.manual_seed(5)
keep_first_half = 1 - half_mask(d_blocks, 1)  # 1 = kept: the first three coordinates
coupling = AffineCoupling(keep_first_half, MLP(3, 6, hidden=16, layers=2)).double()
with torch.no_grad():
    coupling.conditioner.last.weight.normal_(0.0, 0.5)
x_point = torch.randn(d_blocks, dtype=torch.float64)
jac_coupling = torch.autograd.functional.jacobian(lambda v: coupling(v.unsqueeze(0))[0][0], x_point)
coupling_reach = (jac_coupling.abs() > 1e-12) & ~torch.eye(d_blocks, dtype=torch.bool)

fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, matrix, title in [(axes[0], made_reach, "two-block MADE: $h_i$ reads $x_j$"),
                          (axes[1], coupling_reach, "affine coupling: $z_i$ reads $x_j$, $j \\neq i$")]:
    ax.imshow(matrix.numpy(), cmap="Blues", vmin=0, vmax=1.3)
    ax.set(xticks=range(d_blocks), yticks=range(d_blocks), xlabel="$x_j$", ylabel="$i$", title=title)
    ax.title.set_fontsize(9)
plt.show()
print("the same connectivity:", torch.equal(made_reach, coupling_reach))
print("mask of the coupling (1 = kept):", keep_first_half.int().tolist(), "| degrees of the MADE:",
      block_degrees.tolist())

# %% [markdown]
# One difference remains: in the coupling the first half is left alone, while the two-block
# autoregressive layer still moves it with parameters that depend on no input (a learned
# elementwise affine map, the kind ActNorm provides). With $D = d$ blocks, one coordinate
# each, it is MAF; with two, it is RealNVP: the coupling trades the many conditioning paths of
# an autoregressive layer for an inverse in **one** pass. Papamakarios et al. (2017) discuss
# both relations, to IAF and to RealNVP.
#
# ## 5. Splines: a transformer that bends
#
# So far the transformer $\tau$ was affine: whatever the conditioner computes, each coordinate
# is only stretched and shifted, and a single layer turns a Gaussian into a Gaussian. Durkan,
# Bekasov, Murray & Papamakarios (2019), *Neural Spline Flows*, use instead a **monotone
# rational-quadratic spline** (Gregory & Delbourgo, 1982): on an interval $[-B, B]$ it is made
# of $K$ pieces joined at knots $(x_k, y_k)$, $k = 0, \dots, K$, increasing in both
# coordinates, with given slopes $d_k > 0$ at the knots; outside $[-B, B]$ it is the identity
# (the *linear tails*, with $d_0 = d_K = 1$). In the bin $[x_k, x_{k+1}]$, write
# $w_k = x_{k+1} - x_k$, $h_k = y_{k+1} - y_k$, $s_k = h_k / w_k$ and
# $\xi = (x - x_k)/w_k \in [0, 1]$; then
# $$\tau(x) = y_k + \frac{h_k\,\big[s_k\,\xi^2 + d_k\,\xi(1 - \xi)\big]}
#                       {s_k + \big(d_{k+1} + d_k - 2 s_k\big)\,\xi(1 - \xi)} .$$
# At $\xi = 0$ it gives $y_k$, at $\xi = 1$ it gives $y_{k+1}$, and its inverse is the root of a
# quadratic, so it is exact. The conditioner returns $3K - 1$ numbers per coordinate (the
# widths, the heights and the $K - 1$ interior slopes, made positive and normalised by
# `RationalQuadraticSpline`), and the layer's log-determinant needs $\log \tau'(x)$.
#
# ### Exercise 4: the spline's log-derivative and its bin search (a derivation)
#
# Derive $\tau'(x)$ in a bin from the formula above (a quotient rule, then simplify; the result
# is a ratio whose numerator is a sum of three squares-like terms), and write
# `rq_log_derivative(x, x_knots, y_knots, slopes)`:
#
# * `x` of shape `(n,)`; `x_knots`, `y_knots`, `slopes` of shape `(K + 1,)`, with
#   `x_knots[0] = y_knots[0] = -B` and `x_knots[-1] = y_knots[-1] = B`;
# * find the bin of every $x$ (a point exactly on a knot may go to either neighbour: check
#   that both give the same value), and return $\log \tau'(x)$, shape `(n,)`; outside $[-B, B]$
#   the map is the identity, so $\log \tau' = 0$ there;
# * the whole batch at once (no Python loop over the points), with torch operations, not
#   flowlib's spline nor automatic differentiation.
#
# The test compares your values with values worked out in advance, checks that $\tau'$ at a
# knot is its slope, and that $\int_{x_k}^{x_{k+1}} \tau'(x)\,dx = h_k$ in every bin. The
# derivative panel of the figure after it is drawn with your function.

# %% nbgrader={"grade": false, "grade_id": "06-ex4-rq-log-derivative", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rq_log_derivative(x: Tensor, x_knots: Tensor, y_knots: Tensor, slopes: Tensor) -> Tensor:
    """log tau'(x) of the rational-quadratic spline through the knots (identity outside); x: (n,) -> (n,)."""
    ### BEGIN SOLUTION
    bins = len(x_knots) - 1
    inside = (x >= x_knots[0]) & (x <= x_knots[-1])
    k = (torch.searchsorted(x_knots, x.contiguous(), right=True) - 1).clamp(0, bins - 1)
    w = x_knots[k + 1] - x_knots[k]
    h = y_knots[k + 1] - y_knots[k]
    s = h / w
    d0, d1 = slopes[k], slopes[k + 1]
    xi = ((x - x_knots[k]) / w).clamp(0.0, 1.0)
    # d tau / dx = s^2 [d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2] / [s + (d1 + d0 - 2 s) xi (1 - xi)]^2
    numerator = s ** 2 * (d1 * xi ** 2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
    denominator = (s + (d1 + d0 - 2 * s) * xi * (1 - xi)) ** 2
    return torch.where(inside, torch.log(numerator) - torch.log(denominator), torch.zeros_like(x))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex4-rq-log-derivative-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_4 = ("Differentiate tau = y_k + h_k N(xi) / M(xi) with dxi/dx = 1/w_k by the quotient rule, and simplify "
          "the numerator to s_k^2 times a combination of xi^2, xi (1 - xi) and (1 - xi)^2. For the bin: the k with "
          "x_k <= x < x_{k+1} (torch.searchsorted can find it); outside [-B, B] the log-derivative is 0.")
# Knots of a spline with K = 4 bins on [-3, 3] and values worked out in advance.
_XK = torch.tensor([-3.0, -1.0, 0.2, 1.0, 3.0], dtype=torch.float64)
_YK = torch.tensor([-3.0, -2.5, 0.0, 1.6, 3.0], dtype=torch.float64)
_DK = torch.tensor([1.0, 0.3, 2.5, 0.8, 1.0], dtype=torch.float64)
_X_HAND = torch.tensor([-4.0, -2.0, -0.4, 0.6, 2.0, 3.5], dtype=torch.float64)
_HAND = torch.tensor([0.0, -1.9740810260, 0.9130958410, 0.7847143741, -0.4902063366, 0.0],
                     dtype=torch.float64)


def _integral_per_bin(xk: Tensor, yk: Tensor, dk: Tensor) -> Tensor:
    """The trapezoid-rule integral of exp(your log-derivative) over each bin."""
    out = []
    for lo, hi in zip(xk[:-1], xk[1:], strict=True):
        grid = torch.linspace(float(lo), float(hi), 4001, dtype=torch.float64)
        out.append(torch.trapezoid(rq_log_derivative(grid, xk, yk, dk).exp(), grid))
    return torch.stack(out)


with hint(HINT_4), torch.no_grad():
    _mine = rq_log_derivative(_X_HAND, _XK, _YK, _DK)
check_close(_mine, _HAND, f"Not yet, at x = {_X_HAND.tolist()}. {HINT_4}", atol=1e-8)
with hint(HINT_4), torch.no_grad():
    _at_knots = rq_log_derivative(_XK, _XK, _YK, _DK)
check_close(_at_knots, _DK.log(), f"At the knots, tau' should be the slopes d_k. {HINT_4}", atol=1e-9)
with hint(HINT_4), torch.no_grad():
    _integrals = _integral_per_bin(_XK, _YK, _DK)
check_close(_integrals, _YK.diff(), f"The integral of tau' over each bin should be its height h_k. {HINT_4}",
            atol=1e-6)
with hint(HINT_4):
    check_vectorised(rq_log_derivative, lambda n: (6 * torch.rand(n, dtype=torch.float64) - 3, _XK, _YK, _DK),
                     "Compute the whole batch at once, with tensor operations.")
    check_own_work(rq_log_derivative, _X_HAND, _XK, _YK, _DK,
                   message="Write the derivative yourself, with torch operations (not flowlib's spline).")
### BEGIN HIDDEN TESTS
def _rq_forward(x: Tensor, xk: Tensor, yk: Tensor, dk: Tensor) -> Tensor:
    """tau(x) by the formula of section 5, for points strictly inside the bins (for autograd)."""
    k = (torch.searchsorted(xk, x.detach().contiguous(), right=True) - 1).clamp(0, len(xk) - 2)
    w, h = xk[k + 1] - xk[k], yk[k + 1] - yk[k]
    s = h / w
    xi = (x - xk[k]) / w
    return yk[k] + h * (s * xi ** 2 + dk[k] * xi * (1 - xi)) / (s + (dk[k + 1] + dk[k] - 2 * s) * xi * (1 - xi))


for _seed in range(300, 305):
    _g = torch.Generator().manual_seed(_seed)
    _K = int(torch.randint(1, 9, (1,), generator=_g))
    _B = float(torch.empty(()).uniform_(1.0, 4.0, generator=_g))
    _w = torch.rand(_K, generator=_g, dtype=torch.float64) + 0.05
    _h = torch.rand(_K, generator=_g, dtype=torch.float64) + 0.05
    _xk = torch.cat([torch.zeros(1, dtype=torch.float64), _w.cumsum(0)]) / _w.sum() * 2 * _B - _B
    _yk = torch.cat([torch.zeros(1, dtype=torch.float64), _h.cumsum(0)]) / _h.sum() * 2 * _B - _B
    _xk[-1] = _yk[-1] = _B
    _dk = torch.cat([torch.ones(1), torch.exp(torch.randn(_K - 1, generator=_g)), torch.ones(1)]).double()
    _x = (2.4 * _B) * torch.rand(50, generator=_g, dtype=torch.float64) - 1.2 * _B
    _x = _x[~torch.isclose(_x[:, None], _xk[None, :], atol=1e-6).any(dim=1)]
    _xg = _x.clone().requires_grad_(True)
    (_grad,) = torch.autograd.grad(_rq_forward(_xg, _xk, _yk, _dk).sum(), _xg)
    _expected = torch.where(_x.abs() <= _B, _grad.log(), torch.zeros_like(_x))
    with hint(HINT_4), torch.no_grad():
        _mine = rq_log_derivative(_x, _xk, _yk, _dk)
    check_close(_mine, _expected, f"Not yet for K = {_K} bins on [-{_B:.2f}, {_B:.2f}]. {HINT_4}", atol=1e-8)
    with hint(HINT_4), torch.no_grad():
        check_close(rq_log_derivative(_xk, _xk, _yk, _dk), _dk.log(), f"At the knots (K = {_K}). {HINT_4}",
                    atol=1e-9)
### END HIDDEN TESTS
print("ex4 passed")

# %% [markdown]
# A spline with five bins on $[-3, 3]$, its derivative (drawn with **your** function) and, as
# the map $f$ of a one-dimensional flow, the density $p_X(x) = p_Z(\tau(x))\,\tau'(x)$ it makes
# of a standard normal $p_Z$: one layer, two bumps. An affine map (dashed) has one slope
# everywhere, and its flow density is a Gaussian, whatever its two parameters.

# %%
def spline_from_knots(x_knots: Tensor, y_knots: Tensor, slopes: Tensor) -> tuple[RationalQuadraticSpline, Tensor]:
    """flowlib's spline and the parameters h (1, 3K - 1) that give it these knots (symmetric on [-B, B])."""
    bins, bound = len(x_knots) - 1, float(x_knots[-1])
    spline = RationalQuadraticSpline(bins=bins, bound=bound).double()

    def unnormalise(edges: Tensor, minimum: float) -> Tensor:  # invert the softmax of the widths / heights
        fractions = edges.diff() / (2 * bound)
        return torch.log((fractions - minimum) / (1 - minimum * bins))

    m = spline.min_derivative
    inner = torch.log(torch.expm1((slopes[1:-1] - m) * math.log(2.0) / (1 - m)))
    h = torch.cat([unnormalise(x_knots, spline.min_width), unnormalise(y_knots, spline.min_height), inner])
    return spline, h.unsqueeze(0)


def flowlib_log_derivative(x: Tensor, x_knots: Tensor, y_knots: Tensor, slopes: Tensor) -> Tensor:
    """flowlib's log tau'(x) for these knots (used while Exercise 4 is not done)."""
    spline, h = spline_from_knots(x_knots, y_knots, slopes)
    return spline(x.reshape(-1, 1), h.expand(len(x), -1))[1][:, 0]


log_derivative_of = yours_or_reference(rq_log_derivative, flowlib_log_derivative, "Exercise 4")
knots_x = torch.tensor([-3.0, -1.6, -0.6, 0.6, 1.6, 3.0], dtype=torch.float64)
knots_y = torch.tensor([-3.0, -1.0, -0.7, 0.7, 1.0, 3.0], dtype=torch.float64)
knots_d = torch.tensor([1.0, 3.0, 0.15, 0.15, 3.0, 1.0], dtype=torch.float64)
spline_demo, h_demo = spline_from_knots(knots_x, knots_y, knots_d)
x_line = torch.linspace(-4, 4, 1601, dtype=torch.float64)
with torch.no_grad():
    tau_x, _ = spline_demo(x_line.reshape(-1, 1), h_demo.expand(len(x_line), -1))
    tau_x = tau_x[:, 0]
    log_tau_prime = log_derivative_of(x_line, knots_x, knots_y, knots_d)
density_spline = torch.exp(-0.5 * tau_x ** 2 - 0.5 * math.log(2 * math.pi) + log_tau_prime)
affine_slope, affine_shift = 0.9, 0.0  # an affine map z = 0.9 x: one slope everywhere

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
axes[0].plot(x_line, tau_x, color="C0", lw=2, label="spline $\\tau(x)$")
axes[0].plot(x_line, affine_slope * x_line + affine_shift, color="0.5", ls="--", label="affine $0.9x$")
axes[0].plot(knots_x, knots_y, "o", color="C3", ms=5, label="knots")
axes[0].set(xlabel="x", ylabel="z", title="the map")
axes[1].plot(x_line, log_tau_prime.exp(), color="C2", lw=2, label="$\\tau'(x)$ (your Exercise 4)")
axes[1].plot(knots_x, knots_d, "o", color="C3", ms=5, label="slopes $d_k$")
axes[1].axhline(affine_slope, color="0.5", ls="--")
axes[1].set(xlabel="x", title="the derivative")
axes[2].plot(x_line, density_spline, color="C1", lw=2, label="spline flow")
axes[2].plot(x_line, affine_slope * torch.exp(-0.5 * (affine_slope * x_line) ** 2) / math.sqrt(2 * math.pi),
             color="0.5", ls="--", label="affine flow")
axes[2].set(xlabel="x", title="$p_X(x) = p_Z(\\tau(x))\\,\\tau'(x)$")
for ax in axes:
    ax.axvspan(-3, 3, color="0.95", zorder=0)
    ax.legend(frameon=False, fontsize=7)
plt.show()
print(f"integral of the spline flow's p_X: {float(torch.trapezoid(density_spline, x_line)):.4f}")
print("tau increasing:", bool((tau_x.diff() > 0).all()), "| tau(x) = x outside [-3, 3]:",
      bool(torch.allclose(tau_x[x_line.abs() > 3], x_line[x_line.abs() > 3])))

# %% [markdown]
# ### The widget: move the knots
#
# The widget holds one `RationalQuadraticSpline` with $K$ equal-width bins on $[-3, 3]$. The
# sliders set the **log-height** of each bin (the spline normalises the heights, so only their
# ratios matter) and the slope $d_k$ at each interior knot; the panels show $y = \tau(x)$ with
# its knots, $\tau'(x)$, and a density: that of $y = \tau(x)$ when $x \sim \mathcal N(0, 1)$
# (the spline as a sampler, $p_Y(y) = p_X(x)/\tau'(x)$), or, with the second button, the flow
# density $p_X(x) = p_Z(\tau(x))\,\tau'(x)$. The status line reads the integral of the density
# and the mass of each bin. Things to try:
#
# * make one bin very low: the map is flat there, $\tau' \approx 0$, and the pushed density piles
#   up in a sharp peak; the flow density empties that stretch of $x$;
# * make a slope $d_k$ large and its neighbours small: a kink in $\tau$, a spike in $\tau'$;
# * however you move the sliders, $\tau$ stays increasing and the integral stays 1.

# %% tags=["nbval-ignore-output"]
spline_widget = SplineKnots()
spline_widget

# %%
print(f"the widget's integral at its start: {spline_widget.integral:.3f}; monotone: {spline_widget.monotone}")

# %% [markdown]
# ### Exercise 5: predict, then move the slider
#
# Set the widget to $K = 4$ bins, every log-height 0 and every slope 1 (its start: the identity),
# with the density of $y = \tau(x)$, $x \sim \mathcal N(0, 1)$. The middle knot is at
# $x_2 = 0$. Before you move the slider $d_2$ from 1 to 3, predict:
#
# 1. `predicted_density_ratio()`: the density $p_Y$ at $y = \tau(0)$ after the move, divided
#    by its value before (a number; the red dot at the middle knot in the third panel);
# 2. `predicted_bin_mass()`: what happens to the mass of each of the two middle bins (the status
#    line), one letter: **a**: it grows; **b**: it shrinks; **c**: it stays the same; **d**: mass
#    moves from one of the two middle bins to the other.
#
# Reason with the change of variables and with what a monotone map does to an interval; then
# move the slider and compare.

# %% nbgrader={"grade": false, "grade_id": "06-ex5-predict", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_density_ratio() -> float:
    """Your prediction: p_Y at y = tau(0) after setting d_2 = 3, divided by its value at d_2 = 1."""
    ### BEGIN SOLUTION
    # p_Y(tau(0)) = p_X(0) / tau'(0) and tau'(0) = d_2; the knot itself does not move.
    return 1 / 3
    ### END SOLUTION


def predicted_bin_mass() -> str:
    """Your prediction for the mass of each middle bin: "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    # tau maps [x_k, x_{k+1}] onto [y_k, y_{k+1}] whatever the slopes: the mass of the bin is
    # P(x_k <= x <= x_{k+1}) under N(0, 1), which the slopes do not change.
    return "c"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "06-ex5-predict-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_5 = ("p_Y(y) = p_X(x) / tau'(x) at y = tau(x): which of the two factors does d_2 change at x = 0, and does the "
          "knot (0, tau(0)) move? For the masses: an increasing map sends [x_k, x_{k+1}] onto [y_k, y_{k+1}], so "
          "the same points land in the bin before and after.")
with hint(HINT_5):
    _ratio = float(predicted_density_ratio())
    _letter = check_choice(predicted_bin_mass(), ["a", "b", "c", "d"], "Answer with one letter.")
assert math.isfinite(_ratio) and _ratio > 0, f"A ratio of two densities is a positive number; you predict {_ratio}."
### BEGIN HIDDEN TESTS
_w = SplineKnots(bins=4, grid_points=2001)
_before_density, _before_mass = _w.knot_density()[2], _w.bin_masses.copy()
_w.controls["d2"].value = 3.0
_after_density, _after_mass = _w.knot_density()[2], _w.bin_masses.copy()
_true_ratio = float(_after_density / _before_density)
assert abs(_ratio - _true_ratio) <= 0.02 * _true_ratio, (
    f"The widget's density at the middle knot changes by a factor {_true_ratio:.3f}; you predict {_ratio:.3f}. "
    f"{HINT_5}")
_change = _after_mass[1:3] - _before_mass[1:3]
_right = ("c" if np.abs(_change).max() < 1e-3 else "a" if (_change > 0).all() else "b" if (_change < 0).all()
          else "d")
assert _letter == _right, f"Not {_letter!r}: the widget's middle-bin masses go from {_before_mass[1:3]} to " \
                          f"{_after_mass[1:3]}. {HINT_5}"
### END HIDDEN TESTS
print("ex5 passed")

# %% [markdown]
# ## 6. The toys: RealNVP, MAF and a neural spline flow at equal size
#
# Three flows of about the same number of parameters, trained with the same budget (the same
# number of steps, batch size and learning-rate schedule) on the three toys of lecture 4, whose
# exact densities give $\mathrm{KL}(p_\text{data} \,\|\, p_X)$ by Monte Carlo (in nats, 0 is a
# perfect fit):
#
# * **RealNVP**: `realnvp_vector(2, couplings=8, hidden=32)`, affine couplings with ActNorm;
# * **MAF**: `maf(2, layers=8, hidden=32)`, affine autoregressive layers with alternating
#   orders and ActNorm, its MADEs built with **your** masks (Exercise 1); the samples drawn with
#   **your** loop (Exercise 2). MADE's cut connections are weights that are always multiplied by
#   zero: they are left out of the count below;
# * **NSF**: `nsf(2, layers=4, hidden=37)`, rational-quadratic spline couplings with 8 bins on
#   $[-4, 4]$, after one ActNorm (Durkan et al., 2019, RQ-NSF (C)).
#
# In two dimensions a MADE's hidden units can only have degree 1: the first coordinate in the
# order gets parameters that depend on nothing, the second gets parameters that depend on the
# first, so a 2D MAF layer is a coupling plus an elementwise affine map.

# %%
def effective_parameters(model: nn.Module) -> int:
    """Trainable numbers, without the weights that a MADE's masks always multiply by zero."""
    cut = sum(int((m.mask == 0).sum()) for m in model.modules() if isinstance(m, MaskedLinear))
    return sum(p.numel() for p in model.parameters()) - cut


def maf_with_your_masks(layers: int = 8, hidden: int = 32) -> FlowModel:
    """maf(2, ...) whose MADEs use the masks of Exercise 1."""
    return maf_with_masks(masks_for, dim=2, layers=layers, hidden=hidden, seed=0)


TOYS = ["eight_gaussians", "two_moons", "checkerboard"]
toy_builders = {
    "RealNVP": lambda: realnvp_vector(2, couplings=8, hidden=32, layers=2),
    "MAF": maf_with_your_masks,
    "NSF": lambda: nsf(2, layers=4, hidden=37, mlp_layers=2, bins=8),
}
for name, build in toy_builders.items():
    print(f"{name:>8}: {effective_parameters(build()):,} parameters")

# %% tags=["nbval-ignore-output"]
toy_models: dict[tuple[str, str], FlowModel] = {}
toy_kl: dict[tuple[str, str], float] = {}
t0 = time.perf_counter()
for toy_name in TOYS:
    toy = get_toy(toy_name)
    x_toy = toy.sample(20_000, generator=torch.Generator().manual_seed(1))
    for model_name, build in toy_builders.items():
        torch.manual_seed(0)
        model = build()
        fit(model, x_toy, steps=TOY_STEPS, batch_size=256, lr=3e-3, seed=0, device=DEVICE)
        model.cpu()
        toy_models[toy_name, model_name] = model
        toy_kl[toy_name, model_name] = kl_divergence(toy, model, n=KL_SAMPLES,
                                                     generator=torch.Generator().manual_seed(2))
print(f"toys trained in {time.perf_counter() - t0:.0f} s")

# %% tags=["nbval-ignore-output"]
print(f"KL(data || model) in nats after {TOY_STEPS} steps (batch 256, lr 3e-3, warm-up and cosine decay)")
print("| toy | " + " | ".join(toy_builders) + " |")
print("| --- |" + " ---: |" * len(toy_builders))
for toy_name in TOYS:
    print(f"| {toy_name} | " + " | ".join(f"{toy_kl[toy_name, m]:.3f}" for m in toy_builders) + " |")


def sample_flow(model: FlowModel, n: int, seed: int) -> Tensor:
    """Samples x = f^{-1}(z) layer by layer, MAF layers inverted by your loop of Exercise 2."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for layer in reversed(list(model.flow)):
            if type(layer) is MaskedAutoregressive:
                z = maf_inverse(layer.conditioner, layer.transformer, z)[0]
            else:
                z = layer.inverse(z)[0]
    return z


fig, axes = plt.subplots(len(TOYS), 5, figsize=(12.5, 2.6 * len(TOYS)))
for row, toy_name in zip(axes, TOYS, strict=True):
    toy = get_toy(toy_name)
    plot_density_2d(toy, resolution=GRID, ax=row[0], title=f"{toy_name}: data")
    for ax, model_name in zip(row[1:4], toy_builders, strict=True):
        plot_density_2d(toy_models[toy_name, model_name], bounds=toy.bounds, resolution=GRID, ax=ax,
                        title=f"{model_name}, KL = {toy_kl[toy_name, model_name]:.3f}")
    samples = sample_flow(toy_models[toy_name, "MAF"], 3000, seed=3).numpy()
    row[4].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, color="C0")
    lo, hi = toy.bounds
    row[4].set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title="MAF samples (your loop)")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %%
kl_values = list(toy_kl.values())
print("every KL finite:", all(math.isfinite(v) for v in kl_values))
print("every KL non-negative up to Monte Carlo error:", all(v > -0.05 for v in kl_values))

# %% [markdown]
# At equal size and equal steps the spline flow should come out clearly ahead on every toy,
# with the two affine flows close to each other: with only two coordinates, MAF's layers are
# couplings with an extra elementwise affine map (section 4), so its structure buys little
# here; the transformer is what matters. A spline layer can bend a coordinate into several
# bumps (section 5) where an affine layer can only stretch and shift it, so the eight small
# Gaussians and the sharp edges of the checkerboard need fewer layers. The numbers move a little
# from run to run and machine to machine; `benchmarks/HISTORY.md` compares flowlib's flows
# with other libraries' at longer budgets.
#
# ### Exercise 6: design a flow under a budget
#
# Design a flow for the **eight Gaussians** that reaches a small KL within a fixed budget:
#
# * **Model**: `design_flow()` returns an untrained flowlib `FlowModel` of 2D points, built with
#   flowlib's builders (`realnvp_vector`, `maf`, `nsf`, with any of their options) or your own
#   `Compose` of flowlib layers, with at most **3000 parameters** (counted by
#   `sum(p.numel() for p in model.parameters())`, masked weights included);
# * **Budget**: one training run, `fit` with **500 steps**, batch size 256, learning rate 5e-3,
#   seed 0 (with its warm-up and cosine schedule), on 20000 training points of the toy: a few
#   CPU seconds for a flow of this size;
# * **Target**: $\mathrm{KL}(p_\text{data} \,\|\, p_X) \le$ **0.10 nats**, estimated on 20000
#   samples of the toy.
#
# Sections 5 and 6 say where the parameters are best spent: on more layers, wider networks, or
# a different transformer? And what does a spline's interval $[-B, B]$ cover, once ActNorm has
# standardised the data? The next cell trains your design with the budget and draws it; the
# test trains it again the same way.

# %% nbgrader={"grade": false, "grade_id": "06-ex6-design-flow", "locked": false, "schema_version": 3, "solution": true, "task": false}
def design_flow() -> FlowModel:
    """An untrained flowlib FlowModel for 2D points, at most 3000 parameters."""
    ### BEGIN SOLUTION
    # Splines bend: four spline couplings of 8 bins with small conditioners (2784 parameters)
    # beat any affine flow of this size at 500 steps.
    return nsf(2, layers=4, hidden=16, mlp_layers=2, bins=8)
    ### END SOLUTION


# %%
eight = get_toy("eight_gaussians")
x_eight = eight.sample(20_000, generator=torch.Generator().manual_seed(1))
DESIGN_BUDGET = dict(steps=500, batch_size=256, lr=5e-3, device="cpu")


def reference_design() -> FlowModel:
    """An affine flow of about the same size (used while Exercise 6 is not done)."""
    return realnvp_vector(2, couplings=6, hidden=19)


# %% tags=["nbval-ignore-output"]
make_design = yours_or_reference(design_flow, reference_design, "Exercise 6")
torch.manual_seed(0)
design_model = make_design()
print("parameters:", sum(p.numel() for p in design_model.parameters()), "(at most 3000)")
fit(design_model, x_eight, seed=0, **DESIGN_BUDGET)
design_kl = kl_divergence(eight, design_model, n=20_000, generator=torch.Generator().manual_seed(2))
print(f"KL(data || your design) = {design_kl:.3f} nats (target: at most 0.10)")
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
plot_density_2d(eight, resolution=GRID, ax=axes[0], title="eight Gaussians")
plot_density_2d(design_model, bounds=eight.bounds, resolution=GRID, ax=axes[1], title=f"your design, KL = {design_kl:.3f}")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()

# %% nbgrader={"grade": true, "grade_id": "06-ex6-design-flow-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
HINT_6 = ("design_flow() returns an untrained flowlib FlowModel of 2D points (for instance from nsf, maf or "
          "realnvp_vector) with at most 3000 parameters.")
HINT_6_FIT = ("Sections 5 and 6: at equal size, which transformer bends a coordinate into several bumps? Spend the "
              "parameters on a few such layers with small conditioners, and keep the spline's interval wide enough "
              "for standardised data.")


def _train_and_score(seed: int, kl_seed: int) -> float:
    """Train design_flow() with the budget of Exercise 6; its KL on 20000 samples."""
    with hint(HINT_6):
        torch.manual_seed(0)
        assert torch_calls(design_flow) < 20_000, (
            f"design_flow() should build the model, not train it. {HINT_6}")
        torch.manual_seed(0)
        model = design_flow()
        assert isinstance(model, FlowModel), f"design_flow() returned a {type(model).__name__}. {HINT_6}"
        assert tuple(model.event_shape) == (2,), f"The model is for shape {tuple(model.event_shape)}, not (2,). {HINT_6}"
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params <= 3000, f"Your design has {n_params} parameters. {HINT_6}"
    with hint(f"Training your design failed. {HINT_6}"):
        fit(model, x_eight, seed=seed, progress=False, **DESIGN_BUDGET)
        return kl_divergence(eight, model, n=20_000, generator=torch.Generator().manual_seed(kl_seed))


_kl = _train_and_score(seed=0, kl_seed=2)
assert _kl <= 0.10, f"Your design reaches KL = {_kl:.3f} nats; the target is at most 0.10. {HINT_6_FIT}"
### BEGIN HIDDEN TESTS
_kl = _train_and_score(seed=1, kl_seed=3)
assert _kl <= 0.10, (f"Trained with another data order (seed 1) and scored on new samples, your design reaches "
                     f"KL = {_kl:.3f} nats; the target is at most 0.10. {HINT_6_FIT}")
### END HIDDEN TESTS
print("ex6 passed")

# %% [markdown]
# ## 7. A transformer autoregressive flow on images
#
# PixelCNN and WaveNet showed that the autoregressive structure scales to images and sound when
# the conditioner is a strong network; for a long time, flows on images were couplings
# (RealNVP, Glow). Zhai et al. (2024), *Normalizing Flows are Capable Generative Models*,
# brought the autoregressive structure back with **TarFlow**: an image is cut into patches, the
# sequence of patches is one autoregressive order, and the conditioner is a causal transformer
# (self-attention that only looks backwards), so that the parameters of patch $t$ depend on
# patches $1, \dots, t - 1$; the blocks alternate the direction of the sequence, and each block
# moves its patches with an affine transformer. It is MAF with patches for coordinates:
# the density is one pass of each block, sampling takes one pass per patch.
#
# `flowlib.tarflow.tarflow_image` builds a small one: logit preprocessing, then blocks of
# `TransformerAutoregressive` on $2 \times 2$ patches (16 patches of the 8x8 digits). As in
# lectures 4 and 5, the digits are uniformly dequantised and the loss is in bits per dimension
# (lower is better; the uniform model scores $\log_2 17 = 4.09$).

# %%
x_train, _ = load_digits("train")
x_val, _ = load_digits("val")
x_test, _ = load_digits("test")
TARFLOW_SIZE = dict(patch=2, blocks=4, width=32, layers=1, heads=2)


def build_tarflow(shape, grey_levels: int) -> FlowModel:
    return tarflow_image(shape, grey_levels=grey_levels, **TARFLOW_SIZE)


torch.manual_seed(0)
tarflow_digits = build_tarflow((1, 8, 8), DIGITS_GREY_LEVELS)
print(f"transformer flow on the digits: {count_parameters(tarflow_digits):,} parameters, "
      f"{tarflow_digits.flow[1].tokens} patches of {tarflow_digits.flow[1].features} pixels per block")

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
tarflow_fit = fit(tarflow_digits, x_train.float(), val_data=x_val.float(), test_data=x_test.float(),
                  steps=DIGITS_STEPS, batch_size=128, lr=2e-3, seed=0, device=DEVICE)
tarflow_digits.cpu().eval()
print(f"{DIGITS_STEPS} steps in {time.perf_counter() - t0:.0f} s: best validation {tarflow_fit.best_val:.3f} "
      f"bits/dim, test {tarflow_fit.test:.3f} bits/dim (uniform: {math.log2(DIGITS_GREY_LEVELS):.3f})")
torch.manual_seed(3)
with torch.no_grad():
    t0 = time.perf_counter()
    tarflow_samples = tarflow_digits.sample_levels(36)
    sample_seconds = time.perf_counter() - t0
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
image_grid(x_test[:36].float() / (DIGITS_GREY_LEVELS - 1), nrow=6, ax=axes[0], title="test digits")
image_grid(tarflow_samples.float() / (DIGITS_GREY_LEVELS - 1), nrow=6, ax=axes[1],
           title=f"transformer flow samples ({sample_seconds:.2f} s for 36)")
plt.show()

# %%
print("test bits/dim finite and below the uniform model's:",
      math.isfinite(tarflow_fit.test) and tarflow_fit.test < math.log2(DIGITS_GREY_LEVELS))

# %% [markdown]
# After a few hundred steps on a CPU the samples are rough strokes, and the figure is far from
# what longer training gives. For MNIST ($28 \times 28$, 256 grey levels) a larger model of the
# same kind was trained beforehand by `scripts/train_image_flow.py` and ships with flowlib as
# `tarflow_mnist`: $4 \times 4$ patches (49 per block), four blocks with the direction
# alternating, width 48, two transformer layers per block. `load_pretrained` rebuilds it; the
# cell reads the training record that came with it (steps, minutes, the test bits/dim on all
# 10,000 test images), scores it again on the first test images (one dequantisation draw
# each, so the figure is close to the recorded one but not equal), and samples 16 images at
# two temperatures. The shipped Glow of lecture 5 is in the same table for scale.

# %% tags=["nbval-ignore-output"]
tarflow_mnist = None
if "tarflow_mnist" in shipped_checkpoints():
    try:
        tarflow_mnist = load_pretrained("tarflow_mnist")
        tarflow_record = checkpoint_info("tarflow_mnist")["metrics"]
        print(f"loaded tarflow_mnist.pt: {count_parameters(tarflow_mnist):,} parameters, trained for "
              f"{tarflow_record['steps']} steps ({tarflow_record['train_seconds'] / 60:.0f} min on a CPU); "
              f"recorded test {tarflow_record['test_bpd']:.3f} bits/dim on {tarflow_record['test_images']} images")
    except Exception as err:  # say what failed and go on without it
        print(f"tarflow_mnist.pt: could not be loaded ({type(err).__name__}: {err})")
else:
    print("No transformer flow for MNIST in flowlib/checkpoints/; to make one, run from the repository root\n"
          "    python scripts/train_image_flow.py --model tarflow --data mnist --minutes 14 --set width=48 "
          "--out flowlib/checkpoints/tarflow_mnist.pt")
try:
    mnist_test, _ = load_mnist("test", download=MNIST_DOWNLOAD)
except DatasetError as err:
    mnist_test = None
    print("MNIST is not available here, so the test images are not scored:", str(err).splitlines()[0])
    print("To use it, set the environment variable FLOWLIB_DATA to a folder holding mnist/*.gz before "
          "starting Jupyter,\nor run flowlib.data.load_mnist('test') once with internet access "
          "(it downloads and caches the files).")
if tarflow_mnist is not None and mnist_test is not None:
    torch.manual_seed(0)  # the dequantisation draws
    t0 = time.perf_counter()
    with torch.no_grad():
        mnist_bpd = mean_bits_per_dim(tarflow_mnist, mnist_test[:MNIST_CHECK].float(), batch=250)
    print(f"transformer flow: {mnist_bpd:.3f} bits/dim on the first {MNIST_CHECK} test images now "
          f"({time.perf_counter() - t0:.1f} s); uniform over 256 levels: {math.log2(MNIST_GREY_LEVELS):.3f}")
    if "glow_mnist" in shipped_checkpoints():
        glow_record = checkpoint_info("glow_mnist")["metrics"]
        print(f"the shipped Glow of lecture 5, for scale: {glow_record['test_bpd']:.3f} bits/dim recorded, "
              f"{glow_record['parameters']:,} parameters, {glow_record['train_seconds'] / 60:.0f} min")
if tarflow_mnist is not None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, temperature in zip(axes, (0.8, 1.0), strict=True):
        torch.manual_seed(5)
        t0 = time.perf_counter()
        with torch.no_grad():
            mnist_samples = tarflow_mnist.sample_levels(16, temperature=temperature)
        image_grid(mnist_samples.float() / (MNIST_GREY_LEVELS - 1), nrow=4, ax=ax,
                   title=f"T = {temperature:g} ({time.perf_counter() - t0:.1f} s for 16)")
    plt.show()

# %% [markdown]
# The timings show the cost of the autoregressive direction: each of the 16 samples takes 49
# passes per block, one per patch, while the density of 1000 test images took one pass per
# block. The samples are not digits yet: after less than a thousand steps they are blotches of
# ink on a clean background, with a little less stray ink at $T = 0.8$ than at $T = 1$. This
# small transformer flow, trained for minutes on a CPU, also scores worse than the shipped
# Glow; the comparison says little about the two architectures at scale (different sizes,
# budgets and numbers of steps: the two records above).

# %% [markdown]
# **Where flows stand today.** TarFlow at scale (much deeper and wider transformers, trained on
# large image data sets) is reported by Zhai et al. (2024) to set a new state of the art in likelihood
# estimation for images, ahead of the previous best methods by a large margin, and, with three
# further techniques (Gaussian noise added during training, a denoising step after it, and
# guidance), to draw samples whose quality and diversity compare with diffusion models: the
# first time for a stand-alone normalizing flow, in their words; the figures are in their
# tables. Everything in it is this lecture's
# material: an autoregressive structure, an elementwise invertible transformer, a conditioner
# that needs no inverse, and the price of $T$ passes to sample.
#
# ## Summary
#
# * The chain rule writes every density as a product of one-dimensional conditionals; with an
#   invertible map per coordinate, $z_i = \tau(x_i; h_i(x_{<i}))$, an autoregressive model is a
#   flow with a triangular Jacobian and $\log|\det| = \sum_i \log|\tau'|$.
# * MADE computes every $h_i(x_{<i})$ in one pass: a hidden unit of degree $m$ reads units of
#   degree at most $m$, an output of degree $m(i)$ reads hidden units of degree below $m(i)$.
#   Get one inequality wrong and the "density" can beat the truth; automatic differentiation of
#   the conditioner shows it at once.
# * MAF: density in one pass, sampling in $d$; IAF: the other way round. Choose by the
#   direction the job repeats; Parallel WaveNet distils an autoregressive teacher (WaveNet) into
#   an IAF student that samples in one pass.
# * A coupling is the autoregressive layer with two blocks: fewer paths, but one-pass inversion.
# * A rational-quadratic spline bends where an affine map can only stretch and shift; at equal
#   size it wins on every toy here.
# * Transformers as conditioners over patches (TarFlow) brought the autoregressive flow back to
#   the front of image likelihood.
#
# ## References
#
# * H. Larochelle and I. Murray (2011). *The Neural Autoregressive Distribution Estimator.* AISTATS.
# * B. Uria, I. Murray and H. Larochelle (2013). *RNADE: The real-valued neural autoregressive
#   density-estimator.* NeurIPS.
# * M. Germain, K. Gregor, I. Murray and H. Larochelle (2015). *MADE: Masked Autoencoder for
#   Distribution Estimation.* ICML.
# * A. van den Oord, N. Kalchbrenner and K. Kavukcuoglu (2016). *Pixel Recurrent Neural
#   Networks.* ICML.
# * A. van den Oord, S. Dieleman, H. Zen, K. Simonyan, O. Vinyals, A. Graves, N. Kalchbrenner,
#   A. Senior and K. Kavukcuoglu (2016). *WaveNet: A Generative Model for Raw Audio.* arXiv:1609.03499.
# * G. Papamakarios, T. Pavlakou and I. Murray (2017). *Masked Autoregressive Flow for Density
#   Estimation.* NeurIPS.
# * D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever and M. Welling (2016).
#   *Improved Variational Inference with Inverse Autoregressive Flow.* NeurIPS.
# * A. van den Oord et al. (2018). *Parallel WaveNet: Fast High-Fidelity Speech Synthesis.* ICML.
# * J. A. Gregory and R. Delbourgo (1982). *Piecewise rational quadratic interpolation to
#   monotonic data.* IMA Journal of Numerical Analysis 2(2).
# * C. Durkan, A. Bekasov, I. Murray and G. Papamakarios (2019). *Neural Spline Flows.* NeurIPS.
# * G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed and B. Lakshminarayanan (2021).
#   *Normalizing Flows for Probabilistic Modeling and Inference.* JMLR 22(57).
# * S. Zhai, R. Zhang, P. Nakkiran, D. Berthelot, J. Gu, H. Zheng, T. Chen, M. A. Bautista,
#   N. Jaitly and J. Susskind (2024). *Normalizing Flows are Capable Generative Models.*
#   arXiv:2412.06329 (ICML 2025).

# %% tags=["nbval-ignore-output"]
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s wall-clock, {time.process_time():.0f} s of CPU "
      f"time (this process)")
