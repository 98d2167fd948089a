# ---
# jupyter:
#   jupytext:
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
# # 00 · Generative models: sampling and density
#
# A generative model is a probability distribution $p_X$ over data $x$ (an image, a sound,
# a point in the plane) that we learn from examples. We can ask two quite different things of it:
#
# * **sampling**: draw new data, $x \sim p_X$;
# * **density estimation**: score a given point, i.e. compute the number $p_X(x)$.
#
# This notebook puts the families of deep generative models side by side, fits the simplest
# density model of all by maximum likelihood, and shows why an *invertible* map is what makes
# the likelihood exact. That last point is what the rest of the course builds on: normalizing
# flows. It ends with the course map and how to run the notebooks.

# %% [markdown]
# ## Settings
#
# Every notebook of the course starts with a cell like the next one, the one place where sizes
# are chosen, with two switches:
#
# * `SMOKE` is true when the environment variable `CI` is set, for automatic runs: every size
#   shrinks to the least that still runs every cell.
# * `FULL` is true on a GPU (`torch.cuda.is_available()`). It changes the training budgets,
#   not the models: in lectures 01 to 05 the models train for more optimizer steps (in lecture
#   02 also on larger batches), and the architectures and model sizes are the same on a CPU and
#   on a GPU. Set `FULL = True` or `False` by hand to override it.
#
# In this notebook nothing is trained; the switches only set how many points the pictures draw.

# %% tags=["nbval-ignore-output"]
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import flowlib

SMOKE = "CI" in os.environ  # CI: the shortest run that still exercises every cell
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"  # on a GPU: longer training in the other lectures (change to True/False to override)
N_PICTURE = 2_000 if SMOKE else (200_000 if FULL else 20_000)  # points drawn for pictures only
# The outputs that the tests compare (README, "Notebooks: jupytext and nbval") never depend on
# these switches; only pictures do.

torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 90
print(f"flowlib {flowlib.__version__}, torch {torch.__version__}, device {DEVICE}, SMOKE={SMOKE}, FULL={FULL}")

# %% [markdown]
# ## Two tasks: $x \sim p_X$ and $p_X(x)$
#
# Take a distribution we know completely: a mixture of two Gaussians on the real line,
# $p_X(x) = 0.6\,\mathcal N(x; -1, 0.5^2) + 0.4\,\mathcal N(x; 2, 0.8^2)$.
# To **sample** it, pick a component with probability 0.6 / 0.4, then draw from that Gaussian.
# To **evaluate** it, add the two weighted bell curves. Here both are easy; for images, neither is.
# A model of images has to be built so that at least one of them stays cheap.

# %%
WEIGHTS, MEANS, STDS = torch.tensor([0.6, 0.4]), torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 0.8])


def sample_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """x ~ p_X: choose a component k with probability WEIGHTS[k], then x = MEANS[k] + STDS[k] * eps."""
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[k] + STDS[k] * torch.randn(n, generator=generator)


def log_p_mixture(x: torch.Tensor) -> torch.Tensor:
    """log p_X(x) = log sum_k w_k N(x; mu_k, sigma_k^2), computed stably with logsumexp."""
    comp = torch.distributions.Normal(MEANS, STDS).log_prob(x[:, None])
    return torch.logsumexp(comp + WEIGHTS.log(), dim=1)


# The data set of this notebook: 1000 points, always the same ones (seeded, on the CPU).
x_data = sample_mixture(1000, torch.Generator().manual_seed(0))
print("data shape:", tuple(x_data.shape))
print("first five points:", [round(v, 2) for v in x_data[:5].tolist()])

# %% tags=["nbval-ignore-output"]
grid = torch.linspace(-4, 5, 400)
x_picture = sample_mixture(N_PICTURE, torch.Generator().manual_seed(1))
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(x_picture.numpy(), bins=80, density=True, alpha=0.5, label=rf"samples $x \sim p_X$ (n={N_PICTURE})")
ax.plot(grid, log_p_mixture(grid).exp(), "k", label=r"density $p_X(x)$")
ax.set_xlabel("x")
ax.legend()
plt.show()

