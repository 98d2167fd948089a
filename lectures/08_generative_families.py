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
# # Lecture 8: flows among the other generative models, measured side by side
#
# Lecture 0 gave each family of generative models one row of a table: what it knows of
# $p_X(x)$, how good its samples look, whether it covers every mode of the data, how fast it
# samples. Those rows were claims. This lecture trains one small member of each family on the
# **same data** and measures every column, so the claims become figures:
#
# 1. **six families on one toy**, the eight Gaussians: a spline flow (NSF) and RealNVP, a flow
#    trained by flow matching, a VAE, a GAN and a WGAN with gradient penalty; one table of the
#    test log-likelihood (exact, a bound, or none), an energy distance between samples and
#    data, the modes covered and the time to draw 10,000 samples;
# 2. **the VAE**: the ELBO, the reparameterisation trick, the importance-weighted bound and its
#    gap closing with the number of samples $k$; a posterior that is a flow; you derive the
#    ELBO of a linear-Gaussian model, write the importance-weighted bound that draws the
#    figures, and design a VAE that comes within 0.2 nats of the data;
# 3. **the GAN**: a sampler with no density, and mode dropping, watched as it happens;
# 4. **flow matching**, diffusion seen as a continuous flow: its regression target and its link
#    to the score; you derive the velocity field for Gaussian data and find the bug of a loss
#    that falls while the samples go wrong; then **the topology of a flow**: why every model
#    here leaves thin bridges between the eight Gaussians;
# 5. **the same families on the 8x8 digits**, scored by a fixed classifier and the same
#    likelihood units;
# 6. **the RBM**, whose density is known only up to its normalising constant $Z$: contrastive
#    divergence, Gibbs samples, and what estimating $Z$ by annealed importance sampling costs.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ of a flow and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f / \partial x\right|$. The other families use $z$
# for their latent too: a VAE's decoder and a GAN's generator map $z$ to $x$, the direction
# of a flow's inverse $f^{-1}$.

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
FULL = DEVICE == "cuda"  # on a GPU: train longer (change to True/False to override)
SCALE = 0.01 if SMOKE else (4.0 if FULL else 1.0)  # training steps, relative to a CPU run
TOY_STEPS = {name: max(10, int(SCALE * steps)) for name, steps in {  # steps per family, section 1
    "NSF": 600, "RealNVP": 1000, "flow matching": 5000, "VAE": 3000, "GAN": 3000, "WGAN-GP": 1000}.items()}
DROP_STEPS = max(20, int(SCALE * 3000))  # generator steps of the mode-dropping run (section 3)
NARROW_FLOW_STEPS = max(10, int(SCALE * 300))  # steps of the spline flow on the same narrow modes
DIGIT_STEPS = {name: max(10, int(SCALE * steps)) for name, steps in {  # section 5
    "RealNVP": 600, "flow matching": 3000, "VAE": 2000, "GAN": 2000}.items()}
RBM_STEPS = max(20, int(SCALE * 3000))  # contrastive-divergence steps (section 6)
RBM_SWEEPS = 20 if SMOKE else 200  # Gibbs sweeps per RBM sample (section 6)
SMALL_RBM_STEPS = 3000  # the RBM that Exercise 6 measures on: the same in every mode (seconds)
GRID = 60 if SMOKE else 150  # resolution of the density pictures
# Small networks: on a shared 2-core machine (Binder) one thread is fastest, because threads
# that compete for the cores cost more than they bring.
torch.set_num_threads(1)

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from torch import Tensor
from tqdm.auto import tqdm

from flowlib.core import Compose
from flowlib.data import DIGITS_GREY_LEVELS, load_digits
from flowlib.data.toys import EightGaussians
from flowlib.families import GAN, RBM, VAE, FlowMatching, fit_gan, importance_weighted_bound
from flowlib.grading import (
    check_choice,
    check_close,
    check_own_work,
    check_vectorised,
    hint,
    yours_or_reference,
)
from flowlib.image_models import count_parameters
from flowlib.metrics import bits_per_dim, density_on_grid, energy_distance, modes_covered
from flowlib.models import nsf, realnvp_vector
from flowlib.planar import Planar
from flowlib.train import fit
from flowlib.viz import image_grid

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})
T_START = time.perf_counter()

# %% [markdown]
# ## 1. Six families on one toy
#
# The eight Gaussians of lectures 3 and 4: an equal mixture of eight Gaussians of standard
# deviation 0.5 on the circle of radius 4. Its log-density is known exactly, so a model's
# log-likelihood can be compared with the best any model can score, the data's own
# $\mathbb E[\log p_{\text{data}}(x)]$ (minus its entropy).
#
# The six models, each small and each trained with Adam on the same 50,000 points:
#
# | family | model | what it learns | trained by |
# | --- | --- | --- | --- |
# | discrete flow | NSF (lecture 6), RealNVP (lecture 4) | $f: x \mapsto z$, a bijection | maximum likelihood, exact |
# | continuous flow | flow matching (section 4) | a velocity field $v(x, t)$ whose ODE carries noise to data | regression on straight paths |
# | VAE | Gaussian encoder $q(z \mid x)$, Gaussian decoder $p(x \mid z)$ (section 2) | a latent-variable model | the ELBO, a lower bound |
# | GAN | a generator $z \mapsto x$ and a discriminator (section 3) | only a sampler | a two-player game |
# | WGAN-GP | a generator and a critic | only a sampler | the Wasserstein game |
#
# Each trains for a fixed number of steps, chosen so that none takes more than about 20
# seconds on one CPU thread; the table below prints what each one got.

# %%
toy = EightGaussians()
_g = torch.Generator().manual_seed(0)
toy_train, toy_test, toy_reference = (toy.sample(n, generator=_g) for n in (50_000, 5000, 5000))
data_log_likelihood = float(toy.log_prob(toy_test).mean())
print(f"the data's own mean log-likelihood on the test points: {data_log_likelihood:.2f} nats")

