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
# # Lecture 1: the change of variables in one dimension
#
# A generative model should do two things: **draw samples** $x \sim p_X$ and **evaluate the
# density** $p_X(x)$ of any point. Most models are good at one of the two. Normalizing flows
# do both, exactly, with a single idea: start from a simple density $p_Z$ that we know
# everything about (a standard normal), and push it through an invertible map.
#
# Everything that makes flows work is already visible in one dimension, where we can draw
# every function and check every formula by hand. In this lecture you will
#
# 1. derive the change-of-variables formula $p_X(x) = p_Z(f(x))\,|f'(x)|$ and see where the
#    factor $|f'(x)|$ comes from;
# 2. check numerically that this factor is exactly what makes $p_X$ integrate to one;
# 3. sample from $p_X$ by running the map backwards;
# 4. stack several maps and add up their log-derivatives (the chain rule);
# 5. fit a small flow to a two-bump data set by maximum likelihood;
# 6. play with an interactive widget.
#
# Along the way, six graded exercises ask you to derive two formulas, sample with densities,
# hunt a bug, design a flow under a budget and predict what the widget will show.
#
# Notation, used in all lectures: $x$ is a data point, $z$ a latent point, $f$ the map from
# data to latent ($z = f(x)$, the *normalizing* direction), $p_Z$ the base density and $p_X$
# the density of the data that the model defines. The ideas go back to Tabak and
# Vanden-Eijnden and were made popular in machine learning by Rezende & Mohamed (2015),
# *Variational Inference with Normalizing Flows*; Papamakarios et al. (2021), *Normalizing
# Flows for Probabilistic Modeling and Inference*, is the review to keep at hand.

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. With the environment variable `CI` set, every cell
# still runs, on the smallest sizes that exercise it.

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: train at full size (change to True/False to override)
STEPS = 60 if SMOKE else (3000 if FULL else 1500)  # optimizer steps for the fit in section 7
N_TRAIN = 4000  # size of the two-bump data set (cheap to make, so the same under CI)
# Every tensor in this lecture has a few thousand numbers at most: splitting such tiny
# operations over several CPU threads costs more than it saves, so use one.
torch.set_num_threads(1)

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from flowlib import Compose, FlowModel, StandardNormal
from flowlib.elementwise import Affine, MixtureLogisticCDF, SinhArcsinh
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
from flowlib.train import fit
from flowlib.viz import plot_training_curve
from flowlib.widgets import ChangeOfVariables1D

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})

# The base density p_Z = N(0, 1), the same object a flowlib model uses.
base = StandardNormal(1)


def p_Z(z: Tensor) -> Tensor:
    """The standard normal density of a batch of scalars z, shape (n,)."""
    return base.log_prob(z.reshape(-1, 1)).exp()


# %% [markdown]
# ## 1. Deriving the formula
#
# Let $Z$ have a density $p_Z$ and let $f:\mathbb{R}\to\mathbb{R}$ be invertible and
# differentiable with $f'(x) \neq 0$. Define the data variable through the inverse,
# $X = f^{-1}(Z)$, so that $Z = f(X)$. What is the density of $X$?
#
# The safe route goes through the cumulative distribution function
# $F_X(x) = P(X \le x)$, because probabilities of events are easy to transport: an event
# about $X$ is the same event written in terms of $Z$.
#
# **If $f$ is increasing**, $X \le x$ happens exactly when $f(X) \le f(x)$, i.e. when
# $Z \le f(x)$. So
# $$F_X(x) = F_Z\big(f(x)\big) \qquad\Longrightarrow\qquad
#   p_X(x) = \frac{d}{dx} F_Z\big(f(x)\big) = p_Z\big(f(x)\big)\, f'(x).$$
#
# **If $f$ is decreasing**, the inequality flips: $X \le x$ happens exactly when
# $Z \ge f(x)$, so
# $$F_X(x) = 1 - F_Z\big(f(x)\big) \qquad\Longrightarrow\qquad
#   p_X(x) = -\,p_Z\big(f(x)\big)\, f'(x) = p_Z\big(f(x)\big)\, |f'(x)|,$$
# since $f'(x) < 0$ there.
#
# A continuous invertible map of the real line is either increasing everywhere or decreasing
# everywhere, so these two cases are all there is, and both read
# $$\boxed{\;p_X(x) = p_Z\big(f(x)\big)\,\left|f'(x)\right|\;}
#   \qquad\text{or, in logs,}\qquad
#   \log p_X(x) = \log p_Z\big(f(x)\big) + \log\left|f'(x)\right|.$$
#
# The log form is the one computers use. Every flowlib layer returns both pieces:
# `z, logdet = layer(x)` gives $z = f(x)$ and $\log|f'(x)|$ (in higher dimensions,
# $\log|\det \partial f/\partial x|$, lecture 2).
#
# **A second way to read it: probability mass is conserved.** A short interval
# $[x, x + dx]$ is sent by $f$ to an interval of length $|f'(x)|\,dx$ around $z = f(x)$,
# and both intervals hold the same probability, because they describe the same event:
# $$p_X(x)\,dx = p_Z(z)\,|f'(x)|\,dx.$$
# Where $f$ *stretches* ($|f'| > 1$), a short piece of the $x$-axis collects the mass of a long
# piece of the $z$-axis, so $p_X$ is high. Where $f$ *compresses* ($|f'| < 1$), $p_X$ is low.

# %% [markdown]
# ## 2. Seeing it
#
# Take one concrete map: the flowlib layer `MixtureLogisticCDF` with two components (we meet
# its formula in section 5; for now it is just a smooth increasing curve). The big panel shows
# $z = f(x)$; on its left the base density $p_Z$, turned on its side so that its $z$-axis
# lines up with the map's; below it the density $p_X$ that results.
#
# The two shaded $x$-intervals have the same width. Follow each one up to the curve and
# across to the $z$-axis: the one where the curve is steep becomes a *long* $z$-interval,
# which holds a lot of base mass, so $p_X$ is high there; the one where the curve is flat
# becomes a short $z$-interval, and $p_X$ is low.

# %%
# A two-component mixture-logistic CDF map, in float64 so that the numbers below are exact
# to many digits. Its parameters are set by hand: components at -2 and 2, equal weights.
f_demo = MixtureLogisticCDF(1, components=2).double()
with torch.no_grad():
    f_demo.loc.copy_(torch.tensor([[-2.0, 2.0]]))
    f_demo.log_scale.fill_(math.log(0.45))


def density_1d(layer, x: Tensor) -> Tensor:
    """p_X(x) = p_Z(f(x)) |f'(x)| for a 1D flowlib layer, x of shape (n,)."""
    with torch.no_grad():
        z, logdet = layer(x.reshape(-1, 1))
        return (base.log_prob(z) + logdet).exp()


xs = torch.linspace(-5, 5, 2001, dtype=torch.float64)
with torch.no_grad():
    zs = f_demo(xs.reshape(-1, 1))[0][:, 0]
px = density_1d(f_demo, xs)

fig = plt.figure(figsize=(9, 6.5))
grid = fig.add_gridspec(2, 2, width_ratios=[1, 2.4], height_ratios=[2.2, 1], wspace=0.08, hspace=0.08)
ax_f = fig.add_subplot(grid[0, 1])
ax_z = fig.add_subplot(grid[0, 0], sharey=ax_f)
ax_x = fig.add_subplot(grid[1, 1], sharex=ax_f)
fig.add_subplot(grid[1, 0]).axis("off")

z_axis = torch.linspace(-3.5, 3.5, 500, dtype=torch.float64)
ax_z.plot(p_Z(z_axis), z_axis, color="C0")
ax_z.invert_xaxis()  # the density grows to the left, away from the map
ax_z.set(xlabel="$p_Z(z)$", ylabel="latent $z$", ylim=(-3.5, 3.5))
ax_f.plot(xs, zs, color="C2", lw=2)
ax_f.set_title("the map $z = f(x)$")
ax_f.tick_params(labelleft=False, labelbottom=False)
ax_x.plot(xs, px, color="C3", lw=2)
ax_x.set(xlabel="data $x$", ylabel="$p_X(x)$", xlim=(-5, 5))

masses = []
for (a, b), colour in [((1.7, 2.3), "C1"), ((-0.3, 0.3), "C4")]:
    with torch.no_grad():
        fa, fb = f_demo(torch.tensor([[a], [b]], dtype=torch.float64))[0][:, 0].tolist()
    ax_f.axvspan(a, b, ymax=(fb + 3.5) / 7, color=colour, alpha=0.25)
    ax_f.fill_between([-5, b], fa, fb, color=colour, alpha=0.25)
    band = torch.linspace(fa, fb, 200, dtype=torch.float64)
    ax_z.fill_betweenx(band, 0, p_Z(band), color=colour, alpha=0.5)
    inside = (xs >= a) & (xs <= b)
    ax_x.fill_between(xs[inside], 0, px[inside], color=colour, alpha=0.5)
    # The same probability, measured on both sides (the trapezoid rule on fine grids).
    mass_x = torch.trapezoid(density_1d(f_demo, torch.linspace(a, b, 2001, dtype=torch.float64)),
                             dx=(b - a) / 2000)
    mass_z = torch.trapezoid(p_Z(torch.linspace(fa, fb, 2001, dtype=torch.float64)), dx=(fb - fa) / 2000)
    masses.append((a, b, fa, fb, float(mass_x), float(mass_z)))