# %% [markdown]
# ## The families of deep generative models
#
# Deep models get around the difficulty in different ways, and each pays for it somewhere.
# Xiao, Kreis & Vahdat (2022) named three wishes that no family fully met at the time, the
# *generative learning trilemma*: high-quality samples, coverage of all the modes of the data
# (diversity), and fast sampling. A fourth wish matters in this course: the exact value of
# $p_X(x)$. The table (data, so you can query it) says roughly where each family stands.

# %%
FAMILIES = [
    # family,            exact p_X(x)?,           quality, modes, fast sampling
    ("autoregressive",   "yes",                   "good",  "yes", "no: one dimension at a time"),
    ("VAE",              "lower bound (ELBO)",    "blurry", "yes", "yes"),
    ("GAN",              "no density",            "sharp", "no",  "yes"),
    ("normalizing flow", "yes",                   "fair",  "yes", "yes"),
    ("diffusion",        "bound / costly ODE",    "sharp", "yes", "no: many denoising steps"),
    ("energy-based/RBM", "up to the constant Z",  "fair",  "yes", "no: Markov chain sampling"),
]
HEADER = ("family", "exact p_X(x)", "quality", "modes", "fast sampling")
widths = [max(len(row[i]) for row in [HEADER, *FAMILIES]) for i in range(len(HEADER))]
for row in [HEADER, *FAMILIES]:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

# %% [markdown]
# Reading the table: a GAN learns only a sampler $z \mapsto x$ and judges samples with a second
# network, so it has no density at all and may drop modes. A VAE optimises a lower bound on
# $\log p_X(x)$. An autoregressive model writes $p_X(x) = \prod_i p(x_i \mid x_{<i})$, exact but
# sequential to sample. Energy-based models such as RBMs know $p_X$ only up to the normalising
# constant $Z$. Flows are the family whose likelihood is exact **and** whose sampling is one pass
# of a network; what they give up is freedom in the architecture (every layer must be
# invertible), which has cost them some sample quality.
#
# These rows are the usual verdicts of the literature, not measurements. Lecture 8 trains one
# small member of each family on the same 2D toy and the same digits and measures every column:
# the likelihood each can report (exact, a bound, an estimate or none), a sample-quality score
# that needs only samples, the modes covered and the time to draw 10,000 samples.

# %% [markdown]
# ## Maximum likelihood: fitting a Gaussian
#
# Density models are trained by maximum likelihood: choose parameters $\theta$ that make the data
# probable, $\hat\theta = \arg\max_\theta \frac1n \sum_{i=1}^n \log p_\theta(x_i)$. Maximising the
# average log-likelihood is the same as minimising $\mathrm{KL}(p_\text{data}\,\|\,p_\theta)$
# estimated from the sample, so the model is pushed to put mass wherever data lies.
#
# For a Gaussian $p_\theta = \mathcal N(\mu, \sigma^2)$ the maximiser has a closed form: the sample
# mean and the (biased, divide-by-$n$) sample variance,
# $\hat\mu = \frac1n\sum_i x_i$, $\hat\sigma^2 = \frac1n\sum_i (x_i-\hat\mu)^2$, and the average
# log-likelihood at the optimum is $-\frac12\log(2\pi\hat\sigma^2) - \frac12$.

# %%
mu_hat = x_data.mean()
sigma_hat = x_data.std(correction=0)  # divide by n: the maximum-likelihood estimate
gauss = torch.distributions.Normal(mu_hat, sigma_hat)
avg_ll_gauss = gauss.log_prob(x_data).mean()
avg_ll_true = log_p_mixture(x_data).mean()

print(f"MLE: mu = {mu_hat:.2f}, sigma = {sigma_hat:.2f}")
print(f"average log-likelihood, best Gaussian: {avg_ll_gauss:.2f} nats")
print(f"closed form -log(2 pi sigma^2)/2 - 1/2: {-0.5 * math.log(2 * math.pi * sigma_hat**2) - 0.5:.2f} nats")
print(f"average log-likelihood, true mixture:  {avg_ll_true:.2f} nats")
print(f"gap (estimate of KL(p_data || best Gaussian)): {avg_ll_true - avg_ll_gauss:.2f} nats")

# %% [markdown]
# Check that it is a maximum: nudging $\mu$ or $\sigma$ in any direction lowers the average
# log-likelihood. The curves below show the average log-likelihood along each parameter with the
# other held at its optimum, and the fitted density against the data.

