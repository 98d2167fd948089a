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
# # Lecture 7: conditional flows, and what flows are used for
#
# Every flow so far modelled one density, $p_X(x)$. Most uses of a generative model ask for a
# *family* of densities instead: the digits of one class, the images that agree with the
# pixels we can see, the faces with a smile. A **conditional flow** is a flow whose map reads
# a second input, the *context* $c$, and this lecture shows how little that changes and how
# much it buys:
#
# 1. **conditioning, from the toy up**: a neural spline flow on a 2D toy whose shape turns
#    with a scalar $c$; where the context enters a coupling; you derive why the Jacobian is
#    taken with respect to $x$ only, write the conditional affine coupling that trains a
#    second model of the toy, find the bug of a conditional flow whose loss beats the truth,
#    and design a conditional flow under a budget;
# 2. **class-conditional Glow** on MNIST and Fashion-MNIST: samples of each class at several
#    temperatures, and the same model as a classifier by Bayes' rule,
#    $p(y \mid x) \propto p(x \mid y)\, p(y)$;
# 3. **attribute edits**, the way Glow edited faces: move the latent along the difference of
#    the mean latents of images with and without an attribute (thick strokes, a slant, a class);
# 4. **what each scale holds**: resample the latents of one level of a multi-scale flow and
#    keep the others (the experiment of Dinh et al., 2017);
# 5. an **inverse problem**, inpainting: complete a digit from the pixels we see, with the
#    unconditional flow (search or sampling in latent space) and with a flow conditioned on the
#    observed pixels, compared on the same masked test images;
# 6. **where likelihoods fail**: a flow trained on Fashion-MNIST gives MNIST digits a *higher*
#    likelihood than its own test images (Nalisnick et al., 2019), and remedies, measured.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ (the
# normalizing direction), $p_Z$ the base density and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f / \partial x\right|$. A conditional flow is one
# bijection $x \mapsto f(x; c)$ **for each value** of $c$, and its density is the change of
# variables at that fixed $c$:
# $$p_X(x \mid c) = p_Z\big(f(x; c) \mid c\big)\,\left|\det \frac{\partial f(x; c)}{\partial x}\right| ,$$
# the Jacobian taken with respect to $x$ only (Winkler et al., 2019; Papamakarios et al.,
# 2021). The base density may depend on $c$ too; Glow's class-conditional model
# learns a Gaussian $p_Z(z \mid c) = \mathcal N(\mu(c), \operatorname{diag} \sigma(c)^2)$
# (Kingma & Dhariwal, 2018).

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. With the environment variable `CI` set, every cell
# still runs, with the shortest training that exercises it; on a GPU the models train longer.
# Model sizes are the same in every mode, and so is the budget of every exercise.

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: train at full size (change to True/False to override)
TOY_STEPS = 60 if SMOKE else (5000 if FULL else 1500)  # steps of the conditional NSF on the toy (section 1)
COUPLING_STEPS = 40 if SMOKE else (3000 if FULL else 800)  # steps of your conditional couplings (section 1)
BUG_STEPS = 300  # steps of the two models of Exercise 3 (section 1; a second each, the same in every mode)
GRID = 60 if SMOKE else 150  # resolution of the density pictures
MNIST_DOWNLOAD = not SMOKE  # may the loaders fetch MNIST / Fashion-MNIST when no local copy exists?
# Small networks: on a shared 2-core machine (Binder) one thread is fastest, because threads
# that compete for the cores cost more than they bring.
torch.set_num_threads(1)

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from flowlib.conditional import ContextPrior
from flowlib.core import Compose, Flow, FlowModel
from flowlib.coupling import Coupling, half_mask
from flowlib.data import DatasetError, load_images, load_mnist
from flowlib.distributions import StandardNormal
from flowlib.grading import (
    autograd_logabsdet,
    check_choice,
    check_close,
    check_own_work,
    check_vectorised,
    hint,
    yours_or_reference,
)
from flowlib.image_models import count_parameters
from flowlib.metrics import density_on_grid
from flowlib.models import nsf
from flowlib.nets import MLP
from flowlib.permutations import ReversePermutation
from flowlib.train import fit
from flowlib.transformers import Affine, soft_clamp
from flowlib.viz import image_grid, plot_density_2d

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})
T_START = time.perf_counter()

# %% [markdown]
# ## Data
# MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): $28 \times 28$
# grey images in 256 levels, ten classes each, 60 000 training and 10 000 test images. Where no
# copy can be found, the sections that need them say so and are skipped.

# %% tags=["nbval-ignore-output"]
try:
    mnist_train, mnist_train_labels = load_mnist("train", download=MNIST_DOWNLOAD)
    mnist_test, mnist_test_labels = load_mnist("test", download=MNIST_DOWNLOAD)
except DatasetError as err:
    mnist_train = mnist_train_labels = mnist_test = mnist_test_labels = None
    print(f"MNIST is not available here, so the sections on it are skipped ({type(err).__name__}): {err}")
try:
    fashion_train, fashion_train_labels = load_images("fashion-mnist", "train", download=MNIST_DOWNLOAD)
    fashion_test, fashion_test_labels = load_images("fashion-mnist", "test", download=MNIST_DOWNLOAD)
except DatasetError as err:
    fashion_train = fashion_train_labels = fashion_test = fashion_test_labels = None
    print(f"Fashion-MNIST is not available here, so the sections on it are skipped ({type(err).__name__}): {err}")
for _name, _images in (("MNIST", mnist_train), ("Fashion-MNIST", fashion_train)):
    if _images is not None:
        print(f"{_name}: {tuple(_images.shape)} training images, {_images.dtype}, values 0..{int(_images.max())}")