plt.show()

for a, b, fa, fb, mass_x, mass_z in masses:
    print(f"x in [{a:+.1f}, {b:+.1f}] -> z in [{fa:+.3f}, {fb:+.3f}] (length {fb - fa:.3f}): "
          f"P under p_X = {mass_x:.3f}, P under p_Z = {mass_z:.3f}")

# %% [markdown]
# Both intervals in $x$ have length $0.6$. The one on the right of the picture is stretched
# to a $z$-interval several times longer, the one in the middle is squeezed to a much shorter
# one, and in each case the probability measured under $p_X$ on the $x$-side equals the
# probability measured under $p_Z$ on the $z$-side. The factor $|f'(x)|$ is the exchange rate
# between lengths on the two axes.
#
# Notice also what happened to the shape: a single bump in $z$ became **two** bumps in $x$,
# one for each steep part of the curve. A monotone map can create modes; it only cannot
# create or destroy probability.

# %% [markdown]
# ## 3. Without $|f'(x)|$ it is not a density
#
# A tempting shortcut is $p_X(x) \overset{?}{=} p_Z(f(x))$: "the density of $x$ is the
# density of the point it maps to". Probabilities would then ignore how much $f$ stretches,
# and the result is in general not even a density. A density must integrate to one; let us
# integrate both candidates numerically, on an $x$-range that holds all the mass (the
# preimage of $z \in [-9, 9]$, where $p_Z$ leaves out less than $10^{-18}$).

# %%
def integrate_1d(layer, with_jacobian: bool = True, z_range: float = 9.0, points: int = 20001) -> float:
    """The trapezoid-rule integral of p_Z(f(x)) |f'(x)| (or of p_Z(f(x)) alone) over x."""
    with torch.no_grad():
        ends = layer.inverse(torch.tensor([[-z_range], [z_range]], dtype=torch.float64))[0][:, 0]
        x = torch.linspace(float(ends[0]), float(ends[1]), points, dtype=torch.float64)
        z, logdet = layer(x.reshape(-1, 1))
        log_p = base.log_prob(z) + (logdet if with_jacobian else 0.0)
        return float(torch.trapezoid(log_p.exp(), x))


# Three maps: the one of the picture, a pure scaling z = 2x and a sinh-arcsinh map.
f_scale = Affine(1).double()
with torch.no_grad():
    f_scale.log_scale.fill_(math.log(2.0))
f_sas = SinhArcsinh(1).double()
with torch.no_grad():
    f_sas.epsilon.fill_(0.8)
    f_sas.log_delta.fill_(-0.4)

for name, layer in [("mixture-logistic CDF", f_demo), ("z = 2x", f_scale), ("sinh-arcsinh", f_sas)]:
    print(f"{name:>21}:  with |f'|: {integrate_1d(layer):.3f}   "
          f"without: {integrate_1d(layer, with_jacobian=False):.3f}")