# %%
for d_mu, d_sigma in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
    nudged = torch.distributions.Normal(mu_hat + d_mu, sigma_hat + d_sigma).log_prob(x_data).mean()
    assert nudged < avg_ll_gauss, (d_mu, d_sigma)
print("every nudge lowers the average log-likelihood")

# %% tags=["nbval-ignore-output"]
mus = torch.linspace(mu_hat - 1.5, mu_hat + 1.5, 200)
sigmas = torch.linspace(0.5 * sigma_hat, 2.0 * sigma_hat, 200)
ll_mu = torch.distributions.Normal(mus[:, None], sigma_hat).log_prob(x_data).mean(1)
ll_sigma = torch.distributions.Normal(mu_hat, sigmas[:, None]).log_prob(x_data).mean(1)

fig, axes = plt.subplots(1, 3, figsize=(12, 3))
axes[0].plot(mus, ll_mu)
axes[0].axvline(mu_hat, color="r", ls="--", label=r"$\hat\mu$")
axes[0].set(xlabel=r"$\mu$", ylabel="average log-likelihood")
axes[1].plot(sigmas, ll_sigma)
axes[1].axvline(sigma_hat, color="r", ls="--", label=r"$\hat\sigma$")
axes[1].set(xlabel=r"$\sigma$")
axes[2].hist(x_data.numpy(), bins=50, density=True, alpha=0.5, label="data")
axes[2].plot(grid, gauss.log_prob(grid).exp(), "r", label="best Gaussian")
axes[2].plot(grid, log_p_mixture(grid).exp(), "k:", label="true $p_X$")
axes[2].set(xlabel="x")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Try it.** Move the sliders (needs a running kernel): the title shows how far your Gaussian
# is from the best one. No choice beats $(\hat\mu, \hat\sigma)$, and even the best Gaussian puts
# mass in the valley between the two modes: the *model family* is too poor. Making the family
# rich while keeping $\log p_X(x)$ exact is the job of normalizing flows.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_fit(mu: float = 0.0, sigma: float = 1.0) -> None:
    q = torch.distributions.Normal(torch.tensor(mu), torch.tensor(sigma))
    avg_ll = q.log_prob(x_data).mean().item()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(x_data.numpy(), bins=50, density=True, alpha=0.5, label="data")
    ax.plot(grid, q.log_prob(grid).exp(), "r", label=rf"$\mathcal{{N}}({mu:.2f}, {sigma:.2f}^2)$")
    ax.plot(grid, gauss.log_prob(grid).exp(), "k:", label="best Gaussian")
    ax.set(xlabel="x", ylim=(0, 0.6),
           title=f"average log-likelihood {avg_ll:.3f}  (best {avg_ll_gauss:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    plt.show()


_ = widgets.interact(
    show_fit,
    mu=widgets.FloatSlider(value=0.0, min=-2.0, max=3.0, step=0.05, continuous_update=True),
    sigma=widgets.FloatSlider(value=1.0, min=0.3, max=3.0, step=0.05, continuous_update=True),
)

# %% [markdown]
# ## Why an exact likelihood needs an invertible map
#
# The Gaussian we just fitted is already a tiny flow. Start from a latent $z \sim p_Z = \mathcal N(0,1)$
# and map it to data with $x = \hat\mu + \hat\sigma z$. The map back, $f(x) = (x - \hat\mu)/\hat\sigma$,
# is the data-to-latent direction, and the **change of variables** gives the density of $x$:
#
# $$p_X(x) = p_Z\big(f(x)\big)\,\left|\frac{df}{dx}\right| .$$
#
# The factor $|df/dx| = 1/\hat\sigma$ accounts for how the map stretches space: probability mass
# is conserved, so where the map spreads points apart their density drops. In flowlib this model
# is an `Affine` layer (data to latent) on a `StandardNormal` base; its `log_prob` must agree with
# the Gaussian's.

# %%
f = flowlib.elementwise.Affine(1)  # z = exp(log_scale) * x + shift
with torch.no_grad():
    f.log_scale.fill_(-sigma_hat.log().item())  # scale 1 / sigma_hat
    f.shift.fill_((-mu_hat / sigma_hat).item())  # so that z = (x - mu_hat) / sigma_hat
model = flowlib.FlowModel(f, flowlib.StandardNormal(1))

x_col = x_data[:, None]  # flowlib works on batches of vectors: shape (n, 1)
with torch.no_grad():
    log_p_flow = model.log_prob(x_col)
print("input shape", tuple(x_col.shape), "-> log p_X shape", tuple(log_p_flow.shape))
print("change of variables == Gaussian formula:",
      torch.allclose(log_p_flow, gauss.log_prob(x_data), atol=1e-5))

# %% [markdown]
# What goes wrong without invertibility? Take $x = z^2$. Every $x > 0$ has **two** preimages,
# $z = \pm\sqrt{x}$, so its density collects mass from both:
# $p_X(x) = \big(p_Z(\sqrt x) + p_Z(-\sqrt x)\big) / (2\sqrt x)$. A formula that follows one
# branch only, as a "single inverse" would, misses half the mass: its integral is 1/2, not 1.
# With many preimages (a ReLU network) the bookkeeping becomes hopeless. A deterministic
# generator from a smaller latent space, as in a GAN, puts all its samples on a surface in data
# space, and then there is no density in data space at all. A VAE avoids this by adding noise
# to its decoder: $p_X(x) = \int p(x \mid z)\,p_Z(z)\,dz$ is a true density, but an integral
# over every latent $z$ that cannot be computed exactly, hence the lower bound (ELBO) of the
# table (Kingma & Welling, 2014, *Auto-Encoding Variational Bayes*); the cell after the next computes such an integral where $z$
# has one dimension and a grid can do it. A normalizing flow keeps one preimage per point and a
# Jacobian that is cheap to compute, so $p_X(x)$ is exact. Lecture 01 works this formula out
# properly.

# %%
p_Z = torch.distributions.Normal(0.0, 1.0)
xs = torch.linspace(1e-4, 40.0, 400_001, dtype=torch.float64)  # fine grid for the integrals
r = xs.sqrt()
both_branches = (p_Z.log_prob(r).exp() + p_Z.log_prob(-r).exp()) / (2 * r)
one_branch = p_Z.log_prob(r).exp() / (2 * r)
# The mass below 1e-4 is P(|z| < 0.01), about 0.008; add it back to compare with 1.
missing = (2 * p_Z.cdf(torch.tensor(0.01)) - 1).item()
print(f"integral, both preimages: {torch.trapezoid(both_branches, xs).item() + missing:.2f}")
print(f"integral, one preimage:   {torch.trapezoid(one_branch, xs).item() + missing / 2:.2f}")

# %%
# A toy decoder with a one-dimensional latent: its mean g(z) = (z, z^2 / 2) traces a curve
# in the plane, and Gaussian noise of width sigma around the curve gives every x a density.
z_grid = torch.linspace(-5.0, 5.0, 801, dtype=torch.float64)  # P(|z| > 5) is below 1e-6


def p_decoder(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """p_X(x) = integral of N(x; g(z), sigma^2 I) p_Z(z) dz over z, by the trapezoid rule."""
    g = torch.stack([z_grid, z_grid**2 / 2], dim=1)  # (m, 2): the curve
    log_noise = torch.distributions.Normal(g, sigma).log_prob(x[:, None, :]).sum(-1)  # (n, m)
    return torch.trapezoid((log_noise + p_Z.log_prob(z_grid)).exp(), z_grid, dim=1)


x1, x2 = torch.linspace(-7, 7, 141, dtype=torch.float64), torch.linspace(-2, 15, 171, dtype=torch.float64)
plane = torch.cartesian_prod(x1, x2)  # a grid over the plane, spacing 0.1
density = p_decoder(plane, sigma=0.3).reshape(len(x1), len(x2))
print(f"integral of p_X over the plane (sigma = 0.3): {torch.trapezoid(torch.trapezoid(density, x2), x1).item():.3f}")
on_curve = torch.tensor([[1.0, 0.5]], dtype=torch.float64)  # g(1), a point on the curve
for sigma in (0.3, 0.1, 0.03):
    print(f"sigma = {sigma:<4}: p_X at a point of the curve = {p_decoder(on_curve, sigma).item():.2f}")

# %% [markdown]
# With noise, the density integrates to one like any other. As $\sigma$ shrinks, its value on
# the curve grows like $1/\sigma$: in the limit of a deterministic generator all the mass sits
# on the curve, a set of zero area, and no density is left. With a latent of many dimensions
# the grid over $z$ is out of reach, which is why a VAE trains on a bound instead.

# %% tags=["nbval-ignore-output"]
z_picture = torch.randn(N_PICTURE, generator=torch.Generator().manual_seed(2))
xs_plot = torch.linspace(0.02, 6, 300)
r_plot = xs_plot.sqrt()
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist((z_picture**2).numpy(), bins=np.linspace(0, 6, 61), density=True, alpha=0.5, label=r"$x = z^2$, $z \sim \mathcal{N}(0,1)$")
ax.plot(xs_plot, 2 * p_Z.log_prob(r_plot).exp() / (2 * r_plot), "k", label="both preimages")
ax.plot(xs_plot, p_Z.log_prob(r_plot).exp() / (2 * r_plot), "r--", label="one preimage only")
ax.set(xlabel="x", ylim=(0, 1.5))
ax.legend()
plt.show()

# %% [markdown]
# ## The course map
#
# | lecture | what it teaches | data |
# | --- | --- | --- |
# | **00** generative models (this one) | sampling vs density, the families and the trilemma, maximum likelihood, why invertibility | 1D |
# | **01** change of variables in 1D | $p_X(x) = p_Z(f(x))\,\lvert df/dx\rvert$ made visual; monotone maps learned by maximum likelihood | 1D |
# | **02** planar and radial flows | the flows that made the name known in machine learning (Rezende & Mohamed 2015), built in the generative direction; the determinant lemma | 2D toys |
# | **03** NICE | additive coupling: a triangular Jacobian with determinant 1, reversible blocks (Dinh et al. 2014) | 2D toys, then digits |
# | **04** RealNVP | affine coupling, masks, multi-scale architecture, dequantization (Dinh et al. 2016) | images |
# | **05** Glow | ActNorm, invertible 1x1 convolutions, temperature and interpolation (Kingma & Dhariwal 2018) | images |
# | **06** autoregressive and spline flows | MADE, MAF and IAF, rational-quadratic splines, a transformer flow (Papamakarios et al. 2017; Durkan et al. 2019) | 2D toys, digits, MNIST |
# | **07** conditional flows | $p_X(x \mid c)$; class-conditional Glow as a classifier, attribute edits, inpainting, out-of-distribution inputs | 2D toy, MNIST, Fashion-MNIST |
# | **08** flows among the generative families | VAE and IWAE, GAN and WGAN-GP, flow matching, RBM with AIS, measured side by side: the trilemma in figures | 2D toys, digits |
# | **09** Glow for science | weak-lensing maps: a flow's samples against simulations on every summary statistic and their covariance; a conditional flow as a field-level likelihood, with posteriors and a coverage test against the exact one | simulated convergence maps |
# | **10** capstone | your own multi-scale flow assembled from the course's layers, graded on Fashion-MNIST | images |
#
# The order is by difficulty, not by date: NICE (Dinh, Krueger & Bengio, arXiv 2014) appeared
# about seven months before the planar and radial flows (arXiv 2015), and the idea of a density
# made of invertible maps goes back to Tabak & Vanden-Eijnden (2010).
#
# The 2D toys come first because there the exact density is known, so we can *measure* how well
# a flow fits; images come once the layers are trusted. Every lecture uses the library
# `flowlib`, where each layer follows one contract: `z, logdet = layer(x)` (data to latent,
# $\log|\det \partial z/\partial x|$) and `x, logdet = layer.inverse(z)`.
#
# ## Running the notebooks
#
# * **CPU** (laptop, Binder): every notebook runs top to bottom with `FULL = False`. On Binder,
#   save your work before it idles out.
# * **GPU**: `FULL` turns true by itself when `torch.cuda.is_available()`; the models then
#   train for more steps, with the same architectures and sizes as on a CPU. The same code runs
#   on both.
#
# The README at the top of the repository says how to install the course and how its
# notebooks are tested.