# %%
def make_toy_models() -> dict:
    """The six untrained models of section 1, each from the same seed."""
    builders = {
        "NSF": lambda: nsf(2),
        "RealNVP": lambda: realnvp_vector(2),
        "flow matching": lambda: FlowMatching(2, hidden=64, layers=3),
        "VAE": lambda: VAE(2, 2, hidden=64, likelihood="gaussian"),
        "GAN": lambda: GAN(2, latent_dim=2, hidden=64),
        "WGAN-GP": lambda: GAN(2, latent_dim=2, hidden=64, loss="wgan-gp"),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        models[name] = build()
    return models


def train_family(model, data: Tensor, steps: int, lr: float, batch_size: int = 512, seed: int = 0) -> float:
    """Train any of the families for ``steps`` steps; returns the wall-clock seconds it took."""
    start = time.perf_counter()
    if isinstance(model, GAN):
        fit_gan(model, data, steps=steps, batch_size=128, lr=lr, seed=seed)
    else:
        loss_fn = (lambda m, x: m.loss(x)) if isinstance(model, FlowMatching) else None  # a regression, not -log p
        fit(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, loss_fn=loss_fn)
    model.eval()
    return time.perf_counter() - start


TOY_LR = {"NSF": 3e-3, "RealNVP": 3e-3, "flow matching": 2e-3, "VAE": 3e-3, "GAN": 1e-3, "WGAN-GP": 1e-3}
toy_models = make_toy_models()

# %% tags=["nbval-ignore-output"]
toy_train_seconds = {}
for _name, _model in toy_models.items():
    toy_train_seconds[_name] = train_family(_model, toy_train, TOY_STEPS[_name], TOY_LR[_name])
    print(f"{_name:>14}: {TOY_STEPS[_name]:5d} steps in {toy_train_seconds[_name]:5.1f} s")

# %% [markdown]
# What each column of the table measures, for every family alike:
#
# * **test log-likelihood**, the mean $\log p_X(x)$ over 5000 fresh points, in nats. The flows
#   give it exactly (flow matching up to the error of its ODE solver); the VAE gives two
#   lower bounds, the ELBO and the importance-weighted bound with $k = 1000$ samples
#   (section 2); the GANs give nothing, because a sampler has no density. No model can beat the
#   data's own value printed above on average, so the difference is (an estimate of) the
#   model's KL divergence from the data.
# * **energy distance** between 5000 samples and 5000 fresh data points (Székely & Rizzo,
#   2013): $2\,\mathbb E|X - Y| - \mathbb E|X - X'| - \mathbb E|Y - Y'|$, zero when the two
#   distributions agree. It needs only samples, so it scores the GANs too. Its estimate is
#   unbiased, so it may come out slightly negative; differences below about 0.004 are noise at
#   this sample size.
# * **modes covered**: how many of the eight Gaussians receive at least 5% of 10,000 samples
#   (the data gives each 12.5%), counting only samples within three standard deviations of a
#   centre.
# * **time to draw 10,000 samples**, and the **training time** of the steps above.

# %%
def draw(model, n: int) -> Tensor:
    """n samples of any family: for the VAE, x ~ p(x | z) with its noise, not only the decoder's mean."""
    with torch.no_grad():
        if isinstance(model, VAE):
            return model.sample(n, mean=False).float()
        return model.sample(n).float()


def vae_log_weights(vae: VAE, x: Tensor, k: int, chunk: int = 100) -> Tensor:
    """The (k, n) log-weights of a VAE, computed ``chunk`` points at a time: k * n latents of a
    decoder with 256 hidden units would need gigabytes at once."""
    with torch.no_grad():
        return torch.cat([vae.log_weights(part, k=k) for part in x.split(chunk)], dim=1)


def toy_log_likelihood(model) -> tuple[float | None, str]:
    """The mean test log-likelihood of a toy model and what kind of number it is."""
    if isinstance(model, GAN):
        return None, "none (no density)"
    if isinstance(model, VAE):
        log_w = vae_log_weights(model, toy_test, k=1000)
        iwae, elbo = float(importance_weighted_bound(log_w).mean()), float(log_w[0].mean())
        return iwae, f"IWAE-1000 bound (ELBO {elbo:.3f})"
    if isinstance(model, FlowMatching):
        return float(torch.cat([model.log_prob(part, steps=20) for part in toy_test.split(1000)]).mean()), "exact (ODE)"
    with torch.no_grad():
        return float(model.log_prob(toy_test).mean()), "exact"


def score_toy(name: str, model) -> dict:
    start = time.perf_counter()
    samples = draw(model, 10_000)
    sample_seconds = time.perf_counter() - start
    log_likelihood, kind = toy_log_likelihood(model)
    return {"family": name, "log-likelihood": log_likelihood, "kind": kind,
            "energy": energy_distance(samples[:5000], toy_reference, max_points=5000,
                                      generator=torch.Generator().manual_seed(1)),
            "modes": modes_covered(samples, toy.centres, radius=3 * toy.std),
            "sample s": sample_seconds, "train s": toy_train_seconds[name], "samples": samples}


def print_table(rows: list[dict], likelihood_header: str, quality_columns: list[tuple[str, str, str]]) -> None:
    """A table of scores, one row per family: the likelihood (or none), the quality columns, the times."""
    header = ["family", likelihood_header, *[c[1] for c in quality_columns], "10,000 samples (s)", "training (s)"]
    lines = []
    for r in rows:
        ll = r["kind"] if r["log-likelihood"] is None else f"{r['log-likelihood']:.3f} ({r['kind']})"
        quality = [format(r[key], spec) for key, _, spec in quality_columns]
        lines.append([r["family"], ll, *quality, f"{r['sample s']:.3f}", f"{r['train s']:.0f}"])
    print_aligned(header, lines)


def print_aligned(header: list[str], lines: list[list[str]]) -> None:
    """Print rows of strings under a header, each column as wide as its widest cell."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    for line in [header, *lines]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


torch.manual_seed(0)
toy_rows = [score_toy(name, model) for name, model in toy_models.items()]
data_modes = modes_covered(toy_reference, toy.centres, radius=3 * toy.std)
data_energy = energy_distance(toy.sample(5000, generator=torch.Generator().manual_seed(2)), toy_reference,
                              max_points=5000, generator=torch.Generator().manual_seed(1))

# %% tags=["nbval-ignore-output"]
print(f"eight Gaussians; the data itself: log-likelihood {data_log_likelihood:.3f}, energy distance of a second "
      f"sample {data_energy:.4f}, {data_modes}/8 modes\n")
print_table(toy_rows, "test log-likelihood (nats)", [("energy", "energy distance", ".4f"), ("modes", "modes", "d")])

# %%
def scatter_panels(panels: list[tuple[str, Tensor]], bounds: float, columns: int = 7, size: float = 2.2) -> None:
    """One scatter plot per (title, points (n, 2)), side by side, on the same square box."""
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, points) in zip(axes.flat, panels, strict=False):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.3, color="C0", rasterized=True)
        ax.set(xlim=(-bounds, bounds), ylim=(-bounds, bounds), aspect="equal", title=title)
        ax.title.set_fontsize(9)
    plt.tight_layout()
    plt.show()


scatter_panels([("data", toy_reference[:2000])] + [(r["family"], r["samples"][:2000]) for r in toy_rows],
               bounds=6.5)

# %% [markdown]
# Read the table column by column. The two discrete flows and flow matching come within a
# tenth of a nat of the data's log-likelihood (the spline flow and flow matching within three
# hundredths): they model the density itself. The VAE's figure is a bound, and its ELBO sits a
# further quarter of a nat below it (section 2). The GANs have no likelihood at all. Their
# energy distances are the largest, and the scatter plots show why: their samples trace an
# octagon through the eight centres, lines of mass between the modes (section 4 comes back to
# them), while the VAE's samples are blurred by its decoder's Gaussian noise. The GANs are not
# simply under-trained here: with 60 seconds each instead of about ten
# (`benchmarks/trilemma_toys.py`, recorded in `benchmarks/HISTORY.md`) their energy distances
# were no better, 0.086 and 0.039. Sampling is fastest for the GANs and the VAE (one small
# network), fast for the discrete flows (one inverse pass through their layers) and slowest for
# flow matching, whose sampler integrates an ODE with 20 steps of a fourth-order Runge-Kutta
# method, 80 evaluations of its network.
#
# All six cover all eight modes on this toy, whose modes are wide and close. Section 3 makes
# them narrow, and the GAN starts to drop some.

# %% [markdown]
# ## 2. The VAE: a bound instead of the likelihood
#
# A variational autoencoder (Kingma & Welling, 2014; Rezende, Mohamed & Wierstra, 2014) is a
# latent-variable model: draw $z \sim p(z) = \mathcal N(0, I)$, then $x \sim p(x \mid z)$, the
# decoder (here a Gaussian whose mean a network computes from $z$). Its density is an
# integral, $p(x) = \int p(x \mid z)\, p(z)\, dz$, with no closed form once the decoder is a
# network. A flow avoids the integral by making $z$ a function of $x$; a VAE instead brings in
# an encoder $q(z \mid x)$, a Gaussian $\mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)$, and
# bounds the integral from below by Jensen's inequality:
# $$\log p(x) = \log \mathbb E_{q(z \mid x)}\left[\frac{p(x \mid z)\,p(z)}{q(z \mid x)}\right]
#   \;\geq\; \mathbb E_{q(z \mid x)}\big[\log p(x \mid z) + \log p(z) - \log q(z \mid x)\big]
#   = \operatorname{ELBO}(x).$$
# The gap is exactly a divergence: $\log p(x) - \operatorname{ELBO}(x) =
# \operatorname{KL}\big(q(z \mid x)\,\|\,p(z \mid x)\big)$, zero only when the encoder finds the
# true posterior. Both networks train by gradient ascent on the ELBO, estimated with samples
# $z = \mu(x) + \sigma(x) \odot \varepsilon$, $\varepsilon \sim \mathcal N(0, I)$: the
# **reparameterisation trick**, which makes the sample a differentiable function of the
# encoder's outputs.
#
# With $k$ samples and their log-weights $w_i = \log p(x, z_i) - \log q(z_i \mid x)$, the
# **importance-weighted bound** (Burda, Grosse & Salakhutdinov, 2016)
# $$\operatorname{IWAE}_k(x) = \mathbb E\left[\log \frac1k \sum_{i=1}^k e^{w_i}\right]$$
# is the ELBO for $k = 1$, grows with $k$ and reaches $\log p(x)$ as $k \to \infty$. That is the
# figure the table of section 1 printed for the VAE.
#
# ### Exercise 1: the ELBO of a linear-Gaussian model (a derivation)
#
# In one dimension take $p(z) = \mathcal N(0, 1)$, the decoder
# $p(x \mid z) = \mathcal N(x;\, w z + b,\, \sigma^2)$ and an encoder
# $q(z \mid x) = \mathcal N(z;\, m,\, s^2)$. Here everything is known: the marginal is
# $p(x) = \mathcal N(x;\, b,\, w^2 + \sigma^2)$ and the posterior is
# $p(z \mid x) = \mathcal N\big(z;\ w (x - b) / (w^2 + \sigma^2),\ \sigma^2 / (w^2 + \sigma^2)\big)$.
#
# Derive the ELBO in closed form (no sampling) and write it as
# `linear_gaussian_elbo(x, w, b, sigma, m, s)`: tensors that broadcast against each other, one
# value per element, with torch operations and without flowlib. Then check for yourself what
# the test checks: at the true posterior the ELBO equals $\log p(x)$, and anywhere else it is
# lower by $\operatorname{KL}(q \,\|\, p(z \mid x))$.

# %% nbgrader={"grade": false, "grade_id": "08-ex1-linear-gaussian-elbo", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_gaussian_elbo(x: Tensor, w: Tensor, b: Tensor, sigma: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """E_q[log p(x | z) + log p(z) - log q(z)] for p(z) = N(0, 1), p(x | z) = N(wz + b, sigma^2), q = N(m, s^2)."""
    ### BEGIN SOLUTION
    # Under q: E[(x - wz - b)^2] = (x - wm - b)^2 + w^2 s^2 and E[z^2] = m^2 + s^2; E[log q] is
    # minus the entropy of a Gaussian, -log(2 pi e s^2) / 2.
    log_2pi = math.log(2 * math.pi)
    expected_log_likelihood = -0.5 * ((x - w * m - b) ** 2 + w**2 * s**2) / sigma**2 - torch.log(sigma) - 0.5 * log_2pi
    expected_log_prior = -0.5 * (m**2 + s**2) - 0.5 * log_2pi
    entropy = 0.5 * (log_2pi + 1) + torch.log(s)
    return expected_log_likelihood + expected_log_prior + entropy
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "08-ex1-linear-gaussian-elbo-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_1 = ("Write the three expectations under q = N(m, s^2) one by one: E_q[(x - wz - b)^2] = (x - wm - b)^2 + w^2 s^2 "
          "(a mean squared plus a variance), E_q[z^2] = m^2 + s^2, and -E_q[log q(z)] is the entropy of a Gaussian, "
          "log(2 pi e s^2) / 2. Do not forget the normalising constants of the two Gaussian densities.")


def _as64(*values: float) -> list[Tensor]:
    return [torch.as_tensor(v, dtype=torch.float64) for v in values]


def _monte_carlo_elbo(x, w, b, sigma, m, s, n: int = 400_000, seed: int = 0) -> tuple[float, float]:
    """The ELBO by the reparameterisation trick, z = m + s eps: its mean and standard error."""
    eps = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = m + s * eps
    log_joint = (-0.5 * ((x - w * z - b) / sigma) ** 2 - torch.log(sigma) - 0.5 * z**2 - math.log(2 * math.pi))
    log_q = -0.5 * eps**2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
    weights = log_joint - log_q
    return float(weights.mean()), float(weights.std() / math.sqrt(n))


def _log_marginal(x, w, b, sigma) -> Tensor:
    variance = w**2 + sigma**2
    return -0.5 * (x - b) ** 2 / variance - 0.5 * torch.log(2 * math.pi * variance)


def _check_exercise1(x, w, b, sigma, m, s) -> None:
    x, w, b, sigma, m, s = _as64(x, w, b, sigma, m, s)
    with hint(HINT_1):
        mine = float(linear_gaussian_elbo(x, w, b, sigma, m, s))
    estimate, error = _monte_carlo_elbo(x, w, b, sigma, m, s)
    assert abs(mine - estimate) < 5 * error + 1e-3, (
        f"At x={float(x)}, w={float(w)}, b={float(b)}, sigma={float(sigma)}, m={float(m)}, s={float(s)} your ELBO is "
        f"{mine:.4f}; sampling z = m + s eps gives {estimate:.4f} +- {error:.4f}. {HINT_1}")
    assert mine <= float(_log_marginal(x, w, b, sigma)) + 1e-9, f"The ELBO must not exceed log p(x). {HINT_1}"


_check_exercise1(0.7, 1.5, -0.2, 0.5, 0.1, 0.8)
_check_exercise1(-2.0, 0.3, 1.0, 1.2, -1.0, 0.2)
_x, _w, _b, _sigma = _as64(1.3, 2.0, 0.5, 0.7)
_m_star, _s_star = _w * (_x - _b) / (_w**2 + _sigma**2), _sigma / torch.sqrt(_w**2 + _sigma**2)
with hint(HINT_1):
    check_close(linear_gaussian_elbo(_x, _w, _b, _sigma, _m_star, _s_star), _log_marginal(_x, _w, _b, _sigma),
                f"With q the exact posterior the ELBO equals log p(x) (the gap is the KL, here 0). {HINT_1}", atol=1e-10)
    _batch = linear_gaussian_elbo(torch.randn(7, dtype=torch.float64), _w, _b, _sigma, _m_star, _s_star)
    assert _batch.shape == (7,), f"One value per element of x: expected shape (7,), got {tuple(_batch.shape)}."
    check_vectorised(linear_gaussian_elbo, lambda n: (torch.randn(n), torch.rand(n) + 0.5, torch.randn(n),
                                                      torch.rand(n) + 0.5, torch.randn(n), torch.rand(n) + 0.5),
                     "Compute every element at once, with tensor operations.")
    check_own_work(linear_gaussian_elbo, *_as64(0.1, 1.0, 0.0, 1.0, 0.0, 1.0),
                   message="Write the closed form yourself, with torch operations (not with flowlib).")
### BEGIN HIDDEN TESTS
_g1 = torch.Generator().manual_seed(11)
for _ in range(4):
    _x, _w, _b, _m = (torch.randn(1, generator=_g1, dtype=torch.float64)[0] for _ in range(4))
    _sigma, _s = (torch.rand(1, generator=_g1, dtype=torch.float64)[0] + 0.2 for _ in range(2))
    _check_exercise1(_x, _w, _b, _sigma, _m, _s)
    _mean_post = _w * (_x - _b) / (_w**2 + _sigma**2)
    _var_post = _sigma**2 / (_w**2 + _sigma**2)
    _kl = 0.5 * (_s**2 / _var_post + (_m - _mean_post) ** 2 / _var_post - 1 + torch.log(_var_post / _s**2))
    check_close(_log_marginal(_x, _w, _b, _sigma) - linear_gaussian_elbo(_x, _w, _b, _sigma, _m, _s), _kl,
                f"log p(x) - ELBO should be KL(q || p(z | x)). {HINT_1}", atol=1e-9)
### END HIDDEN TESTS
print("Exercise 1 passed")

# %% [markdown]
# The ELBO has three parts: how well the decoder explains $x$ from the encoder's $z$, minus
# what the encoder spends to move away from the prior. Its gap to $\log p(x)$ is the KL from
# $q$ to the true posterior, so the bound is tight only if the encoder's family contains the
# posterior. In this linear model it does; for a VAE whose decoder is a network, the posterior
# is anything but a diagonal Gaussian, and the gap stays open. The importance-weighted bound
# closes it by averaging the weights *before* the logarithm.
#
# ### Exercise 2: the importance-weighted bound (an implementation used later)
#
# Write `iwae_bound(log_weights)`: given log-weights $w_{i,j}$ of shape `(k, n)` ($k$ samples of
# each of $n$ points), return $\log \frac1k \sum_i e^{w_{i,j}}$, shape `(n,)`. Log-weights of
# images are often below $-1000$ nats, where $e^{w}$ is 0 in floating point: compute it so that
# it stays exact there (think of what you can factor out of the sum). Torch operations,
# vectorised, without flowlib. Your function draws the next figure: the bound of the toy VAE
# as $k$ grows from 1 to 1000.

# %% nbgrader={"grade": false, "grade_id": "08-ex2-iwae-bound", "locked": false, "schema_version": 3, "solution": true, "task": false}
def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_i exp(w_i) over the first axis of log-weights (k, n), shape (n,), stable for any w."""
    ### BEGIN SOLUTION
    # Factor out the largest weight of each column: log sum exp(w) = w_max + log sum exp(w - w_max),
    # where every term is at most 1 and the largest is exactly 1.
    top = log_weights.max(dim=0).values
    return top + torch.log(torch.exp(log_weights - top).mean(dim=0))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "08-ex2-iwae-bound-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_2 = ("The bound is log of the MEAN of exp(w) over the k rows (axis 0). exp(-1000) is 0 in floating point: "
          "subtract each column's largest log-weight before exponentiating and add it back after the log.")