# %% [markdown]
# With the factor, every integral is $1.000$; without it, the answer depends on the map.
# The scaling $z = 2x$ shows why most clearly: $p_Z(2x)$ is a normal curve squeezed to half
# its width, so its area is $1/2$; the factor $|f'(x)| = 2$ puts the missing half back.
# In general $\int p_Z(f(x))\,dx = \mathbb{E}_{Z}\big[1/|f'(f^{-1}(Z))|\big]$, which is one
# only by accident.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, (name, layer) in zip(axes, [("$z = 2x$", f_scale), ("sinh-arcsinh", f_sas)], strict=True):
    x = torch.linspace(-4, 4, 800, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = layer(x.reshape(-1, 1))
    ax.plot(x, (base.log_prob(z) + logdet).exp(), color="C3", lw=2, label="$p_Z(f(x))\\,|f'(x)|$")
    ax.plot(x, base.log_prob(z).exp(), color="0.4", ls="--", label="$p_Z(f(x))$ alone")
    ax.set(title=f"map {name}", xlabel="x")
    ax.legend(frameon=False, fontsize=8)
plt.show()

# %% [markdown]
# ### Exercise 1: the density of $x = e^{\mu + \sigma z}$ (a derivation)
#
# Let $Z \sim \mathcal N(0, 1)$ and $X = e^{\mu + \sigma Z}$ with $\sigma > 0$: a positive
# variable whose logarithm is Gaussian. In the notation of this course the map from data to
# latent is $f(x) = (\log x - \mu)/\sigma$, defined for $x > 0$ and increasing.
#
# 1. Derive $\log p_X(x)$ with the change of variables and write it in
#    `exp_gaussian_log_density`.
# 2. On paper, find the **mode** of $p_X$ (the $x$ where $p_X$ is largest) as a function of
#    $\mu$ and $\sigma$, and return it from `exp_gaussian_mode`: the exact value, a closed form,
#    not the result of a search on a grid. Before you start, a guess to
#    check: the mode of $p_Z$ is $z = 0$, which $f^{-1}$ sends to $x = e^{\mu}$. Is $e^{\mu}$ the
#    mode of $p_X$? Section 1 says what decides: the factor $|f'(x)|$.
#
# `x` is a tensor of positive numbers of shape `(n,)`; return a tensor of shape `(n,)`,
# computed for the whole batch at once (no Python loop over the points). Write the formula in
# closed form with torch operations: `torch.distributions.LogNormal`, flowlib or automatic
# differentiation would skip the derivation, and the tests refuse them. The tests compare your
# density with hand values and with automatic differentiation of $f$, and integrate it over
# $x > 0$.

# %% nbgrader={"grade": false, "grade_id": "01-ex1a-exp-gaussian-log-density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def exp_gaussian_log_density(x: Tensor, mu: float, sigma: float) -> Tensor:
    """log p_X(x) for X = exp(mu + sigma Z), Z ~ N(0, 1); x > 0 of shape (n,), returns shape (n,)."""
    ### BEGIN SOLUTION
    log_x = torch.log(x)
    z = (log_x - mu) / sigma
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - math.log(sigma) - log_x
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex1a-exp-gaussian-log-density-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
import sys

HINT_1A = ("Write log p_X(x) = log p_Z(f(x)) + log|f'(x)| with f(x) = (log x - mu) / sigma and p_Z the "
           "standard normal; f'(x) is a product of two factors.")


def _log_density_by_autograd(x: Tensor, mu: float, sigma: float) -> Tensor:
    """log p_Z(f(x)) + log|f'(x)|, with f'(x) from autograd (f acts on each point alone)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        z = (torch.log(x) - mu) / sigma
        (dz_dx,) = torch.autograd.grad(z.sum(), x)
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi) + dz_dx.abs().log()).detach()


def _files_entered(fn, *args) -> set:
    """The names of the Python source files one call fn(*args) enters (to spot torch.distributions)."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(os.path.basename(frame.f_code.co_filename))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        with torch.no_grad():
            fn(*args)
    finally:
        sys.setprofile(previous)
    return seen


def _check_exp_gaussian(mu: float, sigma: float, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(mu + 1.5 * sigma * torch.randn(n, generator=g, dtype=torch.float64))
    with hint(HINT_1A), torch.no_grad():
        mine = exp_gaussian_log_density(x, mu, sigma)
    check_close(mine, _log_density_by_autograd(x, mu, sigma),
                f"Not yet, with mu={mu:.3f}, sigma={sigma:.3f}. {HINT_1A}", atol=1e-8)
    # A density integrates to one: the trapezoid rule on points spread evenly in log x.
    grid = torch.exp(torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 40001, dtype=torch.float64))
    with hint(HINT_1A), torch.no_grad():
        total = float(torch.trapezoid(exp_gaussian_log_density(grid, mu, sigma).exp(), grid))
    assert abs(total - 1.0) < 1e-4, (
        f"With mu={mu:.3f}, sigma={sigma:.3f} your p_X integrates to {total:.4f} over x > 0, not 1. {HINT_1A}")


# Hand values for mu = 0, sigma = 1: at x = 1 and at x = e.
with hint(HINT_1A), torch.no_grad():
    _mine = exp_gaussian_log_density(torch.tensor([1.0, math.e], dtype=torch.float64), 0.0, 1.0)
check_close(_mine, torch.tensor([-0.9189385332046727, -2.4189385332046727], dtype=torch.float64),
            f"Not yet at x = 1 and x = e (mu = 0, sigma = 1). {HINT_1A}", atol=1e-8)
_check_exp_gaussian(mu=0.4, sigma=0.6, n=50, seed=11)
with hint(HINT_1A):
    check_vectorised(exp_gaussian_log_density,
                     lambda n: (torch.rand(n, dtype=torch.float64) + 0.1, 0.2, 0.7),
                     "Compute the whole batch at once, with tensor operations.")
    check_own_work(exp_gaussian_log_density, torch.rand(5, dtype=torch.float64) + 0.1, 0.2, 0.7,
                   allowed=("flowlib.distributions", "flowlib.core.sum_except_batch"),
                   message="Write the density yourself, with torch operations.")
    _used = _files_entered(exp_gaussian_log_density, torch.rand(5, dtype=torch.float64) + 0.1, 0.2, 0.7)
assert not _used & {"log_normal.py", "transformed_distribution.py"}, (
    "torch.distributions.LogNormal does the derivation for you: write the formula yourself.")
### BEGIN HIDDEN TESTS
for _seed, _n in [(100, 1), (101, 7), (102, 64), (103, 300), (104, 33)]:
    _g = torch.Generator().manual_seed(_seed)
    _mu = float(torch.empty(()).uniform_(-1.5, 1.5, generator=_g))
    _sigma = float(torch.empty(()).uniform_(0.3, 1.5, generator=_g))
    _check_exp_gaussian(_mu, _sigma, _n, _seed)
### END HIDDEN TESTS
print("ex1a passed")

# %% nbgrader={"grade": false, "grade_id": "01-ex1b-exp-gaussian-mode", "locked": false, "schema_version": 3, "solution": true, "task": false}
def exp_gaussian_mode(mu: float, sigma: float) -> float:
    """The x > 0 where p_X is largest, for X = exp(mu + sigma Z), Z ~ N(0, 1) (a closed form)."""
    ### BEGIN SOLUTION
    # d/dx [-(log x - mu)^2 / (2 sigma^2) - log x] = -[(log x - mu) / sigma^2 + 1] / x = 0
    return math.exp(mu - sigma**2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex1b-exp-gaussian-mode-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_1B = ("Set the derivative of log p_X(x) with respect to x to zero (it helps to write u = log x), "
           "with the factor |f'(x)| included: that factor is why the mode need not be e^mu.")


def _mode_on_a_grid(mu: float, sigma: float) -> float:
    """The argmax of p_X on 200001 points spread evenly in log x (p_X computed with autograd)."""
    x = torch.exp(torch.linspace(mu - 5 * sigma, mu + 2 * sigma, 200001, dtype=torch.float64))
    return float(x[_log_density_by_autograd(x, mu, sigma).argmax()])


def _check_mode(mu: float, sigma: float) -> None:
    with hint(HINT_1B):
        mine = float(exp_gaussian_mode(mu, sigma))
    expected = _mode_on_a_grid(mu, sigma)
    assert math.isfinite(mine) and abs(mine - expected) <= 1e-3 * expected, (
        f"With mu={mu:.3f}, sigma={sigma:.3f} you say the mode is at x = {mine:.5g}; p_X is largest "
        f"at x = {expected:.5g}. {HINT_1B}")
    # At the exact mode the slope of log p_X vanishes (in log x, by a central difference).
    h = 1e-5
    ends = torch.tensor([mine * math.exp(-h), mine * math.exp(h)], dtype=torch.float64)
    low, high = _log_density_by_autograd(ends, mu, sigma).tolist()
    slope = (high - low) / (2 * h)
    assert abs(slope) < 1e-6, (
        f"With mu={mu:.3f}, sigma={sigma:.3f} your x = {mine:.8g} is close to the mode but not at it (the "
        f"slope of log p_X there is {slope:.2g}, not 0): derive the exact value. {HINT_1B}")


_check_mode(mu=0.3, sigma=0.8)
### BEGIN HIDDEN TESTS
for _seed in range(110, 115):
    _g = torch.Generator().manual_seed(_seed)
    _check_mode(float(torch.empty(()).uniform_(-1.5, 1.5, generator=_g)),
                float(torch.empty(()).uniform_(0.3, 1.4, generator=_g)))
### END HIDDEN TESTS
print("ex1b passed")

# %% [markdown]
# The figure draws your $p_X$ for two values of $\sigma$, with your mode (dashed) and $e^{\mu}$
# (dotted). Where the two lines differ, the factor $|f'(x)|$ is the reason: $f$ stretches the
# $x$-axis unevenly, so the image of the base's mode need not be the mode of the data density.
# What the map carries over unchanged is the probability of each event, as in section 1.

# %%
def lognormal_log_prob(x: Tensor, mu: float, sigma: float) -> Tensor:
    """torch's own log-normal density (the reference while Exercise 1 is not done)."""
    return torch.distributions.LogNormal(mu, sigma).log_prob(x)


def lognormal_mode_on_a_grid(mu: float, sigma: float) -> float:
    """The argmax of torch's log-normal density on a fine grid (the reference for the mode)."""
    x = torch.exp(torch.linspace(mu - 5 * sigma, mu + 2 * sigma, 200001, dtype=torch.float64))
    return float(x[lognormal_log_prob(x, mu, sigma).argmax()])


log_density_of_exp_gaussian = yours_or_reference(exp_gaussian_log_density, lognormal_log_prob,
                                                 "Exercise 1 (the density)")
mode_of_exp_gaussian = yours_or_reference(exp_gaussian_mode, lognormal_mode_on_a_grid, "Exercise 1 (the mode)")
fig, ax = plt.subplots(figsize=(7, 3))
x = torch.linspace(1e-3, 4, 1000, dtype=torch.float64)
for mu, sigma, colour in [(0.0, 0.5, "C0"), (0.0, 1.0, "C3")]:
    with torch.no_grad():
        ax.plot(x, log_density_of_exp_gaussian(x, mu, sigma).exp(), color=colour,
                label=f"$\\mu={mu:g},\\ \\sigma={sigma:g}$")
    ax.axvline(math.exp(mu), color=colour, ls=":", lw=1)
    ax.axvline(mode_of_exp_gaussian(mu, sigma), color=colour, ls="--", lw=1)
ax.set(xlabel="x", ylabel="$p_X(x)$", title="$x = e^{\\mu + \\sigma z}$: mode (dashed) and $e^{\\mu}$ (dotted)")
ax.legend(frameon=False, fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Sampling: run the map backwards
#
# Sampling needs no formula at all. Draw $z \sim p_Z$ and return $x = f^{-1}(z)$: by
# construction $X = f^{-1}(Z)$ has the density $p_X$ of section 1. A flowlib layer's
# `inverse` does exactly that (and also returns $\log|dx/dz|$, which we ignore here).
#
# For `MixtureLogisticCDF` the inverse has no closed form: flowlib solves $f(x) = z$ for each
# sample with a safeguarded Newton method (the layer says so with `numerical_inverse = True`).
# Density evaluation uses only the forward direction and stays cheap; sampling pays for the
# solve. Which direction is cheap is a design choice every flow makes.

# %%
n_samples = 20000  # a fraction of a second, even with the numerical inverse
z_samples = base.sample(n_samples).double()
with torch.no_grad():
    x_samples = f_demo.inverse(z_samples)[0]
print("z:", tuple(z_samples.shape), "-> x:", tuple(x_samples.shape))
print("numerical inverse:", f_demo.numerical_inverse)
with torch.no_grad():
    round_trip = (f_demo(x_samples)[0] - z_samples).abs().max()
print("f(f^-1(z)) = z up to < 1e-6:", bool(round_trip < 1e-6))

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.hist(x_samples[:, 0].numpy(), bins=80, range=(-5, 5), density=True, color="C1", alpha=0.4,
        label=f"{n_samples} samples $f^{{-1}}(z)$, $z \\sim p_Z$")
ax.plot(xs, px, color="C3", lw=2, label="$p_X(x) = p_Z(f(x))\\,|f'(x)|$")
ax.set(xlabel="x", title="sampling by inversion agrees with the change of variables")
ax.legend(frameon=False, fontsize=8)
plt.show()

# %% [markdown]
# ## 5. Three monotone maps from flowlib
#
# The layers of `flowlib.elementwise` are increasing maps of each coordinate; with $p_Z$ a
# standard normal, each turns into a family of densities.
#
# | layer | $z = f(x)$ | $\log f'(x)$ | what it can do to $p_X$ |
# | --- | --- | --- | --- |
# | `Affine` | $e^{s} x + t$ | $s$ | move and rescale: every Gaussian $\mathcal N(-t e^{-s}, e^{-2s})$ |
# | `SinhArcsinh` | $\sinh(\delta\,\mathrm{asinh}(x) - \epsilon)$ | you derive it in Exercise 2 | skew ($\epsilon$) and heavier or lighter tails ($\delta$) |
# | `MixtureLogisticCDF` | $\mathrm{logit}\,\sum_k \pi_k\,\sigma\!\big(\tfrac{x-\mu_k}{s_k}\big)$ | see its docstring | several bumps |
#
# The sinh-arcsinh map is due to Jones & Pewsey (2009), *Sinh-arcsinh distributions*
# (Biometrika); with $\delta = e^{\log\delta} > 0$ it is increasing for every parameter
# value, so no setting of the parameters can break invertibility. The mixture of logistic
# CDFs is the elementwise map of Flow++ (Ho et al., 2019): a CDF is increasing from 0 to 1,
# and the logit stretches $(0, 1)$ back onto the whole real line.

# %%
def random_1d_layer(kind: str, generator: torch.Generator) -> torch.nn.Module:
    """A 1D flowlib layer of the given kind with random (non-identity) float64 parameters."""
    if kind == "affine":
        layer = Affine(1).double()
        with torch.no_grad():
            layer.log_scale.normal_(0.0, 0.5, generator=generator)
            layer.shift.normal_(0.0, 1.0, generator=generator)
    elif kind == "sinh-arcsinh":
        layer = SinhArcsinh(1).double()
        with torch.no_grad():
            layer.epsilon.normal_(0.0, 0.7, generator=generator)
            layer.log_delta.normal_(0.0, 0.3, generator=generator)
    else:
        layer = MixtureLogisticCDF(1, components=3).double()
        with torch.no_grad():
            layer.logits.normal_(0.0, 0.5, generator=generator)
            layer.loc.mul_(2.0).add_(0.3 * torch.randn(1, 3, generator=generator, dtype=torch.float64))
            layer.log_scale.normal_(-0.8, 0.2, generator=generator)
    return layer


def set_params(layer, **values: float):
    """Set a layer's parameters by name (e.g. epsilon=0.5) and return the layer."""
    with torch.no_grad():
        for name, value in values.items():
            getattr(layer, name).fill_(value)
    return layer


# Hand-picked settings that show what each family does; the mixture ones are random.
gallery_g = torch.Generator().manual_seed(3)
gallery = {
    "Affine": [
        ("$s=0,\\ t=0$ (identity)", set_params(Affine(1).double(), log_scale=0.0, shift=0.0)),
        ("$s=0.5,\\ t=-1$", set_params(Affine(1).double(), log_scale=0.5, shift=-1.0)),
        ("$s=-0.5,\\ t=0$", set_params(Affine(1).double(), log_scale=-0.5, shift=0.0)),
    ],
    "SinhArcsinh": [
        ("$\\epsilon=0,\\ \\log\\delta=-0.5$", set_params(SinhArcsinh(1).double(), log_delta=-0.5)),
        ("$\\epsilon=0,\\ \\log\\delta=0.5$", set_params(SinhArcsinh(1).double(), log_delta=0.5)),
        ("$\\epsilon=1,\\ \\log\\delta=0$", set_params(SinhArcsinh(1).double(), epsilon=1.0)),
    ],
    "MixtureLogisticCDF": [
        (f"random parameters #{i + 1}", random_1d_layer("mixture-logistic CDF", gallery_g)) for i in range(3)
    ],
}
fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex=True)
x = torch.linspace(-5, 5, 1000, dtype=torch.float64)
for column, (family, members) in enumerate(gallery.items()):
    for label, layer in members:
        with torch.no_grad():
            z = layer(x.reshape(-1, 1))[0][:, 0]
        line, = axes[0, column].plot(x, z, lw=1.5, label=label)
        axes[1, column].plot(x, density_1d(layer, x), lw=1.5, color=line.get_color())
    axes[0, column].set(title=family, ylim=(-6, 6))
    axes[0, column].legend(frameon=False, fontsize=7, loc="upper left")
    axes[1, column].set(xlabel="x")
axes[0, 0].set_ylabel("$z = f(x)$")
axes[1, 0].set_ylabel("$p_X(x)$ with $p_Z = \\mathcal{N}(0, 1)$")
plt.show()

# %% [markdown]
# ### Exercise 2: the log-derivative of sinh-arcsinh (a derivation)
#
# For $f(x) = \sinh(\delta\,\mathrm{asinh}(x) - \epsilon)$ with $\delta = e^{\log\delta}$, derive
# $\log f'(x)$ with the chain rule and write it in `sinh_arcsinh_log_derivative`, elementwise.
# The one fact you may need: $\frac{d}{dx}\mathrm{asinh}(x) = 1/\sqrt{1+x^2}$. On the way,
# convince yourself that $f'(x) > 0$ for every $x$, $\epsilon$ and $\log\delta$, so that
# $\log|f'(x)| = \log f'(x)$: this is why the layer is invertible whatever its parameters.
#
# `x` has shape `(n,)`, and so does the result; compute the whole batch at once, in closed form
# with torch operations (not with flowlib's `SinhArcsinh`, nor with automatic differentiation).
# The test compares your formula with automatic differentiation of $f$.

# %% nbgrader={"grade": false, "grade_id": "01-ex2-sinh-arcsinh-log-derivative", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sinh_arcsinh_log_derivative(x: Tensor, epsilon: float, log_delta: float) -> Tensor:
    """log f'(x) for f(x) = sinh(exp(log_delta) * asinh(x) - epsilon); x has shape (n,)."""
    ### BEGIN SOLUTION
    a = math.exp(log_delta) * torch.asinh(x) - epsilon
    return log_delta + torch.log(torch.cosh(a)) - 0.5 * torch.log1p(x**2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex2-sinh-arcsinh-log-derivative-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_2 = ("f(x) = sinh(a) with a = delta * asinh(x) - epsilon: multiply the derivatives of the three steps "
          "(asinh, then multiplying by delta and subtracting epsilon, then sinh) and take the log.")


def _check_sinh_arcsinh(seed: int, n: int, spread: float) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = random_1d_layer("sinh-arcsinh", g)
    eps, log_delta = layer.epsilon.item(), layer.log_delta.item()
    x = spread * torch.randn(n, generator=g, dtype=torch.float64)
    with hint(HINT_2), torch.no_grad():
        mine = sinh_arcsinh_log_derivative(x, eps, log_delta)
    delta = math.exp(log_delta)
    expected = autograd_logabsdet(lambda v: torch.sinh(delta * torch.asinh(v) - eps), x.reshape(-1, 1))
    check_close(mine, expected, f"Not yet, with epsilon={eps:.3f}, log_delta={log_delta:.3f}. {HINT_2}",
                atol=1e-8)


_check_sinh_arcsinh(seed=21, n=64, spread=4.0)
with hint(HINT_2):
    check_vectorised(sinh_arcsinh_log_derivative, lambda n: (torch.randn(n, dtype=torch.float64), 0.3, -0.2),
                     "Compute the whole batch at once, with tensor operations.")
    check_own_work(sinh_arcsinh_log_derivative, torch.randn(5, dtype=torch.float64), 0.3, -0.2,
                   message="Write the log-derivative yourself, with torch operations.")
### BEGIN HIDDEN TESTS
for _seed, _n, _spread in [(200, 1, 1.0), (201, 9, 10.0), (202, 128, 3.0), (203, 300, 0.3), (204, 40, 30.0)]:
    _check_sinh_arcsinh(_seed, _n, _spread)
### END HIDDEN TESTS
print("ex2 passed")

# %% [markdown]
# ## 6. Composing maps: the log-derivatives add up
#
# One monotone map has few parameters. A flow stacks several: $f = f_K \circ \dots \circ f_1$,
# with intermediate values $x_0 = x$, $x_k = f_k(x_{k-1})$ and $z = x_K$. A composition of
# invertible maps is invertible ($f^{-1} = f_1^{-1} \circ \dots \circ f_K^{-1}$), and the chain
# rule gives its derivative as a product,
# $$f'(x) = \prod_{k=1}^{K} f_k'(x_{k-1})
#   \qquad\Longrightarrow\qquad
#   \log|f'(x)| = \sum_{k=1}^{K} \log|f_k'(x_{k-1})|.$$
# So each layer only needs to report its own log-derivative, at its own input, and the
# composition adds them up while passing $x$ along. That is all `flowlib.Compose` does. (In
# the language of Rezende & Mohamed, 2015: the density "flows" through the sequence of maps,
# and each step changes its log by one term.)
#
# Let us check it against two independent computations of $f'(x)$: automatic
# differentiation of the composed map, and a central finite difference
# $\big(f(x+h) - f(x-h)\big)/2h$.

# %%
layers_g = torch.Generator().manual_seed(7)
flow_demo = Compose(
    random_1d_layer("affine", layers_g),
    random_1d_layer("mixture-logistic CDF", layers_g),
    random_1d_layer("sinh-arcsinh", layers_g),
    random_1d_layer("affine", layers_g),
)
x = torch.linspace(-4, 4, 401, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
z, logdet = flow_demo(x)

# autograd: the map acts on each sample separately, so d(sum z)/dx_i = dz_i/dx_i.
(dz_dx,) = torch.autograd.grad(z.sum(), x)
autograd_logdet = dz_dx[:, 0].abs().log()
with torch.no_grad():
    h = 1e-5
    finite_diff = (flow_demo(x + h)[0] - flow_demo(x - h)[0])[:, 0] / (2 * h)
fd_logdet = finite_diff.abs().log()

err_autograd = (logdet - autograd_logdet).abs().max().item()
err_fd = (logdet - fd_logdet).abs().max().item()
print(f"layers: {[type(f).__name__ for f in flow_demo]}")
print("Compose logdet = log|dz/dx| from autograd, error < 1e-10:", err_autograd < 1e-10)
print("Compose logdet = log|dz/dx| from finite differences, error < 1e-6:", err_fd < 1e-6)

# %% [markdown]
# And the sum itself, layer by layer, at one point $x = 0.5$: each row is a layer's own
# `logdet` at its own input $x_{k-1}$; their sum is the `logdet` that `Compose` returns.

# %%
with torch.no_grad():
    x_k = torch.tensor([[0.5]], dtype=torch.float64)
    total = 0.0
    print("{:>20} {:>14} {:>11} {:>10}".format("layer", "input x_(k-1)", "output x_k", "log|f_k'|"))
    for layer in flow_demo:
        out, ld = layer(x_k)
        print(f"{type(layer).__name__:>20} {x_k.item():>14.4f} {out.item():>11.4f} {ld.item():>10.4f}")
        total += ld.item()
        x_k = out
    print(f"{'sum':>20} {'':>14} {'':>11} {total:>10.4f}")
    print(f"{'Compose logdet':>20} {'':>14} {'':>11} {flow_demo(torch.tensor([[0.5]], dtype=torch.float64))[1].item():>10.4f}")

# %% [markdown]
# ### Exercise 3: sampling, with the density of each sample
#
# Sampling runs the stack backwards: $x = f_1^{-1}(f_2^{-1}(\cdots f_K^{-1}(z)))$. Each layer's
# `inverse(z)` returns a pair: its output $f_k^{-1}(z)$ and $\log|d f_k^{-1}/dz|$, the
# log-derivative **of the inverse**, taken at the layer's own input. Many uses of a flow need
# each sample together with its density $\log p_X(x)$: variational inference (Rezende &
# Mohamed, 2015) needs it for every sample it draws. A second, forward pass would compute it
# again; collect it on the way back instead.
#
# Derive $\log p_X(x)$ from $\log p_Z(z)$ and the numbers the inverses return (so far every
# formula was written with $f'$, the derivative of the data-to-latent direction), and write
# `sample_with_log_prob`: given latent points `z` of shape `(n, 1)`, return the pair `x` of shape
# `(n, 1)` and $\log p_X(x)$ of shape `(n,)`. Use the layers' own `inverse`, one at a time (not
# `Compose` or `FlowModel`, which do it for you), and one pass for the whole batch. The test maps
# your `x` forward again, and compares your $\log p_X(x)$ with automatic differentiation of the
# forward map. Section 7 uses your function to draw samples of a trained flow.

# %% nbgrader={"grade": false, "grade_id": "01-ex3-sample-with-log-prob", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sample_with_log_prob(layers: list, z: Tensor) -> tuple[Tensor, Tensor]:
    """x = f_1^{-1}(... f_K^{-1}(z)) and log p_X(x), for layers = [f_1, ..., f_K] and p_Z = N(0, 1).

    z has shape (n, 1); returns x of shape (n, 1) and log p_X(x) of shape (n,).
    """
    ### BEGIN SOLUTION
    log_p = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    x = z
    for layer in reversed(layers):
        x, log_dx_dz = layer.inverse(x)
        log_p = log_p - log_dx_dz  # log|dz/dx| = -log|dx/dz|
    return x, log_p
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex3-sample-with-log-prob-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_3 = ("Undo the layers in reverse order (f_K first), each with its own inverse. Then "
          "log p_X(x) = log p_Z(z) + log|dz/dx|: how is log|dz/dx| related to the log|dx/dz| that the "
          "inverses return?")
#: The flowlib functions an answer may reach: the layers' own methods and the base density.
LAYER_METHODS = ("flowlib.elementwise", "flowlib.core.Flow.check", "flowlib.core.sum_except_batch",
                 "flowlib.distributions")


def _forward_through(layers: list, x: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x)[0]
    return x


def _log_p_by_autograd(layers: list, x: Tensor) -> Tensor:
    """log p_Z(f(x)) + log|f'(x)| with f'(x) from autograd, x of shape (n, 1)."""
    with torch.no_grad():
        z = _forward_through(layers, x)[:, 0]
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)
            + autograd_logabsdet(lambda v: _forward_through(layers, v), x))


def _random_layers(seed: int, kinds: list) -> list:
    g = torch.Generator().manual_seed(seed)
    return [random_1d_layer(kind, g) for kind in kinds]


def _check_sampler(layers: list, n: int, seed: int) -> None:
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with hint(HINT_3), torch.no_grad():
        answer = sample_with_log_prob(layers, z)
        assert isinstance(answer, tuple) and len(answer) == 2, "Return a pair (x, log_px)."
        x, log_px = answer
        assert isinstance(x, Tensor) and x.shape == z.shape, (
            f"x must have the shape of z, {tuple(z.shape)}; got {getattr(x, 'shape', type(x))}. {HINT_3}")
        back = _forward_through(layers, x)
    check_close(back, z, f"Mapping your x forward through the layers does not give z back. {HINT_3}",
                atol=1e-6)
    check_close(log_px, _log_p_by_autograd(layers, x), f"Your log p_X(x) is off. {HINT_3}", atol=1e-6)


_STACK = ["affine", "sinh-arcsinh", "mixture-logistic CDF", "sinh-arcsinh", "affine"]
_check_sampler(_random_layers(31, _STACK), n=64, seed=31)
_smooth = _random_layers(32, ["sinh-arcsinh", "affine", "sinh-arcsinh"])  # closed-form inverses only
with hint(HINT_3):
    check_vectorised(sample_with_log_prob, lambda n: (_smooth, torch.randn(n, 1, dtype=torch.float64)),
                     "One pass for the whole batch: loop over the layers, not over the points.")
    check_own_work(sample_with_log_prob, _smooth, torch.randn(5, 1, dtype=torch.float64), allowed=LAYER_METHODS,
                   message="Undo the layers yourself, each with its own inverse (not Compose or FlowModel).")
### BEGIN HIDDEN TESTS
for _seed, _n in [(300, 1), (301, 17), (302, 100), (303, 40)]:
    _kinds = [_STACK[int(i)] for i in torch.randint(0, 5, (4,), generator=torch.Generator().manual_seed(_seed))]
    _check_sampler(_random_layers(_seed, _kinds), n=_n, seed=_seed + 1)
### END HIDDEN TESTS
print("ex3 passed")

# %% [markdown]
# ### Exercise 4: a bug hunt
#
# Below is a first draft of the log-density of a stack of layers. It runs and returns one
# number per point. But on the stack below it, the integral of its density over the whole line
# is not 1 (the cell prints it), so it is not the density of anything.
#
# Find the bug. Integrate the draft's density on stacks of one kind of layer at a time (only
# affine layers; one sinh-arcsinh layer...), and compare its values with those of section 6's
# autograd check; then read the code again. Then
#
# * (a) name the bug: `bug_in_the_draft` returns one letter,
#   - **a**: $\log p_Z$ is evaluated at the data $x$ instead of at $z = f(x)$;
#   - **b**: each log-derivative is taken at the layer's output instead of at its input;
#   - **c**: the log-derivatives are added where they should be subtracted;
#   - **d**: the layers are applied in the wrong order;
# * (b) write the corrected version, `composition_log_prob`: `x` of shape `(n, 1)`, one
#   log-density per point, shape `(n,)`, in one pass for the whole batch, with the layers' own
#   forward (not `Compose` or `FlowModel`). The test checks it against automatic differentiation
#   and integrates it. Section 7 draws the density of a trained flow with your function.

# %%
def stack_log_prob_draft(layers: list, x: Tensor) -> Tensor:
    """A first draft of log p_X(x) for layers = [f_1, ..., f_K] and p_Z = N(0, 1); x: (n, 1)."""
    log_det = torch.zeros(x.shape[0], dtype=x.dtype)
    for layer in layers:
        x = layer(x)[0]
        log_det = log_det + layer(x)[1]
    return base.log_prob(x) + log_det


def integral_over_x(log_density, layers: list, z_range: float = 9.0, points: int = 20001) -> float:
    """The trapezoid-rule integral of exp(log_density(layers, x)) over x in f^{-1}([-z_range, z_range])."""
    with torch.no_grad():
        ends = Compose(*layers).inverse(torch.tensor([[-z_range], [z_range]], dtype=torch.float64))[0][:, 0]
        x = torch.linspace(float(ends[0]), float(ends[1]), points, dtype=torch.float64)
        return float(torch.trapezoid(log_density(layers, x.reshape(-1, 1)).exp(), x))


suspect_layers = [random_1d_layer(kind, torch.Generator().manual_seed(9))
                  for kind in ["sinh-arcsinh", "affine", "mixture-logistic CDF"]]
print(f"the draft's density on {[type(f).__name__ for f in suspect_layers]} integrates to "
      f"{integral_over_x(stack_log_prob_draft, suspect_layers):.3f}")

# %% nbgrader={"grade": false, "grade_id": "01-ex4a-name-the-bug", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bug_in_the_draft() -> str:
    """The letter of the bug in stack_log_prob_draft: "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    return "b"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex4a-name-the-bug-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
HINT_4A = ("Integrate the draft on an affine-only stack, then on a single sinh-arcsinh layer. An affine "
           "layer's log-derivative is the same at every point: which of the four mistakes would that hide?")
with hint(HINT_4A):
    _letter = check_choice(bug_in_the_draft(), ["a", "b", "c", "d"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
assert _letter == "b", f"Not {_letter!r}. {HINT_4A}"
### END HIDDEN TESTS
print("ex4a passed")

# %% nbgrader={"grade": false, "grade_id": "01-ex4b-composition-log-prob", "locked": false, "schema_version": 3, "solution": true, "task": false}
def composition_log_prob(layers: list, x: Tensor) -> Tensor:
    """log p_X(x) for layers = [f_1, ..., f_K] (data -> latent) and p_Z = N(0, 1); x: (n, 1) -> (n,)."""
    ### BEGIN SOLUTION
    log_det = torch.zeros(x.shape[0], dtype=x.dtype)
    for layer in layers:
        x, log_det_k = layer(x)  # the log-derivative at the layer's own input
        log_det = log_det + log_det_k
    return -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi) + log_det
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex4b-composition-log-prob-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_4B = ("Check your function as you checked the draft: on one sinh-arcsinh layer, then on two, compare it "
           "with section 6's autograd check and integrate it with integral_over_x.")


def _check_composition(layers: list, n: int, seed: int) -> None:
    x = 2 * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with hint(HINT_4B), torch.no_grad():
        mine = composition_log_prob(layers, x)
    check_close(mine, _log_p_by_autograd(layers, x), f"Not yet. {HINT_4B}", atol=1e-8)
    with hint(HINT_4B):
        total = integral_over_x(composition_log_prob, layers)
    assert abs(total - 1.0) < 1e-3, f"Your density integrates to {total:.4f}, not 1. {HINT_4B}"


_check_composition(suspect_layers, n=64, seed=41)
with hint(HINT_4B):
    check_vectorised(composition_log_prob, lambda n: (suspect_layers, torch.randn(n, 1, dtype=torch.float64)),
                     "One pass for the whole batch: loop over the layers, not over the points.")
    check_own_work(composition_log_prob, suspect_layers, torch.randn(5, 1, dtype=torch.float64),
                   allowed=LAYER_METHODS,
                   message="Pass x through the layers yourself (not Compose or FlowModel).")
### BEGIN HIDDEN TESTS
for _seed, _n in [(400, 1), (401, 23), (402, 128), (403, 50)]:
    _kinds = [_STACK[int(i)] for i in torch.randint(0, 5, (4,), generator=torch.Generator().manual_seed(_seed))]
    _check_composition(_random_layers(_seed, _kinds), n=_n, seed=_seed + 1)
### END HIDDEN TESTS
print("ex4b passed")

# %% [markdown]
# ## 7. Fitting a flow to data by maximum likelihood
#
# Now the other way round: we have samples $x_1, \dots, x_N$ from a density we do not know,
# and we want a flow whose $p_X$ matches it. Because $p_X$ is exact, we can simply maximise
# the likelihood of the data, i.e. minimise the average negative log-likelihood
# $$\mathcal L(\theta) = -\frac1N\sum_{n=1}^N \log p_X(x_n;\theta)
#   = -\frac1N\sum_{n=1}^N \Big[\log p_Z\big(f_\theta(x_n)\big) + \log\big|f_\theta'(x_n)\big|\Big]$$
# by stochastic gradient descent. The two terms pull in different directions: the first wants
# $f$ to send every data point close to $z = 0$, where $p_Z$ is largest; the second forbids
# squashing everything together, since a map that compresses has $\log|f'| < 0$. The balance
# is reached when $f(X)$ is distributed like $p_Z$: the map *normalizes* the data, which is
# where the name comes from. (Minimising $\mathcal L$ is also minimising the KL divergence
# from the data distribution to the model, up to a constant; see Papamakarios et al., 2021.)
#
# The data: a mixture of two Gaussians of different weights and widths. We know its true
# density here, which lets us judge the fit.

# %%
data_dist = torch.distributions.MixtureSameFamily(
    torch.distributions.Categorical(probs=torch.tensor([0.35, 0.65])),
    torch.distributions.Normal(torch.tensor([-2.0, 1.5]), torch.tensor([0.5, 0.8])),
)
x_train = data_dist.sample((N_TRAIN,)).reshape(-1, 1)
print("training data:", tuple(x_train.shape))

# %% [markdown]
# The model (in the data-to-latent order): an `Affine` layer to bring the data to a sensible
# scale, a `MixtureLogisticCDF` with four components to pull the two bumps together, a
# `SinhArcsinh` layer to fix skew and tails, and a final `Affine`. `FlowModel` adds the base
# density and gives `log_prob(x)` and `sample(n)`; `flowlib.train.fit` minimises the mean
# negative log-likelihood with Adam, a warm-up and a cosine learning-rate schedule, and shows
# a progress bar. It reports the loss in *nats*: the mean negative log-likelihood
# $\mathcal L(\theta)$ itself, with the natural logarithm. (The image lectures report bits per
# dimension instead, a different quantity: see the end of this section.)

# %%
model = FlowModel(
    Compose(Affine(1), MixtureLogisticCDF(1, components=4), SinhArcsinh(1), Affine(1)),
    StandardNormal(1),
)
print("parameters:", sum(p.numel() for p in model.parameters()))

# %% tags=["nbval-ignore-output"]
result = fit(model, x_train, steps=STEPS, batch_size=256, lr=1e-2, device=DEVICE, seed=0)
model = model.cpu()
result

# %% tags=["nbval-ignore-output"]
with torch.no_grad():
    nll_model = -model.log_prob(x_train).mean().item()
    nll_true = -data_dist.log_prob(x_train[:, 0]).mean().item()
print(f"train NLL of the flow:         {nll_model:.4f} nats")
print(f"train NLL of the true density: {nll_true:.4f} nats  (what a perfect model would score)")

# %% [markdown]
# **Nats here, bits per dimension in the image lectures.** The value of a density of a
# continuous variable is a number *per unit of $x$*, so this NLL depends on the units in which
# $x$ is measured. Write the same data in tenths, $y = 10x$: then $p_Y(y) = p_X(y/10)/10$ and
# every NLL grows by $\ln 10 \approx 2.3026$ nats (the cell below checks it on the true
# density); make the units coarser instead and the NLL can drop below zero. Divided by
# $\ln 2$ it is still not a number of bits that any code needs. The bits per dimension of
# lectures 03 to 05 are of *discrete* data: an image of $D$ pixels with $K$ grey levels each
# has a probability $P(x)$, and $-\log_2 P(x)/D \ge 0$ is the length per pixel of a code built
# from the model. Lecture 04 bounds it from the continuous density $p_Y$ of the dequantised
# pixels scaled to $[0, 1]$: with uniform noise, bits/dim $\le \mathbb E\big[-\log_2 p_Y(y)\big]/D +
# \log_2 K$, where the $\log_2 K$ turns a density over bins of width $1/K$ into the
# probabilities of the bins (Theis, van den Oord & Bethge, 2016).

# %%
y_tenths = 10 * x_train[:, 0]  # the training data in tenths of the old unit
log_p_tenths = data_dist.log_prob(y_tenths / 10) - math.log(10)  # log p_Y(y) = log p_X(y/10) - ln 10
nll_shift = -log_p_tenths.mean() + data_dist.log_prob(x_train[:, 0]).mean()
print(f"NLL in tenths minus NLL in the old unit: {nll_shift.item():.4f} nats (ln 10 = {math.log(10):.4f})")

# %% [markdown]
# The fitted density below is drawn with **your** log-density of a stack (Exercise 4), and
# the orange histogram holds samples of the trained flow drawn with **your** sampler
# (Exercise 3); the printed line compares the log-densities your sampler returns with those
# of a separate forward pass.

# %%
def reference_composition_log_prob(layers: list, x: Tensor) -> Tensor:
    """flowlib's log p_X(x) of a stack of layers (used while Exercise 4 is not done)."""
    return FlowModel(Compose(*layers), StandardNormal(1)).log_prob(x)


def reference_sample_with_log_prob(layers: list, z: Tensor) -> tuple[Tensor, Tensor]:
    """flowlib's samples of a stack and their log-densities (used while Exercise 3 is not done)."""
    x = Compose(*layers).inverse(z)[0]
    return x, reference_composition_log_prob(layers, x)


stack_log_prob = yours_or_reference(composition_log_prob, reference_composition_log_prob, "Exercise 4")
stack_sample = yours_or_reference(sample_with_log_prob, reference_sample_with_log_prob, "Exercise 3")
fitted_layers = list(model.flow)
x = torch.linspace(-5, 5, 1000)
with torch.no_grad():
    p_model = stack_log_prob(fitted_layers, x.reshape(-1, 1)).exp()
    x_model, log_p_model = stack_sample(fitted_layers, torch.randn(N_TRAIN, 1, generator=torch.Generator().manual_seed(5)))
    sampler_error = (log_p_model - model.log_prob(x_model)).abs().max().item()
print("the sampler's log p_X(x) equals the forward pass's, to 1e-3:", sampler_error < 1e-3)

fig, (ax_fit, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1.5, 1]})
ax_fit.hist(x_train[:, 0].numpy(), bins=70, range=(-5, 5), density=True, color="C0", alpha=0.3,
            label=f"{N_TRAIN} training points")