# %% [markdown]
# ## 1. Conditioning, from the toy up
#
# The toy: a crescent, half of a ring of radius 1.5, whose position on the ring turns with a
# scalar context $c \in [-1, 1]$. Given $c$, draw an angle $\theta$ uniformly from
# $[\tfrac{\pi}{2} c,\ \pi + \tfrac{\pi}{2} c]$ and a radius $r \sim \mathcal N(1.5, 0.15^2)$;
# then $x = (r \cos\theta, r \sin\theta)$. So $c = 0$ is the upper half of the ring, $c = 1$
# the left half, $c = -1$ the right half, and every $c$ in between is a crescent of its own.
# One model must learn all of them: its training data are pairs $(x, c)$ with $c$ uniform on
# $[-1, 1]$, and it minimises $-\log p_X(x \mid c)$ averaged over the pairs.

# %%
def crescent(c: Tensor, generator: torch.Generator) -> Tensor:
    """One point x of the crescent for each context c (shape (n, 1)): returns (n, 2)."""
    n = c.shape[0]
    theta = math.pi * torch.rand(n, generator=generator) + 0.5 * math.pi * c[:, 0]
    r = 1.5 + 0.15 * torch.randn(n, generator=generator)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


_g = torch.Generator().manual_seed(0)
toy_c = 2 * torch.rand(20_000, 1, generator=_g) - 1
toy_x = crescent(toy_c, _g)
toy_train, toy_val = (toy_x[:18_000], toy_c[:18_000]), (toy_x[18_000:], toy_c[18_000:])
TOY_CONTEXTS = (-1.0, 0.0, 1.0)
# The conditional entropy of the toy, E[-log p(x | c)], is the same for every c: in polar
# coordinates r and theta are independent, and dx = r dr dtheta, so
# H = log(pi) + H(N(1.5, 0.15^2)) + E[log r] (computed here by Monte Carlo for E[log r]).
_r = 1.5 + 0.15 * torch.randn(1_000_000, generator=_g)
TOY_ENTROPY = math.log(math.pi) + 0.5 * math.log(2 * math.pi * math.e * 0.15**2) + float(_r.log().mean())
fig, axes = plt.subplots(1, 3, figsize=(9, 3), sharex=True, sharey=True)
for ax, c in zip(axes, TOY_CONTEXTS, strict=True):
    points = crescent(torch.full((1000, 1), c), _g)
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4)
    ax.set(title=f"data at c = {c:+.0f}", xlim=(-2.2, 2.2), ylim=(-2.2, 2.2), aspect="equal")
plt.show()
print(f"the toy's conditional entropy: {TOY_ENTROPY:.3f} nats (the best loss any model can reach)")

# %% [markdown]
# A conditional neural spline flow (`nsf(2, context_shape=(1,))`, Durkan et al., 2019): four
# rational-quadratic spline couplings, each conditioner an MLP that reads the kept coordinate
# **and** $c$, and a learned Gaussian prior $\mathcal N(\mu(c), \sigma(c)^2)$ at the end. The
# same code as lecture 6's unconditional NSF, with one keyword.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
toy_nsf = nsf(2, layers=4, hidden=32, context_shape=(1,))
t0, cpu0 = time.perf_counter(), time.process_time()
toy_fit = fit(toy_nsf, toy_train, val_data=toy_val, steps=TOY_STEPS, batch_size=256, lr=3e-3, seed=0, device=DEVICE)
toy_nsf.cpu().eval()
print(f"{count_parameters(toy_nsf):,} parameters, {TOY_STEPS} steps in {time.process_time() - cpu0:.0f} CPU-s; "
      f"validation loss {toy_fit.best_val:.3f} nats (the floor: {TOY_ENTROPY:.3f})")