with hint(HINT_2):
    check_close(iwae_bound(torch.log(torch.tensor([[1.0], [3.0]]))), torch.tensor([math.log(2.0)]),
                f"For weights 1 and 3 the mean is 2, so the bound is log 2. {HINT_2}")
    _w = torch.randn(5, 4, dtype=torch.float64) * 3
    check_close(iwae_bound(_w[:1]), _w[0], f"With k = 1 the bound is the log-weight itself (the ELBO). {HINT_2}")
    check_close(iwae_bound(_w), importance_weighted_bound(_w), f"Your bound differs from the definition. {HINT_2}",
                atol=1e-10)
    _far = torch.tensor([[-1000.0, 800.0], [-1000.0 + math.log(3.0), 800.0]], dtype=torch.float64)
    _out = iwae_bound(_far)
    assert torch.isfinite(_out).all(), f"Log-weights of -1000 and +800 nats give {_out.tolist()}: not finite. {HINT_2}"
    check_close(_out, torch.tensor([-1000.0 + math.log(2.0), 800.0], dtype=torch.float64),
                f"Far from 0 the bound must stay exact. {HINT_2}", atol=1e-9)
    check_vectorised(iwae_bound, lambda n: (torch.randn(6, n),), "Compute every column at once, with tensor operations.")
    check_own_work(iwae_bound, torch.randn(3, 2), message="Write the bound yourself (not with flowlib).")
### BEGIN HIDDEN TESTS
for _seed in (5, 6):
    _w = torch.randn(1 + _seed, 9, generator=torch.Generator().manual_seed(_seed), dtype=torch.float64) * 50 - 700
    check_close(iwae_bound(_w), importance_weighted_bound(_w), f"Large negative log-weights. {HINT_2}", atol=1e-8)
### END HIDDEN TESTS
print("Exercise 2 passed")

# %% [markdown]
# Now the toy VAE of section 1, beside a second VAE whose posterior is a flow: the encoder's
# Gaussian sample $z_0$ pushed through four planar layers $g$ (lecture 2), the use Rezende &
# Mohamed (2015) designed planar flows for, scored by the change of variables
# $\log q(z_K \mid x) = \log q_0(z_0 \mid x) - \log\left|\det \partial g / \partial z_0\right|$.
# (Here the planar layers' parameters are shared by all $x$; in the paper an encoder computes
# them for each $x$.) Both train for the same number of steps. For each, the bound on 1000 test
# points as $k$ grows: the first $k$ of 1000 log-weights per point, through your `iwae_bound`.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
planar_vae = VAE(2, 2, hidden=64, likelihood="gaussian", posterior_flow=Compose([Planar(2) for _ in range(4)]))
planar_vae_seconds = train_family(planar_vae, toy_train, TOY_STEPS["VAE"], TOY_LR["VAE"])
print(f"VAE with a planar posterior: {TOY_STEPS['VAE']} steps in {planar_vae_seconds:.1f} s")

# %% tags=["nbval-ignore-output"]
bound_of = yours_or_reference(iwae_bound, importance_weighted_bound, "Exercise 2")
K_VALUES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
torch.manual_seed(0)
bounds_by_k = {}
for _label, _vae in (("Gaussian posterior", toy_models["VAE"]), ("planar-flow posterior", planar_vae)):
    _log_w = vae_log_weights(_vae, toy_test[:1000], k=max(K_VALUES))
    bounds_by_k[_label] = [float(bound_of(_log_w[:k]).mean()) for k in K_VALUES]
fig, ax = plt.subplots(figsize=(6.5, 3.5))
for _label, _values in bounds_by_k.items():
    ax.plot(K_VALUES, _values, "o-", label=f"VAE, {_label}")
ax.axhline(float(toy.log_prob(toy_test[:1000]).mean()), color="k", ls="--", label="the data's log-likelihood")
ax.set(xscale="log", xlabel="k (samples per point)", ylabel="mean bound (nats)",
       title="the importance-weighted bound closes the gap as k grows")
ax.legend(fontsize=8)
plt.show()
for _label, _values in bounds_by_k.items():
    print(f"{_label:>22}: ELBO (k = 1) {_values[0]:.3f}, k = 10 {_values[3]:.3f}, k = 1000 {_values[-1]:.3f} nats")

# %% [markdown]
# Two gaps show. The bound rises with $k$ for both VAEs, fast at first and then slowly: what
# $k = 1000$ leaves is the gap between the VAE's own $\log p(x)$ and the data's, the model's
# real misfit. And the flow posterior starts higher: its ELBO is closer to its IWAE bound,
# because four planar layers already bend the encoder's Gaussian towards the true posterior.
# The two curves need not meet at large $k$: they are two different models, each trained on
# its own ELBO.
#
# A flow needs none of this: its $\log p_X(x)$ is exact with one pass, and the price it pays
# instead is the invertible architecture.

# %% [markdown]
# ### Exercise 3: a VAE within 0.2 nats of the data (design)
#
# The toy VAE of section 1 ends about 0.3 to 0.5 nats below the data's log-likelihood even by
# its tightest bound. Design one that does better under a fixed budget: `design_vae()` returns
# an **untrained** `VAE` for the eight Gaussians (`data_dim=2`, `likelihood="gaussian"`) with
# **at most 20,000 parameters** and `train_samples` at most 16. The test trains it for **1500
# steps** of Adam at learning rate $3 \cdot 10^{-3}$ on batches of 512 points (seconds) and
# requires its IWAE bound with $k = 1000$ on 2000 test points to come **within 0.2 nats** of
# the data's log-likelihood. The knobs: the latent size, the widths and depths of the networks,
# a posterior flow, the decoder's starting noise, and `train_samples`, the $k$ of the bound
# the model trains on. Think about which gap the figure above says is the larger one, and which
# knob acts on it.

# %% nbgrader={"grade": false, "grade_id": "08-ex3-design-vae", "locked": false, "schema_version": 3, "solution": true, "task": false}
def design_vae() -> VAE:
    """An untrained VAE of the eight Gaussians, <= 20,000 parameters, train_samples <= 16."""
    ### BEGIN SOLUTION
    # Training on the IWAE bound itself (Burda et al., 2016) lets the decoder fit the data although
    # the Gaussian encoder cannot follow the posterior: with k = 8 the bound ends 0.16-0.18 nats
    # from the data after 1500 steps, where the ELBO-trained VAE stays near 0.48 and a planar
    # posterior near 0.37.
    return VAE(2, 2, hidden=64, likelihood="gaussian", train_samples=8)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "08-ex3-design-vae-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
HINT_3 = ("Return an untrained VAE(2, latent_dim, ..., likelihood='gaussian'). The figure above shows that even "
          "k = 1000 leaves most of the gap: the model itself is off, because the ELBO it trained on penalises a "
          "decoder whose posterior the Gaussian encoder cannot follow. Train on a tighter bound (train_samples).")
VAE_BUDGET, VAE_STEPS, VAE_TARGET = 20_000, 1500, 0.2