ax_fit.hist(x_model[:, 0].numpy(), bins=70, range=(-5, 5), density=True, color="C1", histtype="step",
            label=f"{N_TRAIN} samples of the flow")
ax_fit.plot(x, data_dist.log_prob(x).exp(), color="0.3", ls="--", label="true density")
ax_fit.plot(x, p_model, color="C3", lw=2, label="flow $p_X(x)$")
ax_fit.set(xlabel="x", title="the fitted density")
ax_fit.legend(frameon=False, fontsize=8)
plot_training_curve(result, ax=ax_loss)
ax_loss.set_title("training loss")
plt.show()

# %% [markdown]
# Whatever the training did, the fitted $p_X$ is a density: it integrates to one, because
# every layer is invertible and its exact log-derivative, taken at its own input, enters the
# sum. The integral below is that of your Exercise 4's log-density: the check that caught the
# draft's bug. (A model trained with a wrong log-density still trains; only checks like this
# one show that what it learned is not a density.)

# %%
model = model.double()
print(f"integral of the fitted p_X: {integral_over_x(stack_log_prob, list(model.flow)):.3f}")
model = model.float()

# %% [markdown]
# Finally the name. Send the training data *forward* through the trained layers, one at a
# time: each histogram below is the data after one more layer, $x_k = f_k(x_{k-1})$. The two
# bumps are merged and reshaped until, at the end, $z = f(x)$ looks like the standard normal
# base. Reading the same pictures from right to left is sampling.