# %%
def draw_conditional(model: FlowModel, title: str) -> None:
    """The model's density p(x | c) at the three contexts, side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.1), sharex=True, sharey=True)
    for ax, c in zip(axes, TOY_CONTEXTS, strict=True):
        context = torch.tensor([c])
        with torch.no_grad():
            plot_density_2d(lambda x, context=context: model.log_prob(x, context), bounds=2.2,
                            resolution=GRID, ax=ax, title=f"c = {c:+.0f}")
    fig.suptitle(title)
    plt.show()


draw_conditional(toy_nsf, "a conditional NSF: p(x | c) at three contexts")

# %% [markdown]
# One network, three densities: nothing in the model is specific to $c = -1, 0, 1$; they are
# three points of a continuum it learnt from pairs in which no two contexts were equal.
#
# **Where the context enters.** Read `flowlib.conditional` and `flowlib.coupling`: a coupling
# keeps $x_A$, and its conditioner computes the parameters $h$ of the transformer from
# $x_A$ *and* $c$,
# $$z_A = x_A, \qquad z_B = \tau\big(x_B;\ h(x_A, c)\big), \qquad h(x_A, c) = \mathrm{NN}\big([x_A, c]\big),$$
# the context simply concatenated to the conditioner's input (for images, `context_map`
# repeats a vector context at every pixel, or brings an image context to the layer's
# resolution). The layer's Jacobian with respect to $x$ is still triangular, with
# $\tau'(x_B; h)$ on its diagonal, whatever the conditioner does with $c$: the conditioner is
# never inverted, so it may read anything that is fixed while we go from $x$ to $z$ and back.
# The prior at the end, `ContextPrior`, is one more bijection,
# $\varepsilon = (z - \mu(c))\, e^{-\log\sigma(c)}$, with a standard normal on $\varepsilon$.

# %%
print(toy_nsf.flow.flows[1])
print(toy_nsf.flow.flows[-1])

# %% [markdown]
# ### Exercise 1: why the Jacobian is taken with respect to $x$ only (a derivation)
#
# Take this conditional flow on $x = (x_1, x_2)$ with a scalar context $c$, one layer and a
# standard normal base:
# $$z_1 = x_1\, e^{c} + c, \qquad z_2 = x_2\, e^{s(x_1, c)} + t(x_1, c), \qquad
#   s(x_1, c) = \tanh(c\, x_1), \quad t(x_1, c) = c\, x_1 .$$
# (The first line is a context-dependent scaling, like an ActNorm whose scale and shift are
# computed from $c$; the second a conditional affine coupling.)
#
# 1. Derive $\log p_X(x \mid c)$ in closed form, and write it as `toy_log_density(x, c)`: `x`
#    of shape `(n, 2)`, `c` of shape `(n, 1)`, one value per row, with torch operations
#    (vectorised: no Python loop over the rows), without automatic differentiation and
#    without flowlib.
# 2. Why not the Jacobian of $(x, c) \mapsto z$, or a term for $\partial z / \partial c$? Think
#    of what must hold for every fixed $c$: $\int p_X(x \mid c)\, dx = 1$. Writing the map
#    as $(x, c) \mapsto (f(x; c), c)$, a bijection of $(x, c)$, also helps: what is the
#    determinant of its Jacobian?
#
# The test compares your density with the change of variables done by automatic
# differentiation at fixed $c$, and integrates it over a grid for several contexts: each
# integral must be 1.

# %% nbgrader={"grade": false, "grade_id": "07-ex1-conditional-density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def toy_log_density(x: Tensor, c: Tensor) -> Tensor:
    """log p_X(x | c) of the one-layer conditional flow above (standard normal base), shape (n,)."""
    ### BEGIN SOLUTION
    # The Jacobian with respect to x is triangular: dz_1/dx_1 = e^c, dz_2/dx_2 = e^s, and
    # dz_2/dx_1 does not enter the determinant. Terms in dz/dc do not belong: at fixed c the
    # map is a bijection of x, and only its x-Jacobian keeps the density normalised in x.
    x1, x2, c = x[:, 0], x[:, 1], c[:, 0]
    s = torch.tanh(c * x1)
    z1 = x1 * torch.exp(c) + c
    z2 = x2 * torch.exp(s) + c * x1
    return -0.5 * (z1**2 + z2**2) - math.log(2 * math.pi) + c + s
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "07-ex1-conditional-density-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_1 = ("At a fixed c the map x -> z is a bijection of the plane; its Jacobian with respect to x is triangular. "
          "Which entries are on its diagonal? The base is a standard normal in 2D: "
          "log N(z; 0, I) = -|z|^2 / 2 - log(2 pi). Derivatives with respect to c do not enter.")


def _exercise1_map(x: Tensor, c: Tensor) -> Tensor:
    """The flow of Exercise 1, written out, for autograd (c a float or a tensor broadcast over the rows)."""
    x1, x2 = x[:, 0], x[:, 1]
    return torch.stack([x1 * math.exp(c) + c, x2 * torch.exp(torch.tanh(c * x1)) + c * x1], dim=1)


def _exercise1_reference(x: Tensor, c: float) -> Tensor:
    z = _exercise1_map(x, c)
    log_base = -0.5 * (z**2).sum(1) - math.log(2 * math.pi)
    return log_base + autograd_logabsdet(lambda v: _exercise1_map(v, c), x)


def _check_exercise1(seed: int, n: int, contexts: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    for c in contexts:
        x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5
        with hint(HINT_1):
            mine = toy_log_density(x, torch.full((n, 1), c, dtype=torch.float64))
        check_close(mine, _exercise1_reference(x, c), f"At c = {c}, your log-density differs from the change of "
                    f"variables at fixed c. {HINT_1}", atol=1e-8)


def _integral(c: float, half_width: float = 12.0, points: int = 1201) -> float:
    """The integral of exp(toy_log_density(., c)) over [-w, w]^2, by the trapezoid rule."""
    u = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    with hint(HINT_1):
        values = toy_log_density(grid, torch.full((grid.shape[0], 1), c, dtype=torch.float64)).exp()
    return float(torch.trapezoid(torch.trapezoid(values.reshape(points, points), u, dim=1), u))


_check_exercise1(seed=0, n=5, contexts=(0.0, 0.5, -1.0))
for _c in (0.0, 0.8):
    _total = _integral(_c)
    assert abs(_total - 1) < 1e-3, (f"At c = {_c}, your density integrates to {_total:.4f} over the plane, not 1. "
                                    f"{HINT_1}")
with hint(HINT_1):
    check_vectorised(toy_log_density, lambda n: (torch.randn(n, 2), torch.rand(n, 1)),
                     "Compute all the rows at once, with tensor operations.")
    check_own_work(toy_log_density, torch.randn(4, 2), torch.rand(4, 1),
                   message="Write the density yourself, with torch operations (not with flowlib).")
_probe = torch.randn(3, 2, requires_grad=True)
with hint(HINT_1):
    _out = toy_log_density(_probe, torch.rand(3, 1))
assert _out.shape == (3,), f"Return one value per row: shape (3,), got {tuple(_out.shape)}."
### BEGIN HIDDEN TESTS
for _seed in (11, 12, 13):
    _check_exercise1(seed=_seed, n=3 + _seed, contexts=(float(torch.empty(1).uniform_(-1.5, 1.5,
                     generator=torch.Generator().manual_seed(_seed))), 1.3, -0.4))
for _c in (-0.3, 0.4, 1.2):
    _total = _integral(_c)
    assert abs(_total - 1) < 1e-3, (f"At c = {_c}, your density integrates to {_total:.4f} over the plane, not 1. "
                                    f"{HINT_1}")
### END HIDDEN TESTS
print("Exercise 1 passed")

# %% [markdown]
# The reason, in one line: at a fixed $c$ the map $x \mapsto f(x; c)$ is an ordinary flow, so
# the change of variables of lecture 1 holds for it as it stands, and $p_X(\cdot \mid c)$
# integrates to one for every $c$. Equivalently, the map $(x, c) \mapsto (f(x; c), c)$ has the
# block-triangular Jacobian
# $\begin{pmatrix} \partial f / \partial x & \partial f / \partial c \\ 0 & I \end{pmatrix}$,
# whose determinant is $\det \partial f / \partial x$: the block $\partial f / \partial c$ sits
# above the diagonal and never counts.
#
# ### Exercise 2: a conditional affine coupling (an implementation used later)
#
# Write the conditional version of RealNVP's affine coupling (lecture 4) for points of the
# plane, in both directions. `x` has shape `(n, 2)`, the context `c` shape `(n, k)` (any
# $k \geq 1$), and `conditioner` is a network that reads `(n, 1 + k)` and returns `(n, 2)`:
#
# * the layer keeps $x_1$ (column 0) and moves $x_2$ (column 1);
# * the conditioner reads the kept coordinate and the context, side by side in that order,
#   and returns a raw log-scale (column 0) and a shift $t$ (column 1);
# * the log-scale is $s = $ `soft_clamp(s_raw, 2.0)` (from `flowlib.transformers`, the bounded
#   log-scale of lecture 4), and the transformer is affine in $x_2$;
# * `conditional_coupling(x, c, conditioner)` returns $z = f(x; c)$ and
#   $\log\left|\det \partial f(x; c) / \partial x\right|$, shape `(n,)`;
#   `conditional_coupling_inverse(z, c, conditioner)` returns $x = f^{-1}(z; c)$ and the
#   log-determinant of the inverse map, shape `(n,)`;
# * vectorised, with torch operations (flowlib's `Coupling` does this: the test refuses it).
#
# Your two functions are the layers of a second model of the toy, right below: six of your
# couplings, with the coordinates swapped between them, and the learned prior at the end.

# %% nbgrader={"grade": false, "grade_id": "07-ex2-conditional-coupling", "locked": false, "schema_version": 3, "solution": true, "task": false}
def conditional_coupling(x: Tensor, c: Tensor, conditioner) -> tuple[Tensor, Tensor]:
    """z = f(x; c) of a conditional affine coupling that keeps x_1, and log|det df/dx|, shape (n,)."""
    ### BEGIN SOLUTION
    kept, moved = x[:, :1], x[:, 1:]
    h = conditioner(torch.cat([kept, c], dim=1))
    s, t = soft_clamp(h[:, :1], 2.0), h[:, 1:]
    return torch.cat([kept, moved * torch.exp(s) + t], dim=1), s[:, 0]
    ### END SOLUTION


def conditional_coupling_inverse(z: Tensor, c: Tensor, conditioner) -> tuple[Tensor, Tensor]:
    """x = f^{-1}(z; c) of the same layer, and the log-determinant of the inverse map, shape (n,)."""
    ### BEGIN SOLUTION
    kept, moved = z[:, :1], z[:, 1:]
    h = conditioner(torch.cat([kept, c], dim=1))
    s, t = soft_clamp(h[:, :1], 2.0), h[:, 1:]
    return torch.cat([kept, (moved - t) * torch.exp(-s)], dim=1), -s[:, 0]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "07-ex2-conditional-coupling-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_2 = ("Keep column 0 as it is; the conditioner reads torch.cat([x[:, :1], c], dim=1) and returns (s_raw, t) in "
          "its two columns; s = soft_clamp(s_raw, 2.0); the moved coordinate is x_2 e^s + t. The Jacobian is "
          "triangular: what is on its diagonal? The inverse undoes the affine map with the same s and t, computed "
          "from the kept coordinate, which the layer did not change.")


def _hand_conditioner(u: Tensor) -> Tensor:
    """A conditioner whose output is known by hand: u = [x_1, c_1, ..., c_k]."""
    return torch.stack([u[:, 0] * u[:, 1:].sum(1) + 0.3, torch.sin(u[:, 0]) - 2 * u[:, 1:].sum(1)], dim=1)


def _check_exercise2(net, n: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    c = torch.randn(n, k, generator=g, dtype=torch.float64)
    with hint(HINT_2):
        z, logdet = conditional_coupling(x, c, net)
    h = net(torch.cat([x[:, :1], c], 1))
    s = (4 / math.pi) * torch.atan(h[:, 0] / 2)  # soft_clamp(., 2), written out
    check_close(z, torch.stack([x[:, 0], x[:, 1] * torch.exp(s) + h[:, 1]], 1),
                f"z = f(x; c) is not the conditional affine coupling (n = {n}, k = {k}). {HINT_2}", atol=1e-9)
    for row in range(min(n, 3)):  # autograd at each row's own context
        fixed = c[row:row + 1]
        expected = autograd_logabsdet(lambda v, fixed=fixed: conditional_coupling(v, fixed, net)[0], x[row:row + 1])
        check_close(logdet[row:row + 1], expected, f"Row {row}: log|det df/dx| differs from autograd's. {HINT_2}",
                    atol=1e-9)
    with hint(HINT_2):
        back, logdet_inverse = conditional_coupling_inverse(z, c, net)
    check_close(back, x, f"The inverse does not give x back (n = {n}, k = {k}). {HINT_2}", atol=1e-9)
    check_close(logdet_inverse, -logdet, f"The inverse's log-determinant should be minus the forward one. {HINT_2}",
                atol=1e-9)


_check_exercise2(_hand_conditioner, n=4, k=1, seed=0)
_check_exercise2(_hand_conditioner, n=5, k=3, seed=1)
_probe_x, _probe_c = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0]])
with hint(HINT_2):
    _z, _ld = conditional_coupling(_probe_x, _probe_c, lambda u: torch.stack([u[:, 1] * 0, u[:, 1]], 1))
check_close(_z, torch.tensor([[0.5, 1.0]]), f"With s = 0 and t = c = 2, z_2 = -1 + 2 = 1. {HINT_2}")
with hint(HINT_2):
    check_vectorised(conditional_coupling, lambda n: (torch.randn(n, 2), torch.randn(n, 1), _hand_conditioner),
                     "Transform all the rows at once, with tensor operations.")
    check_vectorised(conditional_coupling_inverse, lambda n: (torch.randn(n, 2), torch.randn(n, 1), _hand_conditioner),
                     "Invert all the rows at once, with tensor operations.")
    _mlp = MLP(2, 2, hidden=8)
    for _fn in (conditional_coupling, conditional_coupling_inverse):
        check_own_work(_fn, torch.randn(3, 2), torch.randn(3, 1), _mlp,
                       allowed=("flowlib.nets", "flowlib.transformers.soft_clamp"),
                       message="Write the coupling with torch operations (not with flowlib's Coupling).")
### BEGIN HIDDEN TESTS
for _seed in (21, 22, 23):
    torch.manual_seed(_seed)
    _k = 1 + _seed % 3
    _net = MLP(1 + _k, 2, hidden=16).double()
    with torch.no_grad():  # random last layer, so the layer moves
        _net.net[-1].weight.normal_(0, 0.7)
        _net.net[-1].bias.normal_(0, 0.7)
    _check_exercise2(_net, n=2 + 3 * _seed % 7, k=_k, seed=_seed)
### END HIDDEN TESTS
print("Exercise 2 passed")

# %% [markdown]
# Your coupling as a layer: the conditioner (an MLP of two hidden layers of 32 units, reading
# $x_1$ and $c$) is the layer's weights, and your function is its forward and inverse pass.
# Six layers with the coordinates reversed between them, and the learned prior, trained on the
# same pairs as the NSF above.

# %%
class MyConditionalCoupling(Flow):
    """A conditional affine coupling on the plane that keeps x_1, computed by Exercise 2."""

    takes_context = True

    def __init__(self, context_features: int = 1, hidden: int = 32) -> None:
        super().__init__((2,))
        self.conditioner = MLP(1 + context_features, 2, hidden=hidden, layers=2)
        reference = Coupling(half_mask(2, 0), self.conditioner, Affine(2.0), context_features=context_features)
        self._forward = yours_or_reference(conditional_coupling, lambda x, c, net: reference(x, c), "Exercise 2")
        self._inverse = yours_or_reference(conditional_coupling_inverse, lambda z, c, net: reference.inverse(z, c),
                                           "Exercise 2")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._forward(x, context, self.conditioner)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._inverse(z, context, self.conditioner)


def my_conditional_flow(couplings: int = 6) -> FlowModel:
    layers = []
    for k in range(couplings):
        layers += [ReversePermutation(2)] if k else []
        layers.append(MyConditionalCoupling())
    return FlowModel(Compose([*layers, ContextPrior((2,), 1)]), StandardNormal(2), context_shape=(1,))


# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
my_toy_flow = my_conditional_flow()
cpu0 = time.process_time()
my_toy_fit = fit(my_toy_flow, toy_train, val_data=toy_val, steps=COUPLING_STEPS, batch_size=256, lr=3e-3, seed=0)
my_toy_flow.eval()
print(f"your couplings: {count_parameters(my_toy_flow):,} parameters, {COUPLING_STEPS} steps in "
      f"{time.process_time() - cpu0:.0f} CPU-s; validation loss {my_toy_fit.best_val:.3f} nats "
      f"(the NSF: {toy_fit.best_val:.3f}; the floor: {TOY_ENTROPY:.3f})")

# %%
draw_conditional(my_toy_flow, "six of your conditional affine couplings: p(x | c)")

# %% [markdown]
# Both models come close to the floor, the affine couplings with fewer steps and a slightly
# higher validation loss than the splines (the numbers above): on this toy a stack of affine
# couplings is enough, and the context does its work the same way in both, one set of weights,
# a different density for each $c$. If your coupling had a mistake that the test let through,
# it would show here, in the loss and in the three pictures.

# %% [markdown]
# ### Exercise 3: a conditional flow that beats the truth (debugging)
#
# A colleague wrote the learned prior $p_Z(z \mid c) = \mathcal N(\mu(c), \operatorname{diag}\sigma(c)^2)$
# by hand, as the last layer of a conditional flow, $\varepsilon = (z - \mu(c))\, e^{-\log\sigma(c)}$
# with a standard normal on $\varepsilon$; $\mu(c)$ and $\log\sigma(c)$ come from a linear map of
# the context, $\log\sigma$ softly bounded by $5 \tanh(\cdot / 5)$. Put after four of flowlib's
# conditional affine couplings and trained on the crescents, the model reaches a validation loss
# far **below** the toy's conditional entropy, the smallest loss any density can have. Something
# is wrong, and the loss alone cannot say what.

# %%
class HandWrittenPrior(Flow):
    """The prior N(mu(c), sigma(c)^2) on the plane as a last layer, written by hand (it has a bug)."""

    takes_context = True

    def __init__(self, context_features: int = 1) -> None:
        super().__init__((2,))
        self.net = torch.nn.Linear(context_features, 4)  # (mu_1, mu_2, raw log sigma_1, raw log sigma_2)
        torch.nn.init.zeros_(self.net.weight)
        torch.nn.init.zeros_(self.net.bias)

    def params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self.net(context).chunk(2, dim=1)
        return mu, 5.0 * torch.tanh(raw / 5.0)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.params(context)
        return (z - mu) * torch.exp(-log_sigma), log_sigma.sum(1)

    def inverse(self, eps: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.params(context)
        return mu + torch.exp(log_sigma) * eps, -log_sigma.sum(1)


def couplings_then(prior: Flow, couplings: int = 4) -> FlowModel:
    """Four of flowlib's conditional affine couplings (the coordinates reversed between them), then ``prior``."""
    layers = []
    for k in range(couplings):
        mask = half_mask(2, k % 2)
        net = MLP(*Coupling.conditioner_sizes(mask, Affine, 1), hidden=32, layers=2)
        layers.append(Coupling(mask, net, Affine(2.0), context_features=1))
    return FlowModel(Compose([*layers, prior]), StandardNormal(2), context_shape=(1,))


# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
buggy_flow = couplings_then(HandWrittenPrior())
buggy_fit = fit(buggy_flow, toy_train, val_data=toy_val, steps=BUG_STEPS, batch_size=256, lr=3e-3, seed=0)
buggy_flow.eval()
_side = "below" if buggy_fit.best_val < TOY_ENTROPY else "above"
print(f"validation loss {buggy_fit.best_val:.3f} nats, {_side} the floor of {TOY_ENTROPY:.3f}")

# %% [markdown]
# Find the bug with a check that does not trust the model's own accounting: a density must
# integrate to one, here at every fixed context.
#
# * (a) Write `integral_over_plane(log_density, half_width, points)`: an estimate of
#   $\int_{[-L, L]^2} \exp(\text{log\_density}(x))\, dx$ on a grid of `points` $\times$ `points`
#   nodes or cells ($L$ = `half_width`), as a Python float. `log_density` takes a batch
#   `(n, 2)` and returns `(n,)`; call it once, on all the grid points. Any rule of quadrature
#   whose error shrinks with the grid will do (flowlib's `density_on_grid` is refused: write
#   the grid yourself). The cell after the test applies it to the buggy model at three contexts.
# * (b) Write `prior_forward(z, c, net)`, the forward pass of a correct `HandWrittenPrior`: `net` is
#   its linear map, as in `HandWrittenPrior.params`; return $\varepsilon$ and
#   $\log\left|\det \partial\varepsilon / \partial z\right|$, shape `(n,)`. The test compares
#   with autograd and integrates your prior's density.
# * (c) `name_the_bug()`: what was wrong? **a**: $\mu(c)$ should be added, not subtracted;
#   **b**: the sign of the log-determinant; **c**: the network reads the context where it
#   should read $z$; **d**: the bound on $\log\sigma$ lets $\sigma$ grow too large.

