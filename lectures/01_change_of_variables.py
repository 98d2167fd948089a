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
# 6. play with an interactive widget, then write four small pieces of a flow yourself.
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
# | `SinhArcsinh` | $\sinh(\delta\,\mathrm{asinh}(x) - \epsilon)$ | $\log\delta + \log\cosh(\delta\,\mathrm{asinh}\,x - \epsilon) - \tfrac12\log(1+x^2)$ | skew ($\epsilon$) and heavier or lighter tails ($\delta$) |
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
# ### Exercise 1: the log-density of an affine flow
#
# Write $\log p_X(x)$ for the map $z = f(x) = e^{s}x + t$ with a standard-normal base
# $p_Z(z) = e^{-z^2/2}/\sqrt{2\pi}$. Use the log form of the change of variables; do not
# call flowlib (the test does that, to compare).

# %% nbgrader={"grade": false, "grade_id": "01-ex1-affine-log-density", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_log_density(x: Tensor, log_scale: float, shift: float) -> Tensor:
    """log p_X(x) for z = exp(log_scale) * x + shift and p_Z = N(0, 1); x has shape (n,)."""
    ### BEGIN SOLUTION
    z = math.exp(log_scale) * x + shift
    log_pz = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    return log_pz + log_scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex1-affine-log-density-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_affine(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = random_1d_layer("affine", g)
    x = 3 * torch.randn(64, generator=g, dtype=torch.float64)
    s, t = layer.log_scale.item(), layer.shift.item()
    with torch.no_grad():
        expected = FlowModel(layer, StandardNormal(1)).log_prob(x.reshape(-1, 1))
    mine = affine_log_density(x, s, t)
    assert isinstance(mine, Tensor) and mine.shape == x.shape, (
        f"return a tensor shaped like x, {tuple(x.shape)}; got {getattr(mine, 'shape', type(mine))}")
    worst = int((mine - expected).abs().argmax())
    assert torch.allclose(mine, expected, atol=1e-8), (
        f"Not yet: with log_scale={s:.3f}, shift={t:.3f}, at x={float(x[worst]):.3f} you return "
        f"{float(mine[worst]):.5f} but flowlib says {float(expected[worst]):.5f}. "
        f"Did you add log|f'(x)| = log_scale?")


_check_affine(seed=11)
### BEGIN HIDDEN TESTS
for _seed in range(100, 105):
    _check_affine(_seed)
### END HIDDEN TESTS
print("ex1 passed")

# %% [markdown]
# ### Exercise 2: the log-derivative of sinh-arcsinh
#
# For $f(x) = \sinh(\delta\,\mathrm{asinh}(x) - \epsilon)$ with $\delta = e^{\log\delta}$,
# compute $\log f'(x)$ elementwise. The chain rule gives
# $f'(x) = \cosh(\delta\,\mathrm{asinh}(x) - \epsilon)\cdot\delta\cdot\frac{1}{\sqrt{1+x^2}}$.
# It is positive, so $\log|f'(x)| = \log f'(x)$. (For very large $|x|$, $\cosh$ would
# overflow; the test stays in a range where a direct formula is fine, but flowlib's version
# shows how to avoid it.)

# %% nbgrader={"grade": false, "grade_id": "01-ex2-sinh-arcsinh-logdet", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sinh_arcsinh_log_derivative(x: Tensor, epsilon: float, log_delta: float) -> Tensor:
    """log f'(x) for f(x) = sinh(exp(log_delta) * asinh(x) - epsilon); x has shape (n,)."""
    ### BEGIN SOLUTION
    delta = math.exp(log_delta)
    a = delta * torch.asinh(x) - epsilon
    return log_delta + torch.log(torch.cosh(a)) - 0.5 * torch.log1p(x**2)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex2-sinh-arcsinh-logdet-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_sinh_arcsinh(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = random_1d_layer("sinh-arcsinh", g)
    x = 4 * torch.randn(64, generator=g, dtype=torch.float64)
    eps, log_delta = layer.epsilon.item(), layer.log_delta.item()
    with torch.no_grad():
        _, expected = layer(x.reshape(-1, 1))  # flowlib's log|f'(x)|, one per sample
    mine = sinh_arcsinh_log_derivative(x, eps, log_delta)
    assert isinstance(mine, Tensor) and mine.shape == x.shape, (
        f"return a tensor shaped like x, {tuple(x.shape)}; got {getattr(mine, 'shape', type(mine))}")
    worst = int((mine - expected).abs().argmax())
    assert torch.allclose(mine, expected, atol=1e-8), (
        f"Not yet: with epsilon={eps:.3f}, log_delta={log_delta:.3f}, at x={float(x[worst]):.3f} you "
        f"return {float(mine[worst]):.5f}, SinhArcsinh.forward's logdet is {float(expected[worst]):.5f}. "
        f"Check the three factors of f'(x): delta, cosh(...) and 1/sqrt(1 + x^2).")


_check_sinh_arcsinh(seed=21)
### BEGIN HIDDEN TESTS
for _seed in range(200, 205):
    _check_sinh_arcsinh(_seed)
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
# ### Exercise 3: sampling through a stack of layers
#
# `layers` is a list of flowlib layers in the data-to-latent order $f_1, \dots, f_K$. Given
# latent points `z` of shape `(n, 1)`, return $x = f_1^{-1}(f_2^{-1}(\cdots f_K^{-1}(z)))$.
# Each layer's `inverse(z)` returns a pair `(x, logdet)`. (Sampling is then just
# `sample_by_inversion(layers, torch.randn(n, 1))`.)

# %% nbgrader={"grade": false, "grade_id": "01-ex3-sample-by-inversion", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sample_by_inversion(layers: list, z: Tensor) -> Tensor:
    """x = f_1^{-1}(... f_K^{-1}(z)) for layers = [f_1, ..., f_K]; z has shape (n, 1)."""
    ### BEGIN SOLUTION
    x = z
    for layer in reversed(layers):
        x, _ = layer.inverse(x)
    return x
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex3-sample-by-inversion-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _random_stack(g: torch.Generator) -> list:
    kinds = ["affine", "sinh-arcsinh", "mixture-logistic CDF", "sinh-arcsinh", "affine"]
    return [random_1d_layer(kind, g) for kind in kinds]


def _check_sampling(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layers = _random_stack(g)
    z = torch.randn(128, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        x = sample_by_inversion(layers, z)
        assert isinstance(x, Tensor) and x.shape == z.shape, (
            f"return a tensor shaped like z, {tuple(z.shape)}; got {getattr(x, 'shape', type(x))}")
        expected = Compose(*layers).inverse(z)[0]
        back = Compose(*layers)(x)[0]
    assert torch.allclose(back, z, atol=1e-6), (
        "Mapping your x forward again does not give z back: invert the layers in REVERSE order "
        "(the last layer f_K is undone first), using each layer's inverse.")
    assert torch.allclose(x, expected, atol=1e-6), "Your x differs from Compose(*layers).inverse(z)."


_check_sampling(seed=31)
### BEGIN HIDDEN TESTS
for _seed in range(300, 304):
    _check_sampling(_seed)
### END HIDDEN TESTS
print("ex3 passed")

# %% [markdown]
# ### Exercise 4: the log-density of a composition
#
# With the same list of layers and a standard-normal base, compute $\log p_X(x)$ for data
# points `x` of shape `(n, 1)`: pass $x$ through the layers in order, add up their
# log-derivatives, and add $\log p_Z(z)$ at the end. Return a tensor of shape `(n,)`.

# %% nbgrader={"grade": false, "grade_id": "01-ex4-composition-log-prob", "locked": false, "schema_version": 3, "solution": true, "task": false}
def composition_log_prob(layers: list, x: Tensor) -> Tensor:
    """log p_X(x) = log N(f(x); 0, 1) + sum_k log|f_k'(x_(k-1))| for layers = [f_1, ..., f_K]."""
    ### BEGIN SOLUTION
    total_logdet = x.new_zeros(x.shape[0])
    for layer in layers:
        x, logdet = layer(x)
        total_logdet = total_logdet + logdet
    z = x[:, 0]
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi) + total_logdet
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "01-ex4-composition-log-prob-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _check_composition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layers = [random_1d_layer(kind, g) for kind in ["affine", "mixture-logistic CDF", "sinh-arcsinh", "affine"]]
    x = 2 * torch.randn(128, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mine = composition_log_prob(layers, x)
        expected = FlowModel(Compose(*layers), StandardNormal(1)).log_prob(x)
    assert isinstance(mine, Tensor) and mine.shape == (x.shape[0],), (
        f"return one log-density per point, shape ({x.shape[0]},); got {getattr(mine, 'shape', type(mine))}")
    worst = int((mine - expected).abs().argmax())
    assert torch.allclose(mine, expected, atol=1e-8), (
        f"Not yet: at x={float(x[worst]):.3f} you return {float(mine[worst]):.5f}, "
        f"FlowModel.log_prob gives {float(expected[worst]):.5f}. Each layer must see the OUTPUT "
        f"of the previous one, and every layer's logdet counts.")


_check_composition(seed=41)
### BEGIN HIDDEN TESTS
for _seed in range(400, 404):
    _check_composition(_seed)
### END HIDDEN TESTS
print("ex4 passed")

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
# pixels scaled to $[0, 1]$: with uniform noise, bits/dim $\le \mathbb E\big[-\log_2 p_Y(y)\big]/D
# + \log_2 K$, where the $\log_2 K$ turns a density over bins of width $1/K$ into the
# probabilities of the bins (Theis, van den Oord & Bethge, 2016).

# %%
y_tenths = 10 * x_train[:, 0]  # the training data in tenths of the old unit
log_p_tenths = data_dist.log_prob(y_tenths / 10) - math.log(10)  # log p_Y(y) = log p_X(y/10) - ln 10
nll_shift = -log_p_tenths.mean() + data_dist.log_prob(x_train[:, 0]).mean()
print(f"NLL in tenths minus NLL in the old unit: {nll_shift.item():.4f} nats (ln 10 = {math.log(10):.4f})")

# %%
fig, (ax_fit, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1.5, 1]})
x = torch.linspace(-5, 5, 1000)
with torch.no_grad():
    p_model = model.log_prob(x.reshape(-1, 1)).exp()
ax_fit.hist(x_train[:, 0].numpy(), bins=70, range=(-5, 5), density=True, color="C0", alpha=0.3,
            label=f"{N_TRAIN} training points")
ax_fit.plot(x, data_dist.log_prob(x).exp(), color="0.3", ls="--", label="true density")
ax_fit.plot(x, p_model, color="C3", lw=2, label="flow $p_X(x)$")
ax_fit.set(xlabel="x", title="the fitted density")
ax_fit.legend(frameon=False, fontsize=8)
plot_training_curve(result, ax=ax_loss)
ax_loss.set_title("training loss")
plt.show()

# %% [markdown]
# Whatever the training did, the fitted $p_X$ is a density: it integrates to one, because
# every layer is invertible and reports its exact log-derivative. (A model that left out a
# layer's log-derivative would still train, and its "density" would integrate to something
# else: the check below catches such bugs.)

# %%
fitted_flow = model.flow.double()
print(f"integral of the fitted p_X: {integrate_1d(fitted_flow):.3f}")
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