# %%
with torch.no_grad():
    steps = model.flow.forward_steps(x_train)
names = ["data x"] + [f"after {type(f).__name__}" for f in model.flow]
fig, axes = plt.subplots(1, len(steps), figsize=(14, 2.6))
for ax, values, name in zip(axes, steps, names, strict=True):
    ax.hist(values[:, 0].numpy(), bins=50, density=True, color="C0", alpha=0.5)
    ax.set_title(name, fontsize=9)
    ax.set_yticks([])
grid_z = torch.linspace(-4, 4, 200)
axes[-1].plot(grid_z, p_Z(grid_z), color="C3", label="$p_Z$")
axes[-1].legend(frameon=False, fontsize=8)
plt.show()

# %% [markdown]
# ### Exercise 5: design a flow under a budget
#
# The data below has two bumps again, but the right one is skewed, with a long right tail (it
# is itself made by a flow: an affine map of a sinh-arcsinh variable; the log-scale panel
# shows the tails). Design a stack of elementwise layers that fits it.
#
# * **Layers**: any number of `Affine`, `SinhArcsinh` and `MixtureLogisticCDF` layers (you
#   choose the number of components) of dimension 1, in any order, in a `Compose`. You may set
#   their initial parameters; `design_flow` returns the flow untrained.
# * **Budget**: at most **14 parameters** in all, and one fixed training run: `fit` with
#   **400 steps**, batch size 256, learning rate 0.05 and seed 0 (with its warm-up and cosine
#   schedule), about one CPU second.
# * **Target**: on 20000 held-out points, the mean NLL of your flow at most **0.012 nats** above
#   the mean NLL of the true density on the same points. That gap estimates
#   $\mathrm{KL}(p_{\text{data}}\,\|\,p_X)$ (section 7): the part of the NLL that a better model
#   could still remove.
#
# Section 7's stack has 18 parameters, too many. Section 5's table says what each layer can
# do: which features of this data need which layer? Is one more mixture component worth more
# than one more layer? The cell after `design_flow` trains your design with the budget, draws
# it and prints its gap; the test trains it again the same way.