# %% nbgrader={"grade": false, "grade_id": "07-ex3a-integral", "locked": false, "schema_version": 3, "solution": true, "task": false}
def integral_over_plane(log_density, half_width: float, points: int) -> float:
    """The integral of exp(log_density(x)) over the square [-half_width, half_width]^2, as a float."""
    ### BEGIN SOLUTION
    # The midpoint rule: cell centres, each cell of area (2L / points)^2.
    width = 2 * half_width / points
    centres = -half_width + width * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        values = log_density(grid.to(torch.get_default_dtype())).double().exp()
    return float(values.sum() * width**2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "07-ex3a-integral-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_3A = ("Build the grid yourself (torch.linspace or cell centres, torch.meshgrid, then reshape to (points^2, 2)), "
           "evaluate exp(log_density) once on all of it, and sum with the weight of each node: the area of its cell "
           "(2 L / points)^2 for the midpoint rule. Return float(...).")


def _scaled_gaussian(mean: tuple[float, float], scale: tuple[float, float], mass: float):
    mean_t, scale_t = torch.tensor(mean), torch.tensor(scale)

    def log_density(x: Tensor) -> Tensor:
        u = (x - mean_t.to(x.dtype)) / scale_t.to(x.dtype)
        return math.log(mass) - 0.5 * (u**2).sum(1) - math.log(2 * math.pi) - scale_t.log().sum().to(x.dtype)
    return log_density