def _train_vae_design(seed: int) -> tuple[int, float]:
    torch.manual_seed(seed)
    with hint(HINT_3):
        model = design_vae()
    assert isinstance(model, VAE) and model.data_dim == 2 and model.likelihood == "gaussian", (
        f"design_vae must return a VAE(2, ..., likelihood='gaussian'), got {model!r:.80}. {HINT_3}")
    size = count_parameters(model)
    assert size <= VAE_BUDGET, f"Your VAE has {size:,} parameters, over the budget of {VAE_BUDGET:,}. {HINT_3}"
    assert model.train_samples <= 16, f"train_samples is {model.train_samples}; at most 16. {HINT_3}"
    fit(model, toy_train, steps=VAE_STEPS, batch_size=512, lr=3e-3, seed=seed, progress=False, device="cpu")
    model.eval()
    torch.manual_seed(seed)
    bound = float(importance_weighted_bound(vae_log_weights(model, toy_test[:2000], k=1000)).mean())
    return size, float(toy.log_prob(toy_test[:2000]).mean()) - bound


_size, _gap = _train_vae_design(seed=0)
assert math.isfinite(_gap) and _gap < VAE_TARGET, (
    f"After {VAE_STEPS} steps your VAE ({_size:,} parameters) ends {_gap:.3f} nats below the data by its IWAE-1000 "
    f"bound; the target is within {VAE_TARGET}. {HINT_3}")
### BEGIN HIDDEN TESTS
_size, _gap = _train_vae_design(seed=1)  # another start
assert math.isfinite(_gap) and _gap < VAE_TARGET + 0.02, (
    f"From another initialisation (seed 1) your VAE ends {_gap:.3f} nats below the data; the target is within "
    f"{VAE_TARGET} (0.02 of slack here). {HINT_3}")
### END HIDDEN TESTS
print("Exercise 3 passed")

# %% [markdown]
# A VAE trained on $\operatorname{IWAE}_k$ is a better density model and a worse
# autoencoder: the encoder now only has to propose samples that the weights correct, so its
# ELBO falls far below its IWAE bound, and as $k$ grows the encoder's own gradient gets weaker
# (Rainforth et al., 2018). Whatever the bound, the VAE's $\log p(x)$ stays out of reach: only
# bounds are ever printed for it.
#
# ## 3. The GAN: a sampler without a density
#
# A GAN (Goodfellow et al., 2014) learns only the generator $G: z \mapsto x$. A second
# network, the discriminator $D(x) \in (0, 1)$, learns to tell data from samples, and the
# two play the minimax game
# $$\min_G \max_D\; \mathbb E_{x \sim p_{\text{data}}}[\log D(x)] + \mathbb E_{z}[\log(1 - D(G(z)))] .$$
# For the best discriminator the generator minimises $2\,\mathrm{JSD}(p_{\text{data}} \,\|\, p_G) -
# \log 4$. In practice the generator maximises $\log D(G(z))$ instead, the *non-saturating*
# loss, whose gradient does not vanish when the discriminator wins early. The Wasserstein GAN
# (Arjovsky et al., 2017) replaces $D$ by a critic that estimates the earth mover's distance,
# $\max_{\|D\|_L \leq 1} \mathbb E[D(x)] - \mathbb E[D(G(z))]$, and the gradient penalty
# $\lambda\, \mathbb E\big[(\|\nabla_{\hat x} D(\hat x)\| - 1)^2\big]$ at points $\hat x$
# between data and samples keeps the critic near 1-Lipschitz (Gulrajani et al., 2017).
#
# Nothing in either game asks the generator to put mass everywhere the data has it. A flow's
# maximum likelihood does: a data point where the model has almost no density costs
# $-\log p_X(x)$, without bound. A generator, instead, is rewarded for samples the
# discriminator accepts; if it has learned some modes well, it can stay there. That is **mode
# dropping** (Srivastava et al., 2017; Arora & Zhang, 2017). To see it, make the eight modes
# narrow: standard deviation 0.05 instead of 0.5, so each mode is 30 of its own widths from the
# next. A GAN trains on it, and every 100 generator steps we count the modes that hold at
# least 5% of 10,000 samples within three standard deviations of their centre; a spline flow
# trains on the same points, by maximum likelihood.

# %% tags=["nbval-ignore-output"]
narrow = EightGaussians(std=0.05)
narrow_train = narrow.sample(50_000, generator=torch.Generator().manual_seed(3))
narrow_test = narrow.sample(5000, generator=torch.Generator().manual_seed(4))
torch.manual_seed(0)
narrow_gan = GAN(2, latent_dim=2, hidden=64)
gan_coverage = []


def count_modes(step: int, gan: GAN) -> None:
    """Every 100 generator steps: how many narrow modes hold >= 5% of 10,000 samples."""
    if step % 100 == 0:
        gan.eval()
        gan_coverage.append((step, modes_covered(gan.sample(10_000), narrow.centres, radius=3 * narrow.std)))


narrow_gan_seconds = time.perf_counter()
fit_gan(narrow_gan, narrow_train, steps=DROP_STEPS, lr=1e-3, seed=0, callback=count_modes)
narrow_gan_seconds = time.perf_counter() - narrow_gan_seconds
narrow_gan.eval()
torch.manual_seed(0)
narrow_flow = nsf(2)
narrow_flow_seconds = train_family(narrow_flow, narrow_train, NARROW_FLOW_STEPS, 3e-3)
with torch.no_grad():
    narrow_samples = {"GAN": narrow_gan.sample(10_000), "NSF": narrow_flow.sample(10_000)}
    narrow_flow_log_likelihood = float(narrow_flow.log_prob(narrow_test).mean())
narrow_modes = {name: modes_covered(x, narrow.centres, radius=3 * narrow.std) for name, x in narrow_samples.items()}
print(f"GAN: {DROP_STEPS} generator steps in {narrow_gan_seconds:.0f} s; modes held every 500 steps: "
      f"{[c for s, c in gan_coverage if s % 500 == 0]}; at the end {narrow_modes['GAN']}/8")
print(f"NSF: {NARROW_FLOW_STEPS} steps in {narrow_flow_seconds:.0f} s; at the end {narrow_modes['NSF']}/8; test "
      f"log-likelihood {narrow_flow_log_likelihood:.2f} nats (the data's own "
      f"{float(narrow.log_prob(narrow_test).mean()):.2f})")

# %% tags=["nbval-ignore-output"]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.6, 1, 1]})
if gan_coverage:
    axes[0].plot(*zip(*gan_coverage, strict=True), label="GAN, non-saturating (every 100 steps)")
axes[0].scatter([NARROW_FLOW_STEPS], [narrow_modes["NSF"]], color="C1", zorder=3,
                label=f"NSF after its {NARROW_FLOW_STEPS} steps")
axes[0].set(xlabel="training steps", ylabel="modes with >= 5% of the samples", ylim=(-0.3, 8.3),
            title="mode coverage of the narrow eight Gaussians")
axes[0].legend(fontsize=8)
for ax, (_name, _samples) in zip(axes[1:], narrow_samples.items(), strict=True):
    ax.scatter(_samples[:3000, 0], _samples[:3000, 1], s=1, alpha=0.3, rasterized=True)
    ax.scatter(narrow.centres[:, 0], narrow.centres[:, 1], marker="x", color="k", s=30, label="the eight centres")
    ax.set(xlim=(-5.5, 5.5), ylim=(-5.5, 5.5), aspect="equal", title=f"{_name}: {narrow_modes[_name]}/8 modes held")
    ax.title.set_fontsize(9)
axes[1].legend(fontsize=7, loc="lower left")
plt.tight_layout()
plt.show()

# %% [markdown]
# In the run saved with this notebook the GAN's coverage creeps up and stalls at half of the
# modes: after 3000 generator steps four of the eight narrow Gaussians hold their share of its
# samples, and the rest of its mass lies on the lines between them, the continuous image of
# its 2D latent plane. The spline flow, trained by maximum likelihood for a tenth of the steps
# on the same points, holds all eight: every mode it missed would have cost it $-\log p_X(x)$
# on an eighth of the data. (Lecture 0's table says a GAN "may drop modes": more steps, a
# larger latent space or a Wasserstein critic change the count, and none of them changes what
# the loss rewards.)

# %% [markdown]
# ## 4. Flow matching: diffusion seen as a continuous flow
#
# A continuous flow moves points along an ODE, $\frac{dx_t}{dt} = v(x_t, t)$, from noise
# $x_0 \sim \mathcal N(0, I)$ at $t = 0$ to data at $t = 1$. Integrated backwards from
# $x_1 = x$ it is the map $f: x \mapsto z = x_0$ of every lecture, and the log-determinant
# becomes an integral, the **instantaneous change of variables** (Chen et al., 2018):
# $$\log p_X(x) = \log p_Z(x_0) - \int_0^1 \nabla \cdot v(x_t, t)\, dt .$$
# In 2D the divergence $\nabla \cdot v = \operatorname{tr}(\partial v / \partial x)$ is exact with two
# backward passes; for images, Hutchinson's estimator
# $\mathbb E_\varepsilon[\varepsilon^\top (\partial v / \partial x)\, \varepsilon]$ gives it
# without bias in one (section 5).
#
# Training by maximum likelihood would integrate the ODE at every step. **Flow matching**
# (Lipman et al., 2023) avoids that: pair a noise sample $x_0$ with a data sample $x_1$, join
# them by the straight path $x_t = (1 - t)\, x_0 + t\, x_1$, whose velocity is $x_1 - x_0$, and
# regress the network on it:
# $$L(v) = \mathbb E_{t \sim U(0, 1),\, x_0,\, x_1} \big\| v(x_t, t) - (x_1 - x_0) \big\|^2 .$$
# A regression's minimiser is the conditional mean, $v^\star(x, t) = \mathbb E[x_1 - x_0 \mid x_t = x]$,
# and this averaged field carries the whole noise distribution to the whole data distribution
# although no single path is followed.
#
# ### Exercise 4: the velocity field for Gaussian data (a derivation)
#
# In one dimension let the data be $x_1 \sim \mathcal N(\mu, s^2)$, independent of
# $x_0 \sim \mathcal N(0, 1)$. Then $x_t$ and $x_1 - x_0$ are jointly Gaussian. Derive
# $v^\star(x, t) = \mathbb E[x_1 - x_0 \mid x_t = x]$ in closed form (Gaussian conditioning:
# $\mathbb E[A \mid B = b] = \mathbb E A + \frac{\operatorname{Cov}(A, B)}{\operatorname{Var} B}(b - \mathbb E B)$)
# and write it as `gaussian_velocity(x, t, mu, s)`, elementwise for tensors that broadcast,
# with torch operations and without flowlib. The test checks the two properties that define
# it: the residual $v^\star(x_t, t) - (x_1 - x_0)$ is uncorrelated with every function of
# $x_t$ (that is what a conditional mean is), and the ODE $dx/dt = v^\star(x, t)$ carries
# $\mathcal N(0, 1)$ exactly to $\mathcal N(\mu, s^2)$.