# %%
# The data of Exercise 5: a Gaussian bump (weight 0.35) and a skewed, heavy-tailed bump made by
# a flow, z = sinh(0.7 asinh((x - 0.5) / 0.7) - 0.5), so that its density is exact too.
right_bump = FlowModel(
    Compose(set_params(Affine(1).double(), log_scale=-math.log(0.7), shift=-0.5 / 0.7),
            set_params(SinhArcsinh(1).double(), epsilon=0.5, log_delta=math.log(0.7))),
    StandardNormal(1),
)
left_bump = torch.distributions.Normal(torch.tensor(-2.5, dtype=torch.float64), 0.35)


def design_log_prob(x: Tensor) -> Tensor:
    """The exact log-density of the data of Exercise 5; x of shape (n,), float64."""
    with torch.no_grad():
        right = math.log(0.65) + right_bump.log_prob(x.reshape(-1, 1))
    return torch.logaddexp(math.log(0.35) + left_bump.log_prob(x), right)


def design_sample(n: int, seed: int) -> Tensor:
    """n points of the data of Exercise 5 (float64, shape (n,)), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    from_left = torch.rand(n, generator=g) < 0.35
    x_left = -2.5 + 0.35 * torch.randn(n, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x_right = right_bump.flow.inverse(torch.randn(n, 1, generator=g, dtype=torch.float64))[0][:, 0]
    return torch.where(from_left, x_left, x_right)


x_design = design_sample(2000, seed=1).float().reshape(-1, 1)  # training data
x_design_heldout = design_sample(20000, seed=2)  # held-out data, for the target
print(f"training {tuple(x_design.shape)}, held-out {tuple(x_design_heldout.shape)}; "
      f"mean NLL of the true density on the held-out points: {-design_log_prob(x_design_heldout).mean():.4f} nats")

fig, axes = plt.subplots(1, 2, figsize=(11, 3))
x = torch.linspace(-5, 12, 1000, dtype=torch.float64)
for ax, log_scale in zip(axes, [False, True], strict=True):
    ax.hist(x_design[:, 0].numpy(), bins=120, range=(-5, 12), density=True, color="C0", alpha=0.3,
            label="2000 training points")
    ax.plot(x, design_log_prob(x).exp(), color="0.3", ls="--", label="true density")
    ax.set(xlabel="x", yscale="log" if log_scale else "linear", ylim=(1e-4, 1) if log_scale else None,
           title="log scale" if log_scale else "the data of Exercise 5")
axes[0].legend(frameon=False, fontsize=8)
plt.show()

# %% nbgrader={"grade": false, "grade_id": "01-ex5-design-flow", "locked": false, "schema_version": 3, "solution": true, "task": false}
def design_flow() -> Compose:
    """An untrained Compose of Affine / SinhArcsinh / MixtureLogisticCDF layers, at most 14 parameters."""
    ### BEGIN SOLUTION
    # Tails and skew first (sinh-arcsinh), a scale, the two bumps pulled together (a two-component
    # mixture CDF), skew again and a last scale: 2 + 2 + 6 + 2 + 2 = 14 parameters.
    return Compose(SinhArcsinh(1), Affine(1), MixtureLogisticCDF(1, components=2), SinhArcsinh(1), Affine(1))
    ### END SOLUTION


# %% tags=["nbval-ignore-output"]
make_design = yours_or_reference(
    design_flow,
    lambda: Compose(Affine(1), MixtureLogisticCDF(1, components=4), SinhArcsinh(1), Affine(1)),  # section 7's
    "Exercise 5")
design_model = FlowModel(make_design(), StandardNormal(1))
print("parameters:", sum(p.numel() for p in design_model.parameters()), "(at most 14)")
design_result = fit(design_model, x_design, steps=400, batch_size=256, lr=0.05, seed=0, device="cpu")
with torch.no_grad():
    design_gap = (-design_model.log_prob(x_design_heldout.float().reshape(-1, 1)).double().mean()
                  + design_log_prob(x_design_heldout).mean()).item()
print(f"held-out NLL minus that of the true density: {design_gap:.4f} nats (target: at most 0.012)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3))
with torch.no_grad():
    p_design = design_model.log_prob(x.float().reshape(-1, 1)).exp()
for ax, log_scale in zip(axes, [False, True], strict=True):
    ax.hist(x_design[:, 0].numpy(), bins=120, range=(-5, 12), density=True, color="C0", alpha=0.3,
            label="training points")
    ax.plot(x, design_log_prob(x).exp(), color="0.3", ls="--", label="true density")
    ax.plot(x, p_design, color="C3", lw=2, label="your flow")
    ax.set(xlabel="x", yscale="log" if log_scale else "linear", ylim=(1e-4, 1) if log_scale else None,
           title="log scale" if log_scale else "your design, trained with the budget")
axes[0].legend(frameon=False, fontsize=8)
plt.show()

# %% nbgrader={"grade": true, "grade_id": "01-ex5-design-flow-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
HINT_5 = ("design_flow() returns an untrained Compose of Affine, SinhArcsinh and MixtureLogisticCDF layers "
          "of dimension 1, with at most 14 parameters in all.")
HINT_5_FIT = ("Section 5's table: which layer makes several bumps, which one skew and heavy tails? With 14 "
              "parameters, compare one more mixture component with one more layer.")


def _train_and_score(seed: int, heldout: Tensor) -> float:
    """Train design_flow() with the budget of Exercise 5; its held-out NLL minus the true density's."""
    with hint(HINT_5):
        # Building a few layers takes a few dozen torch operations; training them takes thousands.
        assert torch_calls(design_flow) < 1000, (
            f"design_flow() should build the layers (and may set their initial values), not train them. {HINT_5}")
        flow = design_flow()
        assert isinstance(flow, Compose), f"design_flow() returned a {type(flow).__name__}. {HINT_5}"
        wrong = [type(layer).__name__ for layer in flow
                 if not isinstance(layer, (Affine, SinhArcsinh, MixtureLogisticCDF))
                 or tuple(layer.event_shape) != (1,)]
        assert not wrong, f"Layers outside the rules: {wrong}. {HINT_5}"
        n_params = sum(p.numel() for p in flow.parameters())
        assert n_params <= 14, f"Your design has {n_params} parameters. {HINT_5}"
        model = FlowModel(flow, StandardNormal(1))
    with hint(f"Training your design failed. {HINT_5}"):
        fit(model, x_design, steps=400, batch_size=256, lr=0.05, seed=seed, device="cpu", progress=False)
        with torch.no_grad():
            nll = -model.log_prob(heldout.float().reshape(-1, 1)).double().mean()
    return float(nll + design_log_prob(heldout).mean())