def _check_integral(mean, scale, mass, half_width, points, tol) -> None:
    with hint(HINT_3A):
        mine = integral_over_plane(_scaled_gaussian(mean, scale, mass), half_width, points)
        assert isinstance(mine, float), f"Return a Python float, got {type(mine).__name__}. {HINT_3A}"
    assert abs(mine - mass) < tol, (f"A Gaussian of mass {mass} (mean {mean}, scales {scale}) on [-{half_width}, "
                                    f"{half_width}]^2 with {points} points: you return {mine:.5f}. {HINT_3A}")


_check_integral((0.5, -0.3), (0.5, 1.0), 3.0, half_width=7.0, points=200, tol=3e-3)
_check_integral((0.0, 0.0), (0.2, 0.2), 1.0, half_width=2.0, points=150, tol=1e-3)
_calls = []
with hint(HINT_3A):
    integral_over_plane(lambda x: _calls.append(x.shape) or torch.zeros(x.shape[0]), 1.0, 20)
    assert len(_calls) == 1 and _calls[0] == (400, 2), (
        f"Call log_density once, on all the points^2 = 400 grid points as a (400, 2) batch; your calls had "
        f"shapes {_calls}. {HINT_3A}")
    check_own_work(integral_over_plane, _scaled_gaussian((0.0, 0.0), (1.0, 1.0), 1.0), 3.0, 30,
                   message="Write the grid and the sum yourself (not with flowlib's density_on_grid).")
### BEGIN HIDDEN TESTS
_g3 = torch.Generator().manual_seed(31)
for _ in range(3):
    _mean = tuple(float(v) for v in torch.empty(2).uniform_(-1, 1, generator=_g3))
    _scale = tuple(float(v) for v in torch.empty(2).uniform_(0.3, 1.2, generator=_g3))
    _mass = float(torch.empty(1).uniform_(0.2, 5, generator=_g3))
    _points = int(torch.randint(150, 260, (1,), generator=_g3))
    _check_integral(_mean, _scale, _mass, half_width=8.0, points=_points, tol=3e-3 * _mass)
### END HIDDEN TESTS
print("Exercise 3 (a) passed")


# %% tags=["nbval-ignore-output"]
def _reference_integral(log_density, half_width: float, points: int) -> float:
    density = density_on_grid(log_density, half_width, resolution=points)[2]
    return float(density.double().sum()) * (2 * half_width / points) ** 2