# %% nbgrader={"grade": false, "grade_id": "08-ex4-gaussian-velocity", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gaussian_velocity(x: Tensor, t: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    """E[x_1 - x_0 | x_t = x] for x_t = (1 - t) x_0 + t x_1, x_0 ~ N(0, 1), x_1 ~ N(mu, s^2), elementwise."""
    ### BEGIN SOLUTION
    # E x_t = t mu, Var x_t = (1 - t)^2 + t^2 s^2, E[x_1 - x_0] = mu and
    # Cov(x_1 - x_0, x_t) = t s^2 - (1 - t) (x_0 enters x_t with weight 1 - t and x_1 - x_0 with -1).
    variance = (1 - t) ** 2 + t**2 * s**2
    return mu + (t * s**2 - (1 - t)) / variance * (x - t * mu)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "08-ex4-gaussian-velocity-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
HINT_4 = ("Take A = x_1 - x_0 and B = x_t = (1 - t) x_0 + t x_1, with x_0 and x_1 independent: E A = mu, E B = t mu, "
          "Var B = (1 - t)^2 + t^2 s^2, and Cov(A, B) = t Var(x_1) - (1 - t) Var(x_0).")


def _check_residual(mu: float, s: float, t: float, n: int = 1_000_000, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    x1 = mu + s * torch.randn(n, generator=g, dtype=torch.float64)
    xt = (1 - t) * x0 + t * x1
    with hint(HINT_4):
        v = gaussian_velocity(xt, *_as64(t, mu, s))
    residual = v - (x1 - x0)
    for name, h in (("1", torch.ones_like(xt)), ("x_t", xt), ("x_t^2", xt**2)):
        correlation = float((residual * h).mean())
        scale = float((residual * h).std() / math.sqrt(n))
        assert abs(correlation) < 5 * scale + 1e-4, (
            f"At t = {t}, mu = {mu}, s = {s}: E[residual * {name}] = {correlation:.4f} (+- {scale:.4f}), not 0, so "
            f"your field is not the conditional mean of x_1 - x_0. {HINT_4}")


def _check_transport(mu: float, s: float, steps: int = 200, n: int = 200_000) -> None:
    x = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu_, s_ = _as64(mu, s)
    h = 1.0 / steps

    def field(x, t):
        return gaussian_velocity(x, torch.as_tensor(t, dtype=torch.float64), mu_, s_)

    with hint(HINT_4):
        for i in range(steps):  # fourth-order Runge-Kutta
            t = i * h
            k1 = field(x, t)
            k2 = field(x + 0.5 * h * k1, t + 0.5 * h)
            k3 = field(x + 0.5 * h * k2, t + 0.5 * h)
            k4 = field(x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert abs(float(x.mean()) - mu) < 0.01 and abs(float(x.std()) - s) < 0.01, (
        f"The ODE carries N(0, 1) to mean {float(x.mean()):.3f}, std {float(x.std()):.3f}; the data have mean {mu}, "
        f"std {s}. {HINT_4}")


_check_residual(mu=2.0, s=0.5, t=0.3)
_check_residual(mu=-1.0, s=1.5, t=0.8)
_check_transport(mu=2.0, s=0.5)
with hint(HINT_4):
    check_close(gaussian_velocity(*_as64(0.7, 0.0, 2.0, 0.5)), torch.tensor(1.3, dtype=torch.float64),
                f"At t = 0, x_t = x_0 is the noise itself, so E[x_1 - x_0 | x_0 = x] = mu - x = 1.3. {HINT_4}",
                atol=1e-10)
    check_vectorised(gaussian_velocity, lambda n: (torch.randn(n), torch.rand(n), torch.randn(n), torch.rand(n) + 0.5),
                     "Compute every element at once, with tensor operations.")
    check_own_work(gaussian_velocity, *_as64(0.1, 0.5, 1.0, 1.0),
                   message="Write the field yourself, with torch operations (not with flowlib).")
### BEGIN HIDDEN TESTS
for _mu, _s, _t in ((0.5, 0.2, 0.5), (3.0, 2.0, 0.1), (-2.0, 0.7, 0.95)):
    _check_residual(_mu, _s, _t, seed=7)
_check_transport(mu=-3.0, s=2.5)
### END HIDDEN TESTS
print("Exercise 4 passed")

# %% [markdown]
# The same field, read another way. By Tweedie's formula the noise that a point $x_t$ holds is
# predicted by the score of its marginal, $\mathbb E[x_0 \mid x_t = x] = -(1 - t)\, \nabla_x \log p_t(x)$,
# and since $x_1 - x_0 = (x_t - x_0) / t$ along the path,
# $$v^\star(x, t) = \frac{x + (1 - t)\, \nabla_x \log p_t(x)}{t} .$$
# A diffusion model trained by denoising score matching (Vincent, 2011; Song et al., 2021)
# regresses on the noise $x_0$ to learn the score; flow matching regresses on $x_1 - x_0$ to
# learn $v$; with this path one is an affine function of the other. This is the "unified
# perspective": diffusion models are continuous flows whose probability-flow ODE gives samples
# and an exact log-likelihood, which is how section 1 scored the flow-matching model. (For the
# Gaussian data of Exercise 4, $p_t = \mathcal N(t\mu,\ (1 - t)^2 + t^2 s^2)$: put its score into
# the formula and you get your answer back.)
#
# Here are the paths the section-1 model follows, from noise to the eight Gaussians.

# %% tags=["nbval-ignore-output"]
fm_model = toy_models["flow matching"]
with torch.no_grad():
    _x = torch.randn(300, 2, generator=torch.Generator().manual_seed(4))
    _path = [_x]
    for _i in range(50):  # Euler steps, enough for a picture
        _x = _x + fm_model.field(_x, _i / 50) / 50
        _path.append(_x)
_path = torch.stack(_path)
fig, ax = plt.subplots(figsize=(4.2, 4.2))
ax.plot(_path[:, :, 0], _path[:, :, 1], color="C0", alpha=0.25, lw=0.6)
ax.scatter(_path[0, :, 0], _path[0, :, 1], s=4, color="C1", label="t = 0 (noise)", zorder=3)
ax.scatter(_path[-1, :, 0], _path[-1, :, 1], s=4, color="C3", label="t = 1 (samples)", zorder=3)
ax.set(xlim=(-6.5, 6.5), ylim=(-6.5, 6.5), aspect="equal", title="paths of the learned ODE")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ### Exercise 5: a loss that falls while the samples go wrong (debugging)
#
# A colleague wrote the flow-matching loss below and trained a model with it. The loss falls
# smoothly, yet the samples are far from the eight Gaussians. Run the cell, look at the
# picture, then find the bug: write down the velocity $dx_t / dt$ of the path the loss uses,
# and compare it with the target the network is asked to match.
#
# Write `fixed_flow_matching_loss(model, x1, generator=None)`, the same loss with the bug
# fixed: it must draw the noise and the times exactly as the buggy one does (same order, same
# calls), so that with the same generator it gives the same numbers as flowlib's
# `FlowMatching.loss`. The model that the cell after the test trains with your loss shows
# whether you found it.

# %%
def buggy_flow_matching_loss(model: FlowMatching, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The flow-matching regression on a batch x1, as a colleague wrote it."""
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((model.field(xt, t) - (x1 - xt)) ** 2).sum(1).mean()


FM_DEBUG_STEPS = 1500  # the same in every mode: a couple of seconds


def train_flow_matching(loss, seed: int = 0) -> tuple[FlowMatching, list[float]]:
    """A small flow-matching model of the eight Gaussians trained with ``loss(model, x1)``."""
    torch.manual_seed(seed)
    model = FlowMatching(2, hidden=64, layers=3)
    result = fit(model, toy_train, steps=FM_DEBUG_STEPS, batch_size=512, lr=2e-3, seed=seed,
                 loss_fn=lambda m, x: loss(m, x), progress=False)
    return model.eval(), result.history.losses


# %% tags=["nbval-ignore-output"]
buggy_model, buggy_losses = train_flow_matching(buggy_flow_matching_loss)
_buggy_samples = buggy_model.sample(3000)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
axes[0].plot(buggy_losses)
axes[0].set(xlabel="step", ylabel="loss", title="the buggy loss falls")
axes[1].scatter(_buggy_samples[:, 0], _buggy_samples[:, 1], s=1, alpha=0.3)
axes[1].set(xlim=(-6.5, 6.5), ylim=(-6.5, 6.5), aspect="equal", title="its samples")
plt.tight_layout()
plt.show()
print(f"energy distance of the buggy model's samples to the data: "
      f"{energy_distance(_buggy_samples, toy_reference[:3000]):.3f}")

# %% nbgrader={"grade": false, "grade_id": "08-ex5-fixed-loss", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fixed_flow_matching_loss(model: FlowMatching, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The flow-matching regression on a batch x1, with the bug fixed."""
    ### BEGIN SOLUTION
    # The target was x1 - xt, the displacement still to go, which is (1 - t)(x1 - x0): the model
    # learned a field (1 - t) times too slow, so the ODE stops short of the data. The velocity of
    # the straight path is x1 - x0, the same at every t.
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return ((model.field(xt, t) - (x1 - x0)) ** 2).sum(1).mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "08-ex5-fixed-loss-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_5 = ("The network must match the velocity of the path, d x_t / dt for x_t = (1 - t) x0 + t x1. Is that what "
          "the colleague's target is, at every t? Keep the two random draws as they are, x0 first, then t.")


def _check_exercise5(seed: int, n: int) -> None:
    torch.manual_seed(seed)
    model = FlowMatching(2, hidden=16, layers=2)
    x1 = toy.sample(n, generator=torch.Generator().manual_seed(seed))
    with hint(HINT_5):
        mine = fixed_flow_matching_loss(model, x1, torch.Generator().manual_seed(seed))
    check_close(mine, model.loss(x1, torch.Generator().manual_seed(seed)),
                f"With the same generator your loss differs from flowlib's FlowMatching.loss (n = {n}). {HINT_5}")
    assert mine.requires_grad, f"The loss must be differentiable in the model's parameters. {HINT_5}"


_check_exercise5(seed=0, n=64)
with hint(HINT_5):
    check_own_work(fixed_flow_matching_loss, FlowMatching(2, hidden=8), toy_train[:8],
                   allowed=("flowlib.families.flow_matching.FlowMatching.field", "flowlib.nets"),
                   message="Write the loss yourself (you may call model.field, not model.loss).")
### BEGIN HIDDEN TESTS
for _seed in (3, 4):
    _check_exercise5(seed=_seed, n=17 * _seed)
### END HIDDEN TESTS
print("Exercise 5 passed")

# %% tags=["nbval-ignore-output"]
_loss = yours_or_reference(fixed_flow_matching_loss, lambda m, x1, generator=None: m.loss(x1, generator), "Exercise 5")
fixed_model, _ = train_flow_matching(_loss)
_fixed_samples = fixed_model.sample(3000)
print(f"energy distance to the data after {FM_DEBUG_STEPS} steps: buggy loss "
      f"{energy_distance(_buggy_samples, toy_reference[:3000]):.3f}, your loss "
      f"{energy_distance(_fixed_samples, toy_reference[:3000]):.3f}")
scatter_panels([("buggy loss", _buggy_samples), ("your loss", _fixed_samples), ("data", toy_reference[:3000])],
               bounds=6.5, columns=3, size=2.8)

# %% [markdown]
# A loss that falls says only that the network fits *its* targets. Whether those targets are
# the ones the sampler needs is a separate question, checked here by the samples (or, for a
# density model, by a likelihood the loss did not optimise).

# %% [markdown]
# ### The topology of a flow: why the bridges stay
#
# Lectures 3 and 4 saw NICE leave thin bridges of density between the eight Gaussians and
# blamed volume preservation. RealNVP and the spline flow change volume freely, and their
# log-densities below still show the bridges. The cause is topology. A flow's map $f$ is
# continuous with a continuous inverse, and $p_X(x) = p_Z(f(x))\,|\det \partial f / \partial x|$
# is positive and continuous on the whole plane: the image of the connected latent space is
# connected, and there is no way to cut it into eight pieces. The density between two modes
# can be made small only by stretching, mapping a thin sheet of latent space onto a wide gap,
# and the smaller the density in the gap, the larger the Lipschitz constant the map needs; a
# network of bounded size trained for a finite time keeps it bounded, so some mass stays on
# the bridges (Cornish et al., 2020, make this precise with the bi-Lipschitz constant). The
# time-one map of an ODE with a smooth field is a homeomorphism too (Dupont et al., 2019), so
# flow matching is bound by the same argument. And a generator or a decoder is a continuous
# map of a connected latent space: the set its samples can reach is connected as well.
#
# The pictures show $\log p_X$ on a log scale down to $e^{-14}$; the table counts, for every
# family, the share of 10,000 samples that fall farther than four standard deviations (2.0) from
# every centre, where the data put $e^{-8} \approx 0.03\%$ of their mass.

# %% tags=["nbval-ignore-output"]
def log_density_map(log_prob) -> Tensor:
    """log p on the GRID x GRID grid of the toy's box (no gradients kept)."""
    return density_on_grid(log_prob, toy.bounds, resolution=GRID, log=True)[2]


_maps = {"data": log_density_map(toy.log_prob)}
for _name in ("NSF", "RealNVP"):
    with torch.no_grad():
        _maps[_name] = log_density_map(toy_models[_name].log_prob)
_maps["flow matching"] = log_density_map(lambda x: toy_models["flow matching"].log_prob(x, steps=20).detach())
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, (_name, _log_p) in zip(axes, _maps.items(), strict=True):
    _image = ax.imshow(_log_p.clamp(min=-14).numpy(), origin="lower", extent=(*toy.bounds, *toy.bounds),
                       vmin=-14, vmax=-1, cmap="magma")
    ax.set(title=_name, xticks=[], yticks=[])
fig.colorbar(_image, ax=axes, shrink=0.8, label="log density")
plt.show()

# %% tags=["nbval-ignore-output"]
def bridge_share(samples: Tensor) -> float:
    """The share of samples farther than four standard deviations from every centre."""
    return float((torch.cdist(samples.double(), toy.centres).min(1).values > 4 * toy.std).double().mean())


bridge_shares = {"data": bridge_share(toy.sample(10_000, generator=torch.Generator().manual_seed(5)))}
bridge_shares.update({r["family"]: bridge_share(r["samples"]) for r in toy_rows})
for _name, _share in bridge_shares.items():
    print(f"{_name:>14}: {100 * _share:5.2f}% of the samples on the bridges")

# %% [markdown]
# Every family puts more mass on the bridges than the data do, ten to several hundred times
# as much in this run, whatever its loss: the flows, flow matching, the VAE (whose decoder
# adds its Gaussian noise besides) and the GANs. The limit is the continuity of the map from a
# connected latent space, not the likelihood and not volume preservation. Remedies give up a
# little of it: mixtures of flows, or a latent variable that selects one of several flows
# (the continuously indexed flows of Cornish et al., 2020), or a discrete latent.
#
# ## 5. The same families on the digits
#
# The 8x8 digits of lectures 3 and 4 (1259 training images, 359 test images, 17 grey levels)
# for four of the families; the RBM, which wants binary pixels, gets section 6. Every model
# sees the same vectors: the image dequantised with uniform noise, $y = (x + u)/17 \in [0, 1]^{64}$,
# and centred and scaled, $s = 4\,(y - \tfrac12) \in [-2, 2]^{64}$, with fresh noise in each of ten
# copies of the training set. Likelihoods are reported in **bits per dimension** of the
# discrete images, from $\log p_Y(y) = \log p_S(s) + 64 \log 4$ (the change of variables of the
# scaling) and `flowlib.metrics.bits_per_dim` with $K = 17$ (lecture 4): a model that is uniform
# on the cube scores $\log_2 17 = 4.09$.
#
# A likelihood says nothing about a GAN, so sample quality needs its own yardstick: a **fixed
# classifier**, a logistic regression trained once on the real training digits. Two numbers
# come from it: its mean confidence (the largest class probability) on a model's samples, and
# how many of the ten classes receive at least 5% of them, the digits' version of mode
# coverage. The classifier's figures on real test digits are the reference.

# %%
DIGIT_SCALE = 4.0  # s = DIGIT_SCALE * (y - 1/2)


def digit_vectors(images: Tensor, copies: int, seed: int) -> Tensor:
    """``copies`` dequantised copies of uint8 images (n, 1, 8, 8) as vectors s in [-2, 2]^64."""
    g = torch.Generator().manual_seed(seed)
    flat = images.reshape(images.shape[0], -1).float().repeat(copies, 1)
    y = (flat + torch.rand(flat.shape, generator=g)) / DIGITS_GREY_LEVELS
    return DIGIT_SCALE * (y - 0.5)


def digit_bits_per_dim(log_p_s: Tensor) -> Tensor:
    """Bits per dimension of the discrete digits from log p_S(s) (nats, per image)."""
    return bits_per_dim(log_p_s + 64 * math.log(DIGIT_SCALE), 64, grey_levels=DIGITS_GREY_LEVELS)


def as_images(s: Tensor) -> Tensor:
    """Vectors s back to 8x8 images in [0, 1], for pictures."""
    return (s / DIGIT_SCALE + 0.5).clamp(0, 1).reshape(-1, 1, 8, 8)


digit_images, digit_labels = load_digits("train")
digit_test_images, digit_test_labels = load_digits("test")
digits_train = digit_vectors(digit_images, copies=10, seed=0)
digits_test = digit_vectors(digit_test_images, copies=1, seed=1)
classifier = LogisticRegression(max_iter=3000).fit(digit_vectors(digit_images, 1, seed=2).numpy(),
                                                   digit_labels.numpy())
print(f"training vectors {tuple(digits_train.shape)}, test vectors {tuple(digits_test.shape)}")
print(f"the fixed classifier's accuracy on the test digits: "
      f"{classifier.score(digits_test.numpy(), digit_test_labels.numpy()):.3f}")


def classifier_scores(samples: Tensor, model: LogisticRegression = classifier) -> tuple[float, int]:
    """A fixed classifier's mean confidence on samples, and how many classes get at least 5% of them."""
    probabilities = model.predict_proba(samples.double().numpy())
    shares = np.bincount(probabilities.argmax(1), minlength=10) / len(samples)
    return float(probabilities.max(1).mean()), int((shares >= 0.05).sum())


# %% tags=["nbval-ignore-output"]
def make_digit_models() -> dict:
    builders = {
        "RealNVP": lambda: realnvp_vector(64, couplings=8, hidden=256),
        "flow matching": lambda: FlowMatching(64, hidden=256, layers=3),
        "VAE": lambda: VAE(64, 8, hidden=256, likelihood="gaussian"),
        "GAN": lambda: GAN(64, latent_dim=16, hidden=256),
    }
    models = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        models[name] = build()
    return models


DIGIT_LR = {"RealNVP": 1e-3, "flow matching": 1e-3, "VAE": 1e-3, "GAN": 5e-4}
digit_models = make_digit_models()
digit_train_seconds = {}
for _name, _model in digit_models.items():
    digit_train_seconds[_name] = train_family(_model, digits_train, DIGIT_STEPS[_name], DIGIT_LR[_name],
                                              batch_size=256)
    print(f"{_name:>14}: {DIGIT_STEPS[_name]:5d} steps in {digit_train_seconds[_name]:5.1f} s")

# %% tags=["nbval-ignore-output"]
def digit_log_likelihood(model) -> tuple[float | None, str]:
    """Mean test bits/dim of a digits model and what kind of number it is."""
    if isinstance(model, GAN):
        return None, "none (no density)"
    if isinstance(model, VAE):
        log_w = vae_log_weights(model, digits_test, k=1000, chunk=20)
        iwae = digit_bits_per_dim(importance_weighted_bound(log_w)).mean()
        elbo = digit_bits_per_dim(log_w[0]).mean()
        return float(iwae), f"IWAE-1000 bound (ELBO {float(elbo):.2f})"
    if isinstance(model, FlowMatching):
        log_p = model.log_prob(digits_test, steps=20, method="hutchinson")
        return float(digit_bits_per_dim(log_p).mean()), "ODE, Hutchinson"
    with torch.no_grad():
        return float(digit_bits_per_dim(model.log_prob(digits_test)).mean()), "exact"


def score_digits(name: str, model) -> dict:
    start = time.perf_counter()
    samples = draw(model, 10_000)
    sample_seconds = time.perf_counter() - start
    log_likelihood, kind = digit_log_likelihood(model)
    confidence, classes = classifier_scores(samples)
    return {"family": name, "log-likelihood": log_likelihood, "kind": kind, "confidence": confidence,
            "classes": classes, "energy": energy_distance(samples[:2000], digits_test,
                                                          generator=torch.Generator().manual_seed(1)),
            "sample s": sample_seconds, "train s": digit_train_seconds[name], "samples": samples}


torch.manual_seed(0)
digit_rows = [score_digits(name, model) for name, model in digit_models.items()]
_real_confidence, _real_classes = classifier_scores(digits_test)
print(f"8x8 digits; real test digits: classifier confidence {_real_confidence:.3f}, {_real_classes}/10 classes; "
      f"a uniform density scores {math.log2(DIGITS_GREY_LEVELS):.2f} bits/dim\n")
print_table(digit_rows, "test bits/dim (lower is better)",
            [("confidence", "classifier confidence", ".3f"), ("classes", "classes", "d"),
             ("energy", "energy distance", ".3f")])

# %% tags=["nbval-ignore-output"]
fig, axes = plt.subplots(1, 5, figsize=(14, 3.2))
_panels = [("real test digits", digits_test[:36])] + [(r["family"], r["samples"][:36]) for r in digit_rows]
for ax, (_title, _vectors) in zip(axes, _panels, strict=True):
    image_grid(as_images(_vectors), nrow=6, ax=ax, title=_title)
plt.tight_layout()
plt.show()

# %% [markdown]
# In the run saved with this notebook flow matching leads every column but the sampling time:
# 2.84 bits/dim, the most confident classifier, the smallest energy distance. The VAE's bound
# (2.87 bits/dim) beats RealNVP's exact figure (3.20): a bound that beats another model's exact
# value proves the VAE the better density model of the two, whatever its own gap; this RealNVP
# of eight couplings trained for 600 steps is simply weaker. The flow-matching figure uses
# Hutchinson's estimator, one random probe per image, so it carries noise; its mean over the
# test set is unbiased for the divergence integral. The GAN shows why sample quality needs two
# yardsticks: its samples are confident enough for the classifier (above the VAE's), yet they
# reach fewer classes and lie by far the farthest from the test digits by the energy distance,
# as the grid shows. These are small models trained for seconds; the ranking within a column
# can change with training, the kind of figure each family can report cannot.

# %% [markdown]
# ## 6. The RBM: a density known up to a constant
#
# A restricted Boltzmann machine (Smolensky, 1986; Hinton, 2002) on binary pixels
# $v \in \{0, 1\}^{64}$ with $H$ binary hidden units has the energy
# $E(v, h) = -b^\top v - c^\top h - v^\top W h$ and $p(v, h) = e^{-E(v, h)} / Z$. Summing out $h$
# gives the **free energy** $F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + (v^\top W)_j)$ and
# $p(v) = e^{-F(v)} / Z$: the unnormalised density is one line, the constant
# $Z = \sum_v e^{-F(v)}$ is a sum over $2^{64}$ images. A flow has no $Z$ at all: its density is
# normalised by construction. Three costs follow for the RBM:
#
# * **training** by contrastive divergence (CD-1): the gradient of $\log p(v)$ needs an
#   expectation under the model, which one Gibbs step started at the data replaces (a biased
#   but cheap estimate);
# * **sampling** by a Markov chain: alternate $h \sim p(h \mid v)$ and $v \sim p(v \mid h)$ for
#   many steps, and only the chain's end is a sample;
# * **the log-likelihood** needs $\log Z$: exact by enumeration over $2^H$ hidden states when $H$
#   is small, otherwise estimated by **annealed importance sampling** (AIS; Neal, 2001;
#   Salakhutdinov & Murray, 2008), which walks from an RBM without weights, whose $Z$ is known,
#   through intermediate temperatures $\beta_k$ to the trained one, weighting each chain.
#
# The pixels are binarised (grey level 8 or more is 1). Two RBMs train on them: one with 16
# hidden units, whose $\log Z$ can be computed exactly, to check AIS, and one with 64.

# %%
binary_train = (digit_images.reshape(-1, 64) >= 8).double()
binary_test = (digit_test_images.reshape(-1, 64) >= 8).double()


def train_rbm(hidden: int, steps: int, seed: int = 0) -> RBM:
    """An RBM on the binarised training digits, trained by CD-1 (SGD with momentum, batches of 100)."""
    torch.manual_seed(seed)
    rbm = RBM(64, hidden)
    rbm.set_base_from_data(binary_train)  # AIS starts from the pixels' own frequencies
    optimiser = torch.optim.SGD(rbm.parameters(), lr=0.1, momentum=0.5)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=f"RBM, {hidden} hidden units", leave=False):
        batch = binary_train[torch.randint(0, binary_train.shape[0], (100,), generator=g)]
        optimiser.zero_grad(set_to_none=True)
        rbm.cd_loss(batch, k=1, generator=g).backward()
        optimiser.step()
    return rbm


# %% tags=["nbval-ignore-output"]
small_rbm = train_rbm(16, SMALL_RBM_STEPS)
_start = time.perf_counter()
rbm = train_rbm(64, RBM_STEPS)
rbm_train_seconds = time.perf_counter() - _start
small_log_z = small_rbm.log_partition_exact()
print(f"RBMs with 16 and 64 hidden units, {SMALL_RBM_STEPS} and {RBM_STEPS} CD-1 steps ({rbm_train_seconds:.1f} s "
      f"for the large one); the small one's log Z, exactly (2^16 hidden states): {small_log_z:.3f}")

# %% [markdown]
# ### Exercise 6: the bias of a cheap estimate of $\log Z$ (prediction)
#
# AIS gives an *unbiased* estimate $\hat Z$ of $Z$: averaged over many runs, $\hat Z$ is right.
# The log-likelihood needs $\log Z$, and we take $\log \hat Z$. Before the next cell runs AIS on
# the small RBM 200 times with a cheap setting, 10 chains and 10 temperatures (so each estimate
# is noisy), predict with `predicted_ais_bias()`: on average over the 200 runs, $\log \hat Z$ is
# **a**: above the exact $\log Z$; **b**: below it; **c**: equal to it within the noise. And
# with `predicted_log_likelihood_bias()`: the test log-likelihood
# $-F(v) - \log \hat Z$ computed from it is then on average **a**: too high (optimistic);
# **b**: too low (pessimistic); **c**: right.

# %% nbgrader={"grade": false, "grade_id": "08-ex6-predict-ais", "locked": false, "schema_version": 3, "solution": true, "task": false}
def predicted_ais_bias() -> str:
    """Your prediction: "a" (log Z-hat too high on average), "b" (too low) or "c" (right)."""
    ### BEGIN SOLUTION
    # E[Z-hat] = Z and the logarithm is concave, so E[log Z-hat] <= log E[Z-hat] = log Z (Jensen),
    # with a gap that grows with the variance of Z-hat: large for 10 temperatures.
    return "b"
    ### END SOLUTION


def predicted_log_likelihood_bias() -> str:
    """Your prediction: "a" (the log-likelihood too high on average), "b" (too low) or "c" (right)."""
    ### BEGIN SOLUTION
    # log p = -F(v) - log Z-hat, and log Z-hat is too low: the log-likelihood is too high.
    return "a"
    ### END SOLUTION


# %% tags=["nbval-ignore-output"]
AIS_SCHEDULES = [3, 10, 30, 100, 300, 1000]
AIS_REPEATS = 20  # estimates per schedule, each with 10 chains
ais_estimates, ais_seconds = {}, {}
for _betas in AIS_SCHEDULES:
    _start = time.perf_counter()
    ais_estimates[_betas] = [small_rbm.log_partition_ais(runs=10, betas=_betas,
                                                         generator=torch.Generator().manual_seed(_seed))
                             for _seed in range(AIS_REPEATS)]
    ais_seconds[_betas] = (time.perf_counter() - _start) / AIS_REPEATS
fig, ax = plt.subplots(figsize=(6.5, 3.5))
for _betas, _values in ais_estimates.items():
    ax.scatter([_betas] * len(_values), _values, color="C0", s=14)
ax.plot(AIS_SCHEDULES, [np.mean(v) for v in ais_estimates.values()], "C0-", label="AIS, 10 chains: estimates and their mean")
ax.axhline(small_log_z, color="k", ls="--", label="exact log Z")
ax.set(xscale="log", xlabel="temperatures (one Gibbs sweep of the 10 chains each)", ylabel="log Z",
       title="the price of Z")
ax.legend(fontsize=8)
plt.show()
for _betas in AIS_SCHEDULES:
    print(f"{_betas:5d} temperatures: mean log Z-hat {np.mean(ais_estimates[_betas]):8.3f} "
          f"(exact {small_log_z:.3f}), {1000 * ais_seconds[_betas]:6.1f} ms per estimate")
cheap_ais = torch.tensor([small_rbm.log_partition_ais(runs=10, betas=10, generator=torch.Generator().manual_seed(s))
                          for s in range(200)])
print(f"200 cheap estimates (10 chains, 10 temperatures): mean log Z-hat - log Z = "
      f"{float(cheap_ais.mean()) - small_log_z:+.3f} +- {float(cheap_ais.std()) / math.sqrt(200):.3f}, "
      f"median {float(cheap_ais.median()) - small_log_z:+.3f}")

# %% nbgrader={"grade": true, "grade_id": "08-ex6-predict-ais-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
HINT_6 = ("Z-hat is unbiased for Z, but the logarithm is concave: what does Jensen's inequality say about "
          "E[log Z-hat] against log E[Z-hat]? And log Z enters the log-likelihood with a minus sign.")
with hint(HINT_6):
    _bias = check_choice(predicted_ais_bias(), ["a", "b", "c"], "Answer with one letter.")
    _ll_bias = check_choice(predicted_log_likelihood_bias(), ["a", "b", "c"], "Answer with one letter.")
### BEGIN HIDDEN TESTS
_spread = float(cheap_ais.std() / math.sqrt(len(cheap_ais)))
_offset = float(cheap_ais.mean()) - small_log_z
_right = "c" if abs(_offset) < 2 * _spread else ("a" if _offset > 0 else "b")
assert _bias == _right, (f"Not {_bias!r}: over 200 cheap runs the mean of log Z-hat is {float(cheap_ais.mean()):.3f} "
                         f"against the exact {small_log_z:.3f}. {HINT_6}")
_ll_right = {"a": "b", "b": "a", "c": "c"}[_right]
assert _ll_bias == _ll_right, f"Not {_ll_bias!r}: the log-likelihood is -F(v) - log Z-hat. {HINT_6}"
### END HIDDEN TESTS
print("Exercise 6 passed")

# %% [markdown]
# The cheap estimates fall below the exact value on average, as Jensen's inequality says they
# must, and their median further still. The figure shows the price: the bias shrinks with the
# number of temperatures, from more than a nat with 3 to a few hundredths with 1000, and the
# cost grows with them. A log-likelihood from AIS is therefore
# optimistic by an amount that only a better schedule reveals, and every evaluation costs
# thousands of Gibbs sweeps, against one pass of a flow.
#
# Now the RBM with 64 hidden units beside two models of the same binary digits whose
# likelihoods need no $Z$: pixels drawn independently with their training frequencies (exact)
# and a VAE with a Bernoulli decoder (bounds). The RBM's samples come from 200 Gibbs sweeps
# started at random images; a second logistic regression, trained on the binary training
# digits, scores them as in section 5.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
binary_vae = VAE(64, 8, hidden=256, likelihood="bernoulli")
binary_vae_seconds = train_family(binary_vae, binary_train.float(), DIGIT_STEPS["VAE"], 1e-3, batch_size=256)
pixel_means = binary_train.mean(0).clamp(1e-3, 1 - 1e-3)
binary_classifier = LogisticRegression(max_iter=3000).fit(binary_train.numpy(), digit_labels.numpy())


_start = time.perf_counter()
rbm_log_z = rbm.log_partition_ais(runs=200, betas=1000, generator=torch.Generator().manual_seed(0))
rbm_ais_seconds = time.perf_counter() - _start
_binary_log_w = vae_log_weights(binary_vae, binary_test.float(), k=1000, chunk=20)
with torch.no_grad():
    binary_rows = [
        {"family": "independent pixels", "log-likelihood": float(torch.distributions.Bernoulli(pixel_means)
                                                                  .log_prob(binary_test).sum(1).mean()),
         "kind": "exact", "train s": 0.0},
        {"family": "RBM, 64 hidden", "log-likelihood": float(rbm.log_prob(binary_test, rbm_log_z).mean()),
         "kind": f"AIS, {rbm_ais_seconds:.1f} s", "train s": rbm_train_seconds},
        {"family": "VAE, Bernoulli", "log-likelihood": float(importance_weighted_bound(_binary_log_w).mean()),
         "kind": f"IWAE-1000 (ELBO {float(_binary_log_w[0].mean()):.1f})",
         "train s": binary_vae_seconds},
    ]
_samplers = {
    "independent pixels": lambda n: torch.bernoulli(pixel_means.expand(n, -1)),
    "RBM, 64 hidden": lambda n: rbm.gibbs(torch.bernoulli(torch.full((n, 64), 0.5, dtype=torch.float64)),
                                          steps=RBM_SWEEPS),
    "VAE, Bernoulli": lambda n: binary_vae.sample(n, mean=False),
}
binary_samples = {}
for _row in binary_rows:
    _start = time.perf_counter()
    with torch.no_grad():
        binary_samples[_row["family"]] = _samplers[_row["family"]](10_000)
    _row["sample s"] = time.perf_counter() - _start
    _row["confidence"], _row["classes"] = classifier_scores(binary_samples[_row["family"]], binary_classifier)
_real = classifier_scores(binary_test, binary_classifier)
print(f"binarised 8x8 digits, test log-likelihood in nats per image; real test digits: classifier confidence "
      f"{_real[0]:.3f}, {_real[1]}/10 classes\n")
print_table(binary_rows, "test log-likelihood (nats per image)",
            [("confidence", "classifier confidence", ".3f"), ("classes", "classes", "d")])
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, (_title, _images) in zip(axes, [("real test digits", binary_test[:36])] +
                                 [(k, v[:36]) for k, v in binary_samples.items()], strict=True):
    image_grid(_images.float().reshape(-1, 1, 8, 8), nrow=6, ax=ax, title=_title)
plt.tight_layout()
plt.show()

# %% [markdown]
# In this run the RBM, trained for a few seconds, scores the best likelihood of the three,
# about 17 nats per image against the VAE's bound near 20 and 25 for independent pixels, and its
# samples are the most digit-like by the classifier. Its figure, though, rests on an AIS
# estimate whose bias Exercise 6 measured, and its samples on how long the chain ran (200
# sweeps, the slowest sampler of this lecture). The VAE's figures are bounds. Only the
# independent pixels, the weakest model, have an exact likelihood here; on binary data a flow
# would need dequantisation (a bound again, lecture 4) or a discrete flow (Tran et al., 2019;
# Hoogeboom et al., 2019).

# %% [markdown]
# ## Summary: the trilemma, measured
#
# One table from the measurements of this run: the likelihood each family can report, sample
# quality (energy distance on the toy; the fixed classifier's confidence on the digits), mode
# coverage (the eight Gaussians; the narrow ones for the GAN and the NSF of section 3), and the time
# to draw 10,000 samples, on one CPU thread.

# %% tags=["nbval-ignore-output"]
_toy = {r["family"]: r for r in toy_rows}
_digits = {r["family"]: r for r in digit_rows}


def _cell(row: dict | None, key: str, spec: str) -> str:
    if row is None:
        return "-"
    return row["kind"] if key == "log-likelihood" and row[key] is None else format(row[key], spec)


summary_header = ["family", "toy log-lik. (nats)", "digits bits/dim", "toy energy", "digits confidence",
                  "modes (toy)", "narrow modes", "10k toy samples (s)", "10k digits (s)"]
summary = []
for _name in toy_models:
    _d = _digits.get(_name)
    _held = narrow_modes.get(_name)
    summary.append([_name, _cell(_toy[_name], "log-likelihood", ".3f"), _cell(_d, "log-likelihood", ".2f"),
                    f"{_toy[_name]['energy']:.4f}", _cell(_d, "confidence", ".3f"), f"{_toy[_name]['modes']}/8",
                    "-" if _held is None else f"{_held}/8", f"{_toy[_name]['sample s']:.3f}", _cell(_d, "sample s", ".3f")])
_rbm_row = binary_rows[1]
summary.append(["RBM (binary digits)", "-", f"AIS: {_rbm_row['log-likelihood']:.1f} nats/image", "-",
                f"{_rbm_row['confidence']:.3f} (binary)", "-", "-", "-", f"{_rbm_row['sample s']:.3f}"])
print(f"data: toy log-likelihood {data_log_likelihood:.3f} nats, {data_modes}/8 modes; real digits: classifier "
      f"confidence {_real_confidence:.3f}\n")
print_aligned(summary_header, summary)

# %% [markdown]
# What the measurements say, and what they do not:
#
# * **Likelihood.** Only the flows give an exact $\log p_X(x)$ in one pass; flow matching gives
#   it through an ODE (exact in 2D, Hutchinson's unbiased estimate in 64 dimensions, at about
#   80 network evaluations per point); the VAE gives bounds, the RBM an estimate that AIS
#   biases upwards, the GANs nothing.
# * **Sample quality** needs a yardstick that sees samples only, and each has blind spots: the
#   energy distance weighs the whole distribution, a classifier's confidence only whether a
#   sample looks like *some* digit. Both are needed to compare a GAN with a flow.
# * **Mode coverage.** On wide modes every family covered all eight; on narrow ones the GAN
#   held half of them after 3000 steps and the spline flow all eight after 300: a likelihood
#   forbids dropping a mode, a discriminator does not.
# * **Fast sampling.** One network evaluation (GAN, VAE) is fastest, a flow's inverse pass
#   through its layers next; flow matching pays for its ODE steps and the RBM for its Markov
#   chain.
# * **Topology.** No family here separates the eight Gaussians completely: every continuous
#   map of a connected latent space leaves bridges.
#
# These are small models trained for seconds on one CPU thread, so the ranking within a column
# can change with more training; the kind of figure each family can report cannot. Lecture 0's
# table of the families is the summary of this lecture in words; lecture 9 takes the flows to
# a scientific use where the exact likelihood is the point.
#
# ## References
#
# * Arjovsky, M., Chintala, S. & Bottou, L. (2017). Wasserstein generative adversarial networks. *ICML*.
# * Arora, S. & Zhang, Y. (2017). Do GANs actually learn the distribution? An empirical study. arXiv:1706.08224.
# * Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. *ICLR*.
# * Chen, R. T. Q., Rubanova, Y., Bettencourt, J. & Duvenaud, D. (2018). Neural ordinary differential equations. *NeurIPS*.
# * Cornish, R., Caterini, A., Deligiannidis, G. & Doucet, A. (2020). Relaxing bijectivity constraints with
#   continuously indexed normalising flows. *ICML*.
# * Dupont, E., Doucet, A. & Teh, Y. W. (2019). Augmented neural ODEs. *NeurIPS*.
# * Efron, B. (2011). Tweedie's formula and selection bias. *Journal of the American Statistical Association*.
# * Goodfellow, I. et al. (2014). Generative adversarial nets. *NeurIPS*.
# * Grathwohl, W., Chen, R. T. Q., Bettencourt, J., Sutskever, I. & Duvenaud, D. (2019). FFJORD: free-form
#   continuous dynamics for scalable reversible generative models. *ICLR*.
# * Gulrajani, I., Ahmed, F., Arjovsky, M., Dumoulin, V. & Courville, A. (2017). Improved training of
#   Wasserstein GANs. *NeurIPS*.
# * Hinton, G. E. (2002). Training products of experts by minimizing contrastive divergence. *Neural Computation*.
# * Hoogeboom, E., Peters, J., van den Berg, R. & Welling, M. (2019). Integer discrete flows and lossless
#   compression. *NeurIPS*.
# * Hutchinson, M. F. (1989). A stochastic estimator of the trace of the influence matrix for Laplacian
#   smoothing splines. *Communications in Statistics: Simulation and Computation*.
# * Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. *ICLR*.
# * Lipman, Y., Chen, R. T. Q., Ben-Hamu, H., Nickel, M. & Le, M. (2023). Flow matching for generative
#   modeling. *ICLR*.
# * Neal, R. M. (2001). Annealed importance sampling. *Statistics and Computing*.
# * Rezende, D. J. & Mohamed, S. (2015). Variational inference with normalizing flows. *ICML*.
# * Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and approximate inference
#   in deep generative models. *ICML*.
# * Rainforth, T., Kosiorek, A. R., Le, T. A., Maddison, C. J., Igl, M., Wood, F. & Teh, Y. W. (2018).
#   Tighter variational bounds are not necessarily better. *ICML*.
# * Salakhutdinov, R. & Murray, I. (2008). On the quantitative analysis of deep belief networks. *ICML*.
# * Smolensky, P. (1986). Information processing in dynamical systems: foundations of harmony theory. In
#   *Parallel Distributed Processing*, vol. 1.
# * Song, Y., Sohl-Dickstein, J., Kingma, D. P., Kumar, A., Ermon, S. & Poole, B. (2021). Score-based
#   generative modeling through stochastic differential equations. *ICLR*.
# * Srivastava, A., Valkov, L., Russell, C., Gutmann, M. U. & Sutton, C. (2017). VEEGAN: reducing mode
#   collapse in GANs using implicit variational learning. *NeurIPS*.
# * Székely, G. J. & Rizzo, M. L. (2013). Energy statistics: a class of statistics based on distances.
#   *Journal of Statistical Planning and Inference*.
# * Tran, D., Vafa, K., Agrawal, K., Dinh, L. & Poole, B. (2019). Discrete flows: invertible generative
#   models of discrete data. *NeurIPS*.
# * Vincent, P. (2011). A connection between score matching and denoising autoencoders. *Neural Computation*.
# * Xiao, Z., Kreis, K. & Vahdat, A. (2022). Tackling the generative learning trilemma with denoising
#   diffusion GANs. *ICLR*.

# %% tags=["nbval-ignore-output"]
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s wall-clock, {time.process_time():.0f} s of CPU "
      f"time (this process)")