_gap = _train_and_score(seed=0, heldout=x_design_heldout)
assert _gap <= 0.012, (
    f"Your design's held-out NLL is {_gap:.4f} nats above the true density's; the target is at most 0.012. "
    f"{HINT_5_FIT}")
### BEGIN HIDDEN TESTS
_gap = _train_and_score(seed=1, heldout=design_sample(20000, seed=3))
assert _gap <= 0.012, (
    f"Trained with another data order (seed 1) and scored on 20000 new points, your design is {_gap:.4f} nats "
    f"above the true density; the target is at most 0.012. {HINT_5_FIT}")
### END HIDDEN TESTS
print("ex5 passed")

# %% [markdown]
# ## 8. Try it yourself
#
# The widget below puts sections 2 to 4 under your fingers: choose a base density $p_Z$ and a
# map $f$ (one of the three flowlib layers above), move the sliders, and watch $p_X$, the
# samples $f^{-1}(z)$ and the integral of $p_X$ update.
#
# Things to try:
#
# * **Affine**: make the log scale positive, then negative. Which way does $p_X$ get narrower,
#   and why is that the *opposite* of what the map does to the $x$-axis?
# * **Sinh-arcsinh**: set $\epsilon$ to zero and vary $\log\delta$: which values give heavier
#   tails than the base? Then skew the density with $\epsilon$.
# * **Logistic-mixture CDF**: pull the two components apart and shrink their scales until $p_X$
#   has two clean bumps. Where is the map steep?
# * Tick **drop $|f'(x)|$**: the dashed curve $p_Z(f(x))$ appears and the integral printed for
#   it is no longer 1. Find a setting where it is larger than 1.
# * Switch the base to **two bumps** with the affine map: a flow can only move and reshape the
#   modes its base already has, or create new ones by a steep-flat-steep map.