integral = yours_or_reference(integral_over_plane, _reference_integral, "Exercise 3 (a)")
for c in TOY_CONTEXTS:
    with torch.no_grad():
        total = integral(lambda x, c=c: buggy_flow.log_prob(x, torch.tensor([c])), 6.0, 300)
        total_nsf = integral(lambda x, c=c: toy_nsf.log_prob(x, torch.tensor([c])), 6.0, 300)
    print(f"c = {c:+.0f}: the buggy model's density integrates to {total:10.4g}; the NSF's to {total_nsf:.4f}")


# %% nbgrader={"grade": false, "grade_id": "07-ex3b-fixed-prior", "locked": false, "schema_version": 3, "solution": true, "task": false}
def prior_forward(z: Tensor, c: Tensor, net) -> tuple[Tensor, Tensor]:
    """eps = (z - mu(c)) / sigma(c) and log|det d eps / d z|, shape (n,), with mu, log sigma from net as above."""
    ### BEGIN SOLUTION
    mu, raw = net(c).chunk(2, dim=1)
    log_sigma = 5.0 * torch.tanh(raw / 5.0)
    return (z - mu) * torch.exp(-log_sigma), -log_sigma.sum(1)
    ### END SOLUTION


def name_the_bug() -> str:
    """"a", "b", "c" or "d" (see the list above)."""
    ### BEGIN SOLUTION
    return "b"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "07-ex3b-fixed-prior-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_3B = ("eps = (z - mu) e^{-log sigma} divides each coordinate by sigma: what does that do to areas, and so to "
           "log|det d eps / d z|? Take mu and log sigma from net(c) exactly as HandWrittenPrior.params does "
           "(the bound 5 tanh(raw / 5) included).")


def _random_prior_net(seed: int, k: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    net = torch.nn.Linear(k, 4).double()
    with torch.no_grad():
        net.weight.normal_(0, 1.0)
        net.bias.normal_(0, 0.5)
    return net


def _check_prior(seed: int, n: int, k: int) -> None:
    net = _random_prior_net(seed, k)
    g = torch.Generator().manual_seed(seed)
    z, c = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, k, generator=g, dtype=torch.float64)
    with hint(HINT_3B):
        eps, logdet = prior_forward(z, c, net)
    mu, raw = net(c).chunk(2, dim=1)
    check_close(eps, (z - mu) * torch.exp(-5 * torch.tanh(raw / 5)), f"eps is not (z - mu(c)) / sigma(c). {HINT_3B}",
                atol=1e-9)
    for row in range(min(n, 3)):
        fixed = c[row:row + 1]
        expected = autograd_logabsdet(lambda v, fixed=fixed: prior_forward(v, fixed, net)[0], z[row:row + 1])
        check_close(logdet[row:row + 1], expected, f"Row {row}: log|det d eps/dz| differs from autograd's. {HINT_3B}",
                    atol=1e-9)


_check_prior(0, n=4, k=1)
_net3 = _random_prior_net(1, 1)
with torch.no_grad():
    _c3 = torch.tensor([[0.7]], dtype=torch.float64)

    def _prior_log_density(z: Tensor) -> Tensor:
        with hint(HINT_3B):
            eps, logdet = prior_forward(z.double(), _c3.expand(z.shape[0], 1), _net3)
        return -0.5 * (eps**2).sum(1) - math.log(2 * math.pi) + logdet

    _mu3, _raw3 = _net3(_c3).chunk(2, dim=1)
    _width = float(6 * torch.exp(5 * torch.tanh(_raw3 / 5)).max() + _mu3.abs().max())
    _total3 = _reference_integral(_prior_log_density, _width, 400)
assert abs(_total3 - 1) < 1e-2, f"Your prior's density integrates to {_total3:.4f} over the plane, not 1. {HINT_3B}"
with hint(HINT_3B):
    _bug = check_choice(name_the_bug(), ["a", "b", "c", "d"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
for _seed, (_n, _k) in enumerate([(1, 1), (6, 3), (9, 2)]):
    _check_prior(40 + _seed, n=_n, k=_k)
assert _bug == "b", ("Not that one: the buggy layer and the fixed one differ in one place; compare them line by line. "
                     + HINT_3B)
### END HIDDEN TESTS
print("Exercise 3 (b, c) passed")

# %% [markdown]
# With your `prior_forward` in place of the buggy one, the same couplings train to a loss
# above the floor, as a density must.

# %%
class FixedPrior(HandWrittenPrior):
    """HandWrittenPrior with the forward pass of Exercise 3 (b)."""

    def __init__(self, context_features: int = 1) -> None:
        super().__init__(context_features)
        reference = ContextPrior((2,), context_features)
        reference.net = self.net  # the same weights
        self._forward = yours_or_reference(prior_forward, lambda z, c, net: reference(z, c), "Exercise 3 (b)")
        self._inverse = reference.inverse

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._forward(z, context, self.net)

    def inverse(self, eps: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._inverse(eps, context)


# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
fixed_flow = couplings_then(FixedPrior())
fixed_fit = fit(fixed_flow, toy_train, val_data=toy_val, steps=BUG_STEPS, batch_size=256, lr=3e-3, seed=0)
fixed_flow.eval()
print(f"validation loss {fixed_fit.best_val:.3f} nats (the floor: {TOY_ENTROPY:.3f})")

# %% [markdown]
# ### Exercise 4: a conditional flow of the crescents under a budget (design)
#
# Design a conditional flow of the toy, $p_X(x \mid c)$ with a scalar context, that reaches a
# **validation loss below 1.16 nats** (the floor is the entropy printed above, about 1.07) with
# **at most 3000 parameters** and **400 steps** of Adam at learning rate $5 \cdot 10^{-3}$ on
# batches of 256 pairs (a few CPU-seconds). Write `design_toy_flow()`, which returns the
# untrained model: any flowlib builder with `context_shape=(1,)`, or your own layers in a
# `FlowModel`; the test builds it, counts its parameters, trains it with exactly this budget on
# the same training pairs (seeded) and scores it on the validation pairs. Think about where
# the parameters do the most good: how many layers, how wide, which transformer, and what the
# context must tell each layer.

# %% nbgrader={"grade": false, "grade_id": "07-ex4-design", "locked": false, "schema_version": 3, "solution": true, "task": false}
def design_toy_flow() -> FlowModel:
    """An untrained conditional flow of the crescents, p(x | c) with c of shape (1,), <= 3000 parameters."""
    ### BEGIN SOLUTION
    # Splines bend the ring with few parameters; four thin couplings (2856 parameters) reach about
    # 1.12-1.13 nats in 400 steps, where two wide ones stay near 1.17.
    return nsf(2, layers=4, hidden=16, context_shape=(1,))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "07-ex4-design-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
HINT_4 = ("Return an untrained FlowModel conditioned on a context of shape (1,), e.g. a flowlib builder with "
          "context_shape=(1,), of at most 3000 parameters. Spend them on depth: several thin couplings with "
          "splines bend the ring better than two wide affine ones.")
DESIGN_BUDGET, DESIGN_STEPS, DESIGN_TARGET = 3000, 400, 1.16


def _train_design(seed: int) -> tuple[int, float]:
    torch.manual_seed(seed)
    with hint(HINT_4):
        model = design_toy_flow()
        assert isinstance(model, FlowModel) and model.conditional, (
            f"design_toy_flow must return a conditional FlowModel, got {type(model).__name__}. {HINT_4}")
        size = count_parameters(model)
        assert size <= DESIGN_BUDGET, f"Your design has {size:,} parameters, over the budget of {DESIGN_BUDGET:,}. {HINT_4}"
        result = fit(model, toy_train, val_data=toy_val, steps=DESIGN_STEPS, batch_size=256, lr=5e-3, seed=seed,
                     progress=False, device="cpu")
    return size, result.best_val


_size, _loss = _train_design(seed=0)
assert math.isfinite(_loss) and _loss < DESIGN_TARGET, (
    f"After {DESIGN_STEPS} steps your design ({_size:,} parameters) reaches {_loss:.3f} nats on the validation "
    f"pairs; the target is below {DESIGN_TARGET}. {HINT_4}")
### BEGIN HIDDEN TESTS
_size, _loss = _train_design(seed=1)  # another start
assert math.isfinite(_loss) and _loss < DESIGN_TARGET + 0.01, (
    f"From another initialisation (seed 1) your design reaches {_loss:.3f} nats; the target is below "
    f"{DESIGN_TARGET} (0.01 of slack here). {HINT_4}")
### END HIDDEN TESTS
print("Exercise 4 passed")

# %% [markdown]
# ## 2. Class-conditional Glow; 3. attribute edits; 4. what each scale holds
#
# This section (class-conditional samples, the flow as a classifier, attribute edits, what each scale holds) is still to be written.

# %% [markdown]
# ## 5. An inverse problem: inpainting
#
# This section (inpainting with an unconditional and a conditional flow) is still to be written.

# %% [markdown]
# ## 6. Where likelihoods fail
#
# This section (the likelihood of out-of-distribution images, and a remedy) is still to be written.

# %% [markdown]
# ## Summary
#
# * A conditional flow is one bijection $f(\cdot\,; c)$ per context, and
#   $p_X(x \mid c) = p_Z(f(x; c) \mid c)\,|\det \partial f(x; c) / \partial x|$: the Jacobian with
#   respect to $x$ only, because at fixed $c$ it is an ordinary flow (Exercise 1 checked the
#   normalisation). The context enters where nothing needs inverting: the conditioners, and the
#   prior's mean and scale. A loss below the data's entropy is a bug, and integrating the
#   density at a fixed context finds it (Exercise 3).
# * A class-conditional flow samples a class on demand, and by Bayes' rule it is a classifier,
#   $p(y \mid x) \propto p(x \mid y)\, p(y)$.
# * In a multi-scale flow the coarse latents hold the shape of the digit and the fine ones its
#   texture; a direction in latent space (the difference of two means) edits an attribute.
# * The same model answers inverse problems: an unconditional flow by search or sampling in
#   latent space under the constraint of the observed pixels, a conditional flow in one pass.
# * Likelihood is not a test of belonging: a flow of clothes gives digits higher likelihood
#   than clothes; comparing with a background model or with the typical set helps.
#
# ## References
#
# * L. Dinh, J. Sohl-Dickstein and S. Bengio (2017). *Density estimation using Real NVP.* ICLR
#   (arXiv:1605.08803, 2016).
# * D. P. Kingma and P. Dhariwal (2018). *Glow: Generative Flow with Invertible 1x1
#   Convolutions.* NeurIPS.
# * C. Winkler, D. Worrall, E. Hoogeboom and M. Welling (2019). *Learning Likelihoods with
#   Conditional Normalizing Flows.* arXiv:1912.00042.
# * C. Durkan, A. Bekasov, I. Murray and G. Papamakarios (2019). *Neural Spline Flows.* NeurIPS.
# * E. Nalisnick, A. Matsukawa, Y. W. Teh, D. Gorur and B. Lakshminarayanan (2019). *Do Deep
#   Generative Models Know What They Don't Know?* ICLR.
# * G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed and B. Lakshminarayanan (2021).
#   *Normalizing Flows for Probabilistic Modeling and Inference.* JMLR 22(57).
# * Y. LeCun, L. Bottou, Y. Bengio and P. Haffner (1998). *Gradient-based learning applied to
#   document recognition.* Proceedings of the IEEE 86(11).
# * H. Xiao, K. Rasul and R. Vollgraf (2017). *Fashion-MNIST: a Novel Image Dataset for
#   Benchmarking Machine Learning Algorithms.* arXiv:1708.07747.

# %% tags=["nbval-ignore-output"]
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s wall-clock, {time.process_time():.0f} s of CPU "
      f"time (this process)")