# %% tags=["nbval-ignore-output"]
explorer = ChangeOfVariables1D()
explorer

# %%
print(f"the widget's integral of p_X: {explorer.integral:.3f}")

# %% [markdown]
# ### Exercise 6: predict, then move the sliders
#
# In the widget, keep the base standard normal, choose the map **sinh-arcsinh** and set
# $\epsilon = 0$ and $\log\delta = -0.5$, so $\delta = e^{-0.5} \approx 0.61$. Before you tick
# **drop $|f'(x)|$**, predict the integral $\int p_Z(f(x))\,dx$ that the widget will then print:
#
# * **a**: below 1; **b**: 1; **c**: between 1 and $1/\delta \approx 1.65$; **d**: above $1/\delta$.
#
# Reason with your Exercise 2: with $\epsilon = 0$, compare $f'(x)$ with $\delta$ (write
# $a = \mathrm{asinh}\,x$, so that $\sqrt{1 + x^2} = \cosh a$), and recall from section 3 that
# $\int p_Z(f(x))\,dx = \mathbb{E}_Z\big[1/|f'(f^{-1}(Z))|\big]$. Return your letter from
# `predicted_integral_without_jacobian`, then tick the box and compare.

# %% nbgrader={"grade": false, "grade_id": "01-ex6-predict-the-widget", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_integral_without_jacobian() -> str:
    """Your prediction for the widget's integral of p_Z(f(x)): "a", "b", "c" or "d"."""
    ### BEGIN SOLUTION
    # With epsilon = 0, f'(x) = delta cosh(delta a) / cosh(a) <= delta (cosh grows with |a|, and
    # delta < 1), so 1/f' >= 1/delta everywhere, with equality only at x = 0.
    return "d"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex6-predict-the-widget-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_6 = ("Write f'(x) from your Exercise 2 with epsilon = 0 and a = asinh(x): is it above or below delta "
          "when delta < 1? Then 1/f' is above or below 1/delta at every x, and so is its mean under p_Z.")
with hint(HINT_6):
    _letter = check_choice(predicted_integral_without_jacobian(), ["a", "b", "c", "d"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
_widget = ChangeOfVariables1D(base="standard normal", transform="sinh-arcsinh")
with _widget.hold_updates():
    _widget.controls["sas_epsilon"].value = 0.0
    _widget.controls["sas_log_delta"].value = -0.5
    _widget.controls["drop_jacobian"].value = True
_value, _delta = _widget.integral_without_jacobian, math.exp(-0.5)
_right = ("a" if _value < 1 - 1e-3 else "b" if _value <= 1 + 1e-3 else "c" if _value < 1 / _delta else "d")
assert _letter == _right, f"Not {_letter!r}: the widget prints {_value:.3f}. {HINT_6}"
### END HIDDEN TESTS
print("ex6 passed")

# %% [markdown]
# ## Summary
#
# * For an invertible, differentiable $f$ from data to latent,
#   $p_X(x) = p_Z(f(x))\,|f'(x)|$: the CDF argument proves it, the exchange of lengths between
#   the two axes explains it, and without the factor $|f'(x)|$ the result does not integrate
#   to one.
# * Density evaluation runs the map forward, sampling runs it backward; a good flow makes the
#   direction you need often cheap.
# * Stacking maps multiplies derivatives, so log-derivatives add: each layer reports its own.
# * Because the likelihood is exact, fitting is plain maximum likelihood, and a trained flow
#   maps the data to something that looks like its base: it *normalizes* it.
#
# Next lecture: the same story in several dimensions, where $|f'(x)|$ becomes
# $|\det \partial f/\partial x|$ and the whole art is to keep that determinant cheap.
#
# ## References
#
# * D. J. Rezende and S. Mohamed (2015). *Variational Inference with Normalizing Flows.* ICML.
# * G. Papamakarios, E. Nalisnick, D. J. Rezende, S. Mohamed and B. Lakshminarayanan (2021).
#   *Normalizing Flows for Probabilistic Modeling and Inference.* JMLR 22(57).
# * M. C. Jones and A. Pewsey (2009). *Sinh-arcsinh distributions.* Biometrika 96(4).
# * J. Ho, X. Chen, A. Srinivas, Y. Duan and P. Abbeel (2019). *Flow++: Improving Flow-Based
#   Generative Models with Variational Dequantization and Architecture Design.* ICML.
# * L. Theis, A. van den Oord and M. Bethge (2016). *A note on the evaluation of generative
#   models.* ICLR.
# * E. G. Tabak and E. Vanden-Eijnden (2010). *Density estimation by dual ascent of the
#   log-likelihood.* Communications in Mathematical Sciences 8(1).
