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
# # Capstone: a multi-scale flow of your own, trained on Fashion-MNIST
#
# Lectures 3 to 5 built an image flow piece by piece: the squeeze, the logit of the pixel
# intensities, ActNorm, the invertible $1\times1$ convolution, the affine coupling, the
# multi-scale architecture, dequantisation and bits per dimension. Each time flowlib held the
# finished version. In this assignment every piece is yours. You write it once more (or paste
# what you wrote in the lectures and adapt it to the signatures here), assemble the pieces into
# a multi-scale flow, train it on a CPU in a few minutes, and hand in a model that
#
# * reaches an importance-weighted **test figure** below a stated threshold in bits per
#   dimension, within a fixed budget of optimiser steps;
# * draws **samples at temperature** $T = 0.7$ that are neither blank nor all alike;
# * **interpolates** between two real test images in latent space;
# * inverts itself **exactly**: $f^{-1}(f(x)) = x$ on test images, up to float rounding.
#
# The data are new to the course: **Fashion-MNIST** (Xiao, Rasul & Vollgraf, 2017), MNIST's
# format (28x28 grey images with $K = 256$ grey levels, 60000 for training and 10000 for
# testing), showing Zalando's article images instead of digits: ten classes of clothes, shoes and
# bags.
#
# | part | what you write | kind | points |
# | :-- | :-- | :-- | --: |
# | 1 | squeeze and unsqueeze | implementation used later | 1 |
# | 2 | the logit layer and its log-determinant | derivation | 2 |
# | 3 | ActNorm, from a classmate's buggy version | debugging | 3 |
# | 4 | the invertible $1\times1$ convolution, both ways | implementation used later | 2 |
# | 5 | the affine coupling over channels, both ways | implementation used later | 3 |
# | 6 | dequantisation and importance-weighted bits/dim | derivation | 3 |
# | 7 | the multi-scale flow, assembled from your pieces | implementation used later | 3 |
# | 8 | (training) the test figure below the threshold | design target | 4 |
# | 9 | samples at temperature $T$ | graded result | 2 |
# | 10 | interpolation in latent space | graded result | 2 |
# | 11 | (nothing new) the exact round trip of your trained flow | graded result | 1 |
# | 12 | two predictions, then the sliders | prediction | 2 |
#
# Parts 1 to 6 each come with a quick test against autograd or values worked out by hand.
# Part 7 puts your pieces together; Parts 8 to 11 grade the model you trained with them. Every
# later part runs your code: while a part is not done yet, the notebook says so and runs
# flowlib's version in its place, so the rest still works, but the graded results of Parts 8
# to 11 count only for a model built from your own pieces.
#
# Notation as in every lecture: $x$ data, $z$ latent, $f$ the map $x \mapsto z$ (the
# normalizing direction), $p_Z = \mathcal{N}(0, I)$ the base and
# $p_X(x) = p_Z(f(x))\,\left|\det \partial f/\partial x\right|$. Images have $C$ channels,
# height $H$ and width $W$; $D = CHW$. The flow itself works on $y \in [0, 1]^D$, the
# dequantised image divided by $K$ (lecture 4).

# %% [markdown]
# ## Settings
# The one place where sizes are chosen. The model is the same in every mode; only the number of
# training steps (and how often the training validates) changes. With the environment variable
# `CI` set, the notebook trains for a short run, and Part 8 then grades against the threshold
# calibrated for that short run (both budgets and thresholds are stated in Part 8).

# %%
import os

import torch

SMOKE = "CI" in os.environ  # CI: the short run, graded against the short run's threshold
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 250 if SMOKE else 3000  # optimiser steps of the training run (the budget of Part 8)
EVAL_EVERY = 125 if SMOKE else 500  # steps between two validations during training
BATCH = 64  # images per step
LR = 2e-3  # peak learning rate: a linear warm-up, then a cosine decay to 0
SHAPE = (1, 28, 28)  # one Fashion-MNIST image
SCALES, DEPTH, HIDDEN = 2, 4, 64  # Part 7's flow: 2 scales of 4 steps, conditioners 64 channels wide
TEST_IMAGES, DRAWS = 1000, 8  # Part 8's figure: the first 1000 test images, 8 dequantisations each
# The convolutions here are small: on a shared 2-core machine (Binder) one thread is fastest,
# because threads that compete for the cores cost more than they bring.
torch.set_num_threads(1)

# %%
import math
import time
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from flowlib.actnorm import ActNorm
from flowlib.convnets import GlowConditioner
from flowlib.core import Compose, Flow, Inverse
from flowlib.coupling import AffineCoupling, Coupling, channel_mask
from flowlib.data import MNIST_GREY_LEVELS, load_fashion_mnist
from flowlib.dequantize import LogitPreprocess
from flowlib.distributions import StandardNormal
from flowlib.grading import (
    autograd_logabsdet,
    calls_into_flowlib,
    check_choice,
    check_close,
    check_own_work,
    hint,
    yours_or_reference,
)
from flowlib.image_models import ImageFlowModel, count_parameters, mean_bits_per_dim
from flowlib.linear import InvertibleLinear, random_rotation
from flowlib.multiscale import MultiScale, squeeze, unsqueeze
from flowlib.train import fit
from flowlib.transformers import Affine, soft_clamp
from flowlib.viz import image_grid, plot_training_curve
from flowlib.widgets import LatentInterpolation, TemperatureGrid

torch.manual_seed(0)
np.random.seed(0)  # noqa: NPY002  (the global generator, for any code that draws from it)
plt.rcParams.update({"figure.dpi": 90, "axes.spines.top": False, "axes.spines.right": False})
T_START = time.perf_counter()

GREY_LEVELS = MNIST_GREY_LEVELS  # K = 256
CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")
x_train_all, _ = load_fashion_mnist("train")  # uint8 (60000, 1, 28, 28), grey levels 0..255
x_test, y_test = load_fashion_mnist("test")
x_train, x_val = x_train_all[:-1000], x_train_all[-1000:]  # the last 1000 training images validate
print("train", tuple(x_train.shape), "| validation", tuple(x_val.shape), "| test", tuple(x_test.shape),
      "|", x_train.dtype, f"grey levels 0..{GREY_LEVELS - 1}")

fig, ax = plt.subplots(figsize=(9, 1.6))
first_of_each = [int(torch.nonzero(y_test == k)[0]) for k in range(10)]
image_grid((x_test[first_of_each].float() + 0.5) / GREY_LEVELS, nrow=10, ax=ax,
           title="the first test image of each class: " + ", ".join(CLASSES))
plt.show()

# %% [markdown]
# ## Part 1: squeeze and unsqueeze (1 point)
#
# A multi-scale flow trades space for channels before every scale: the squeeze cuts each
# channel into $2 \times 2$ blocks and stacks the four pixels of a block as four channels,
# $(C, H, W) \to (4C, H/2, W/2)$. It only moves numbers, so it is invertible with
# log-determinant 0. Use lecture 4's channel order: output channel $4c + 2i + j$ holds pixel
# $(i, j)$ of every block of input channel $c$. Write both directions for any batch with even
# height and width, with torch operations (not flowlib's `squeeze`).

# %% nbgrader={"grade": false, "grade_id": "10-p1-squeeze", "locked": false, "schema_version": 3, "solution": true, "task": false}
def squeeze2x2(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2); channel 4c + 2i + j holds pixel (i, j) of each 2x2 block."""
    ### BEGIN SOLUTION
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)
    ### END SOLUTION


def unsqueeze2x2(z: Tensor) -> Tensor:
    """(B, 4C, H, W) -> (B, C, 2H, 2W), the inverse of squeeze2x2."""
    ### BEGIN SOLUTION
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p1-squeeze-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _squeeze_by_definition(x: Tensor) -> Tensor:
    """Channel 4c + 2i + j = pixel (i, j) of every 2x2 block of channel c, written out channel by channel."""
    b, c, h, w = x.shape
    out = x.new_zeros(b, 4 * c, h // 2, w // 2)
    for ch in range(c):
        for i in range(2):
            for j in range(2):
                out[:, 4 * ch + 2 * i + j] = x[:, ch, i::2, j::2]
    return out


def _check_squeeze(seed: int, shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with hint(f"squeeze2x2 of a batch of shape {shape}: reshape to (B, C, H/2, 2, W/2, 2), then permute"):
        z = squeeze2x2(x)
    check_close(z, _squeeze_by_definition(x), f"squeeze2x2, input {shape}: channel 4c + 2i + j must hold "
                "pixel (i, j) of every 2x2 block of channel c", atol=0.0, rtol=0.0)
    with hint(f"unsqueeze2x2 of a batch of shape {tuple(z.shape)}"):
        back = unsqueeze2x2(z)
    check_close(back, x, f"unsqueeze2x2(squeeze2x2(x)) must give x back exactly (input {shape})", atol=0.0, rtol=0.0)
    check_own_work(squeeze2x2, x, message="Write the squeeze with torch operations (reshape, permute).")
    check_own_work(unsqueeze2x2, z, message="Write the unsqueeze with torch operations (reshape, permute).")


_numbered = torch.arange(16.0).reshape(1, 1, 4, 4)  # by hand: the pixels (0, 0) of the four blocks
with hint("squeeze2x2 of a numbered 1 x 4 x 4 image"):
    _z = squeeze2x2(_numbered)
check_close(_z[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]), "channel 0: pixel (0, 0) of each block")
check_close(_z[0, 1], torch.tensor([[1.0, 3.0], [9.0, 11.0]]), "channel 1: pixel (0, 1) of each block")
_check_squeeze(seed=1, shape=(2, 3, 6, 10))
### BEGIN HIDDEN TESTS
_check_squeeze(seed=10, shape=(1, 2, 4, 8))
_check_squeeze(seed=11, shape=(5, 1, 2, 2))
_check_squeeze(seed=12, shape=(3, 4, 14, 14))
### END HIDDEN TESTS
print("part 1 passed")

# %% [markdown]
# ## Part 2: the logit layer and its log-determinant (2 points, a derivation)
#
# Affine couplings with a Gaussian base are at ease on the whole real line, not on the bounded
# cube $[0, 1]^D$, so the flow's first layer maps every intensity $y_i$ through
#
# $$z_i = \operatorname{logit}(p_i) = \log p_i - \log(1 - p_i), \qquad p_i = \alpha + (1 - 2\alpha)\, y_i,$$
#
# with $\alpha = 0.05$, which keeps $p_i$ away from 0 and 1 (Dinh et al., 2017, section 4.1;
# lecture 4 used flowlib's `LogitPreprocess`). **Derive** its log-determinant
# $\log|\det \partial z / \partial y|$ (the Jacobian is diagonal: what is $dz_i/dy_i$?), the
# inverse map $y = g(z)$ and the inverse's log-determinant $\log|\det \partial y / \partial z|$,
# and implement both directions with torch operations for a batch of images, one
# log-determinant per image (shape `(B,)`). The test compares them with autograd.

# %% nbgrader={"grade": false, "grade_id": "10-p2-logit", "locked": false, "schema_version": 3, "solution": true, "task": false}
def logit_forward(y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """z = logit(alpha + (1 - 2 alpha) y) elementwise, and log|det dz/dy| per image, shape (B,)."""
    ### BEGIN SOLUTION
    p = alpha + (1 - 2 * alpha) * y
    z = torch.log(p) - torch.log1p(-p)
    log_dzdy = math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)
    return z, log_dzdy.flatten(1).sum(1)
    ### END SOLUTION


def logit_inverse(z: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """The inverse map y of logit_forward, and log|det dy/dz| per image, shape (B,)."""
    ### BEGIN SOLUTION
    y = (torch.sigmoid(z) - alpha) / (1 - 2 * alpha)
    log_dydz = F.logsigmoid(z) + F.logsigmoid(-z) - math.log(1 - 2 * alpha)
    return y, log_dydz.flatten(1).sum(1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p2-logit-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _pair(name: str, out: object, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The (output, logdet) pair a layer function returns, with the shapes checked."""
    assert isinstance(out, tuple) and len(out) == 2, f"{name}: return a pair (output, logdet), got {type(out).__name__}"
    y, logdet = out
    assert isinstance(y, Tensor) and tuple(y.shape) == shape, (
        f"{name}: the output must have the input's shape {shape}, got {getattr(y, 'shape', type(y).__name__)}")
    assert isinstance(logdet, Tensor) and tuple(logdet.shape) == (shape[0],), (
        f"{name}: return one log-determinant per image, shape ({shape[0]},), got "
        f"{getattr(logdet, 'shape', type(logdet).__name__)}")
    return y, logdet


def _check_logit(seed: int, shape: tuple[int, ...], alpha: float) -> None:
    g = torch.Generator().manual_seed(seed)
    y = 0.01 + 0.98 * torch.rand(3, *shape, generator=g, dtype=torch.float64)
    where = f"(alpha = {alpha}, images of shape {shape})"
    with hint(f"logit_forward {where}"):
        z, logdet = _pair("logit_forward", logit_forward(y, alpha), tuple(y.shape))
    p = alpha + (1 - 2 * alpha) * y
    check_close(z, torch.log(p / (1 - p)), f"logit_forward {where}: z = log p - log(1 - p), p = alpha + (1 - 2 alpha) y")
    with hint(f"log|det| of logit_forward by autograd {where}"):
        expected = autograd_logabsdet(lambda v: logit_forward(v, alpha)[0], y)
    check_close(logdet, expected, f"logit_forward {where}: your log-determinant differs from autograd's log|det dz/dy|. "
                "The Jacobian is diagonal: differentiate z_i with respect to y_i (chain rule through p_i)",
                atol=1e-8)
    with hint(f"logit_inverse {where}"):
        y_back, logdet_inv = _pair("logit_inverse", logit_inverse(z, alpha), tuple(z.shape))
    check_close(y_back, y, f"logit_inverse {where}: logit_inverse(logit_forward(y)) must give y back", atol=1e-10)
    with hint(f"log|det| of logit_inverse by autograd {where}"):
        expected_inv = autograd_logabsdet(lambda v: logit_inverse(v, alpha)[0], z)
    check_close(logdet_inv, expected_inv, f"logit_inverse {where}: your log-determinant differs from autograd's "
                "log|det dy/dz|", atol=1e-8)
    check_own_work(logit_forward, y, alpha, message="Write the logit layer with torch operations.")
    check_own_work(logit_inverse, z, alpha, message="Write the inverse with torch operations.")


# By hand: at y = 1/2, p = 1/2 and z = 0; each pixel's dz/dy there is (1 - 2 alpha) / (p (1 - p)) = 4 (1 - 2 alpha).
_half = torch.full((2, 1, 3, 3), 0.5, dtype=torch.float64)
with hint("logit_forward of an image of 1/2s"):
    _z, _ld = _pair("logit_forward", logit_forward(_half, 0.05), (2, 1, 3, 3))
check_close(_z, torch.zeros_like(_half), "at y = 1/2: z = logit(1/2) = 0")
check_close(_ld, torch.full((2,), 9 * math.log(4 * 0.9), dtype=torch.float64),
            "at y = 1/2 with alpha = 0.05 every pixel contributes log(4 * 0.9) to the log-determinant")
_check_logit(seed=2, shape=(1, 4, 4), alpha=0.05)
### BEGIN HIDDEN TESTS
_check_logit(seed=20, shape=(3, 2, 5), alpha=0.01)
_check_logit(seed=21, shape=(1, 6, 6), alpha=0.2)
_check_logit(seed=22, shape=(2, 1, 1), alpha=0.05)
### END HIDDEN TESTS
print("part 2 passed")

# %% [markdown]
# ## Part 3: ActNorm, a debugging task (3 points)
#
# ActNorm (lecture 5) is a per-channel affine map, $z = (x + b)\,e^{\log s}$ with one bias $b_c$
# and one log-scale $\log s_c$ per channel, the same at every pixel. Its parameters are
# initialised from the first batch it sees, so that this batch comes out with mean 0 and
# standard deviation 1 in every channel, and trained as usual afterwards.
#
# A classmate wrote the layer below for their own capstone. Its forward and inverse undo each
# other (the cell checks it), so a flow built with it inverts exactly and reconstructs every
# image; yet it reports a wrong likelihood, and training follows that wrong likelihood. Find the
# bug **with a check of your own**:
# `flowlib.grading.autograd_logabsdet(fn, x)` computes $\log|\det|$ of any map of a batch by
# brute force, one image at a time (use a small batch in float64, e.g. 2 images of
# $3 \times 4 \times 5$). Then
#
# * say which of these is the bug, in `actnorm_bug()`:
#   * **a**: the bias must be added after the scaling, $z = x\,e^{\log s} + b$;
#   * **b**: the inverse must subtract the bias before it divides by the scale;
#   * **c**: the log-determinant counts each channel's log-scale once, but the scale acts on
#     each of the channel's pixels;
#   * **d**: the inverse's log-determinant has the wrong sign;
# * write the layer correctly, both directions, and the data-dependent initialisation
#   (the mean and standard deviation of each channel are taken over the batch and all pixels).

# %%
def classmate_actnorm_forward(x: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """ActNorm, z = (x + b) exp(log s) per channel, and log|det dz/dx| per image (a classmate's code)."""
    z = (x + bias.view(1, -1, 1, 1)) * torch.exp(log_scale.view(1, -1, 1, 1))
    logdet = log_scale.sum().expand(x.shape[0])
    return z, logdet


def classmate_actnorm_inverse(z: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse, x = z exp(-log s) - b, and log|det dx/dz| per image (a classmate's code)."""
    x = z * torch.exp(-log_scale.view(1, -1, 1, 1)) - bias.view(1, -1, 1, 1)
    logdet = -log_scale.sum().expand(z.shape[0])
    return x, logdet


_g = torch.Generator().manual_seed(3)
_x = torch.randn(2, 3, 4, 5, generator=_g, dtype=torch.float64)
_b, _ls = torch.randn(3, generator=_g, dtype=torch.float64), torch.randn(3, generator=_g, dtype=torch.float64)
_z, _ = classmate_actnorm_forward(_x, _b, _ls)
print("the classmate's inverse undoes the forward:",
      bool(torch.allclose(classmate_actnorm_inverse(_z, _b, _ls)[0], _x, atol=1e-12)))

# %% nbgrader={"grade": false, "grade_id": "10-p3-actnorm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def actnorm_bug() -> str:
    """Which statement names the bug of the classmate's ActNorm: "a", "b", "c" or "d"?"""
    ### BEGIN SOLUTION
    return "c"
    ### END SOLUTION


def actnorm_initial_parameters(x: Tensor) -> tuple[Tensor, Tensor]:
    """(bias, log_scale), each of shape (C,), such that (x + bias) exp(log_scale) has mean 0 and std 1 per channel."""
    ### BEGIN SOLUTION
    values = x.transpose(0, 1).reshape(x.shape[1], -1)
    return -values.mean(dim=1), -torch.log(values.std(dim=1, unbiased=False) + 1e-6)
    ### END SOLUTION


def actnorm_forward(x: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """z = (x + bias) exp(log_scale) per channel of x (B, C, H, W), and log|det dz/dx| per image, shape (B,)."""
    ### BEGIN SOLUTION
    b, c, h, w = x.shape
    z = (x + bias.view(1, c, 1, 1)) * torch.exp(log_scale.view(1, c, 1, 1))
    return z, (h * w * log_scale.sum()).expand(b)
    ### END SOLUTION


def actnorm_inverse(z: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of actnorm_forward, and log|det dx/dz| per image, shape (B,)."""
    ### BEGIN SOLUTION
    b, c, h, w = z.shape
    x = z * torch.exp(-log_scale.view(1, c, 1, 1)) - bias.view(1, c, 1, 1)
    return x, (-h * w * log_scale.sum()).expand(b)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p3-actnorm-bug-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_answer = check_choice(actnorm_bug(), ["a", "b", "c", "d"], "actnorm_bug() names one of the four statements")
### BEGIN HIDDEN TESTS
# Computed, not typed in: the classmate's forward log-determinant against autograd's, on two image sizes.
_ratios = set()
for _shape in [(3, 4, 5), (2, 3, 2)]:
    _gg = torch.Generator().manual_seed(30)
    _xx = torch.randn(2, *_shape, generator=_gg, dtype=torch.float64)
    _bb, _ll = torch.randn(_shape[0], generator=_gg, dtype=torch.float64), torch.rand(_shape[0], generator=_gg,
                                                                                      dtype=torch.float64) + 0.1
    _true = autograd_logabsdet(lambda v, b=_bb, s=_ll: classmate_actnorm_forward(v, b, s)[0], _xx)
    _ratios.add(round(float(_true[0] / classmate_actnorm_forward(_xx, _bb, _ll)[1][0]), 6))
_expected = "c" if _ratios == {20.0, 6.0} else "?"  # off by exactly H * W on both sizes: one term per pixel missing
assert _answer == _expected, ("Not this one. Compare the classmate's log-determinant with autograd's on two image "
                              "sizes: by what factor is it off?")
### END HIDDEN TESTS
print("part 3 (the bug) passed")

# %% nbgrader={"grade": true, "grade_id": "10-p3-actnorm-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_actnorm(seed: int, c: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(seed)
    where = f"(C = {c}, H = {h}, W = {w})"
    spread = 0.5 + 3 * torch.rand(1, c, 1, 1, generator=g, dtype=torch.float64)
    x = 2.0 + spread * torch.randn(16, c, h, w, generator=g, dtype=torch.float64)
    with hint(f"actnorm_initial_parameters {where}: return (bias, log_scale), each of shape (C,)"):
        bias, log_scale = actnorm_initial_parameters(x)
    assert tuple(bias.shape) == (c,) and tuple(log_scale.shape) == (c,), (
        f"actnorm_initial_parameters {where}: bias and log_scale have one entry per channel, shape ({c},)")
    out = (x + bias.view(1, c, 1, 1)) * torch.exp(log_scale.view(1, c, 1, 1))
    per_channel = out.transpose(0, 1).reshape(c, -1)
    check_close(per_channel.mean(1), torch.zeros(c, dtype=torch.float64),
                f"actnorm_initial_parameters {where}: after (x + bias) exp(log_scale) every channel must have mean 0 "
                "over the batch and all pixels", atol=1e-6)
    check_close(per_channel.std(1, unbiased=False), torch.ones(c, dtype=torch.float64),
                f"actnorm_initial_parameters {where}: ... and standard deviation 1", atol=0.05)
    bias = bias + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)  # a few training steps later
    log_scale = log_scale + 0.3 * torch.randn(c, generator=g, dtype=torch.float64)
    with hint(f"actnorm_forward {where}"):
        z, logdet = _pair("actnorm_forward", actnorm_forward(x[:3], bias, log_scale), (3, c, h, w))
    check_close(z, (x[:3] + bias.view(1, c, 1, 1)) * torch.exp(log_scale.view(1, c, 1, 1)),
                f"actnorm_forward {where}: z = (x + bias) exp(log_scale), channel by channel")
    with hint(f"log|det| of actnorm_forward by autograd {where}"):
        expected = autograd_logabsdet(lambda v: actnorm_forward(v, bias, log_scale)[0], x[:3])
    check_close(logdet, expected, f"actnorm_forward {where}: your log-determinant differs from autograd's", atol=1e-8)
    with hint(f"actnorm_inverse {where}"):
        x_back, logdet_inv = _pair("actnorm_inverse", actnorm_inverse(z, bias, log_scale), (3, c, h, w))
    check_close(x_back, x[:3], f"actnorm_inverse {where}: actnorm_inverse(actnorm_forward(x)) must give x back",
                atol=1e-10)
    with hint(f"log|det| of actnorm_inverse by autograd {where}"):
        expected_inv = autograd_logabsdet(lambda v: actnorm_inverse(v, bias, log_scale)[0], z)
    check_close(logdet_inv, expected_inv, f"actnorm_inverse {where}: your log-determinant differs from autograd's",
                atol=1e-8)
    for fn, args in [(actnorm_initial_parameters, (x,)), (actnorm_forward, (x, bias, log_scale)),
                     (actnorm_inverse, (z, bias, log_scale))]:
        check_own_work(fn, *args, message=f"Write {fn.__name__} with torch operations, not flowlib's ActNorm.")


_check_actnorm(seed=3, c=3, h=4, w=5)
### BEGIN HIDDEN TESTS
_check_actnorm(seed=31, c=1, h=7, w=3)
_check_actnorm(seed=32, c=6, h=2, w=2)
_check_actnorm(seed=33, c=8, h=1, w=1)
### END HIDDEN TESTS
print("part 3 passed")

# %% [markdown]
# ## Part 4: the invertible $1\times1$ convolution, both ways (2 points)
#
# Between couplings, Glow mixes the channels with a learned invertible $C \times C$ matrix $W$,
# applied to the channel vector of every pixel: $y_{ij} = W x_{ij}$ (lecture 5). Write the map
# and its inverse for a batch of images, each with its log-determinant per image, with torch
# operations on the whole batch (no loop over pixels or images). `torch.linalg.slogdet`
# returns the sign and the logarithm of $|\det W|$; for the inverse, `torch.linalg.inv` or
# `torch.linalg.solve`.

# %% nbgrader={"grade": false, "grade_id": "10-p4-conv1x1", "locked": false, "schema_version": 3, "solution": true, "task": false}
def conv1x1_forward(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """y_ij = W x_ij at every pixel of x (B, C, H, W), and log|det dy/dx| per image, shape (B,)."""
    ### BEGIN SOLUTION
    b, c, h, w = x.shape
    y = torch.einsum("ij,bjhw->bihw", weight, x)
    return y, (h * w * torch.linalg.slogdet(weight)[1]).expand(b)
    ### END SOLUTION


def conv1x1_inverse(y: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """x_ij = W^{-1} y_ij at every pixel, and log|det dx/dy| per image, shape (B,)."""
    ### BEGIN SOLUTION
    b, c, h, w = y.shape
    x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(weight), y)
    return x, (-h * w * torch.linalg.slogdet(weight)[1]).expand(b)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p4-conv1x1-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_conv1x1(seed: int, c: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(seed)
    where = f"(C = {c}, H = {h}, W = {w})"
    weight = torch.randn(c, c, generator=g, dtype=torch.float64) + 1.5 * torch.eye(c, dtype=torch.float64)
    x = torch.randn(3, c, h, w, generator=g, dtype=torch.float64)
    with hint(f"conv1x1_forward {where}"):
        y, logdet = _pair("conv1x1_forward", conv1x1_forward(x, weight), (3, c, h, w))
    by_pixel = (weight @ x.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    check_close(y, by_pixel, f"conv1x1_forward {where}: y at pixel (i, j) must be W times the channel vector of x "
                "there (row k of W gives output channel k)", atol=1e-10)
    with hint(f"log|det| of conv1x1_forward by autograd {where}"):
        expected = autograd_logabsdet(lambda v: conv1x1_forward(v, weight)[0], x)
    check_close(logdet, expected, f"conv1x1_forward {where}: your log-determinant differs from autograd's "
                "(how many copies of W does the Jacobian of a whole image hold?)", atol=1e-8)
    with hint(f"conv1x1_inverse {where}"):
        x_back, logdet_inv = _pair("conv1x1_inverse", conv1x1_inverse(y, weight), (3, c, h, w))
    check_close(x_back, x, f"conv1x1_inverse {where}: conv1x1_inverse(conv1x1_forward(x)) must give x back",
                atol=1e-9)
    with hint(f"log|det| of conv1x1_inverse by autograd {where}"):
        expected_inv = autograd_logabsdet(lambda v: conv1x1_inverse(v, weight)[0], y)
    check_close(logdet_inv, expected_inv, f"conv1x1_inverse {where}: your log-determinant differs from autograd's",
                atol=1e-8)
    check_own_work(conv1x1_forward, x, weight, message="Write the 1x1 convolution with torch operations.")
    check_own_work(conv1x1_inverse, y, weight, message="Write the inverse with torch operations.")


_check_conv1x1(seed=4, c=3, h=2, w=3)
### BEGIN HIDDEN TESTS
_check_conv1x1(seed=40, c=2, h=5, w=1)
_check_conv1x1(seed=41, c=8, h=2, w=2)
_check_conv1x1(seed=42, c=5, h=1, w=4)
### END HIDDEN TESTS
print("part 4 passed")

# %% [markdown]
# ## Part 5: the affine coupling over channels, both ways (3 points)
#
# The coupling of a Glow step splits the $C$ channels into halves. With `parity` 0 the first
# half $x_a$ (channels $0 .. C/2 - 1$) is kept and conditions the second half $x_b$, which is
# transformed; with `parity` 1 the roles swap (the second half is kept). The `conditioner`
# maps $x_a$, shape $(B, C/2, H, W)$, to $(B, C, H, W)$: first the $C/2$ channels of raw
# log-scales, then the $C/2$ channels of shifts, $(s_\text{raw}, t)$ = `conditioner(x_a).chunk(2, dim=1)`.
# The log-scales are softly clamped, $s = \tfrac{2c}{\pi}\arctan(s_\text{raw}/c)$ with
# $c$ = `clamp` (no clamp when `clamp` is `None`; lecture 4, and `flowlib.transformers.soft_clamp`
# computes it), and then
#
# $$z_a = x_a, \qquad z_b = x_b \odot e^{s} + t,$$
#
# with $z$ keeping every channel in its place. Return $z$ and $\log|\det \partial z/\partial x|$
# per image, and the inverse with its own log-determinant. Call the conditioner once per call,
# on the kept half only: it is never inverted.

# %% nbgrader={"grade": false, "grade_id": "10-p5-coupling", "locked": false, "schema_version": 3, "solution": true, "task": false}
def coupling_forward(x: Tensor, conditioner: nn.Module, parity: int,
                     clamp: float | None) -> tuple[Tensor, Tensor]:
    """z_a = x_a, z_b = x_b exp(s) + t with (s_raw, t) = conditioner(x_a); log|det dz/dx| per image."""
    ### BEGIN SOLUTION
    first, second = x.chunk(2, dim=1)
    x_a, x_b = (first, second) if parity == 0 else (second, first)
    s_raw, t = conditioner(x_a).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    z_b = x_b * torch.exp(s) + t
    z = torch.cat([x_a, z_b] if parity == 0 else [z_b, x_a], dim=1)
    return z, s.flatten(1).sum(1)
    ### END SOLUTION


def coupling_inverse(z: Tensor, conditioner: nn.Module, parity: int,
                     clamp: float | None) -> tuple[Tensor, Tensor]:
    """x_a = z_a, x_b = (z_b - t) exp(-s) with (s_raw, t) = conditioner(z_a); log|det dx/dz| per image."""
    ### BEGIN SOLUTION
    first, second = z.chunk(2, dim=1)
    z_a, z_b = (first, second) if parity == 0 else (second, first)
    s_raw, t = conditioner(z_a).chunk(2, dim=1)
    s = soft_clamp(s_raw, clamp)
    x_b = (z_b - t) * torch.exp(-s)
    x = torch.cat([z_a, x_b] if parity == 0 else [x_b, z_a], dim=1)
    return x, -s.flatten(1).sum(1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p5-coupling-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _clamped(s_raw: Tensor, clamp: float | None) -> Tensor:
    return s_raw if clamp is None else (2 * clamp / math.pi) * torch.atan(s_raw / clamp)


def _check_coupling(seed: int, c: int, h: int, w: int, parity: int, clamp: float | None) -> None:
    g = torch.Generator().manual_seed(seed)
    where = f"(C = {c}, H = {h}, W = {w}, parity {parity}, clamp {clamp})"
    net = nn.Conv2d(c // 2, c, 3, padding=1).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    seen: list[Tensor] = []

    def conditioner(x_a: Tensor) -> Tensor:
        seen.append(x_a.detach().clone())
        return net(x_a)

    x = 1.5 * torch.randn(3, c, h, w, generator=g, dtype=torch.float64)
    kept, moved = (slice(0, c // 2), slice(c // 2, c)) if parity == 0 else (slice(c // 2, c), slice(0, c // 2))
    for name, fn, sign in [("coupling_forward", coupling_forward, 1.0), ("coupling_inverse", coupling_inverse, -1.0)]:
        seen.clear()
        with hint(f"{name} {where}"):
            y, logdet = _pair(name, fn(x, conditioner, parity, clamp), (3, c, h, w))
        assert len(seen) == 1 and seen[0].shape == x[:, kept].shape and torch.equal(seen[0], x[:, kept]), (
            f"{name} {where}: call the conditioner once, on the kept half only (parity {parity} keeps channels "
            f"{kept.start}..{kept.stop - 1})")
        check_close(y[:, kept], x[:, kept], f"{name} {where}: the kept half passes unchanged, in its place", atol=0.0)
        with torch.no_grad():
            s_raw, t = net(x[:, kept]).chunk(2, dim=1)
        s = _clamped(s_raw, clamp)
        moved_expected = x[:, moved] * torch.exp(s) + t if sign > 0 else (x[:, moved] - t) * torch.exp(-s)
        check_close(y[:, moved], moved_expected, f"{name} {where}: the transformed half, in its place "
                    f"({'x_b exp(s) + t' if sign > 0 else '(z_b - t) exp(-s)'}, s clamped)", atol=1e-10)
        with hint(f"log|det| of {name} by autograd {where}"):
            expected = autograd_logabsdet(lambda v, fn=fn: fn(v, net, parity, clamp)[0], x)
        check_close(logdet, expected, f"{name} {where}: your log-determinant differs from autograd's", atol=1e-8)
    z, _ = coupling_forward(x, net, parity, clamp)
    check_close(coupling_inverse(z, net, parity, clamp)[0], x, f"{where}: coupling_inverse must undo coupling_forward",
                atol=1e-10)
    for fn in (coupling_forward, coupling_inverse):
        check_own_work(fn, x, net, parity, clamp, allowed=("flowlib.transformers.soft_clamp",),
                       message=f"Write {fn.__name__} with torch operations (soft_clamp may be flowlib's).")


# By hand: C = 2, one pixel, (s_raw, t) = (v, 2 v) of the kept value v, no clamp.
_net = nn.Conv2d(1, 2, 1, bias=False)
with torch.no_grad():
    _net.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
_x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
with hint("coupling_forward of x = (1, 3) with parity 0"):
    _z, _ld = _pair("coupling_forward", coupling_forward(_x, _net, 0, None), (1, 2, 1, 1))
check_close(_z.flatten(), torch.tensor([1.0, 3.0 * math.e + 2.0]), "parity 0 keeps x_0 = 1: z = (1, 3 e^1 + 2)")
check_close(_ld, torch.tensor([1.0]), "parity 0: the log-determinant is s = 1")
with hint("coupling_forward of x = (1, 3) with parity 1"):
    _z, _ld = _pair("coupling_forward", coupling_forward(_x, _net, 1, None), (1, 2, 1, 1))
check_close(_z.flatten(), torch.tensor([math.exp(3.0) + 6.0, 3.0]), "parity 1 keeps x_1 = 3: z = (1 e^3 + 6, 3)")
_check_coupling(seed=5, c=4, h=3, w=3, parity=0, clamp=2.0)
_check_coupling(seed=6, c=4, h=2, w=3, parity=1, clamp=2.0)
### BEGIN HIDDEN TESTS
_check_coupling(seed=50, c=6, h=2, w=5, parity=1, clamp=None)
_check_coupling(seed=51, c=2, h=4, w=1, parity=0, clamp=3.0)
_check_coupling(seed=52, c=8, h=1, w=2, parity=1, clamp=0.5)
### END HIDDEN TESTS
print("part 5 passed")

# %% [markdown]
# ## Part 6: dequantisation and importance-weighted bits per dimension (3 points, a derivation)
#
# A pixel holds one of $K$ grey levels, $x \in \{0, \dots, K-1\}^D$, and the flow is a density
# $p_Y$ on $[0, 1]^D$. Lecture 4 gave the discrete model its probabilities through the mass of
# each pixel's cell: with $y = (x + u)/K$ and $u$ uniform on $[0, 1)^D$,
#
# $$P(x) = \int_{[0,1)^D} p_Y\!\left(\tfrac{x + u}{K}\right) K^{-D}\, du
#        = K^{-D}\; \mathbb{E}_{u \sim U[0,1)^D}\!\left[p_Y\!\left(\tfrac{x + u}{K}\right)\right].$$
#
# Training uses one draw of $u$ inside a logarithm, Jensen's lower bound of lecture 4. For the
# test figure we estimate $P(x)$ itself by averaging over $S$ independent draws
# $u^{(1)}, \dots, u^{(S)}$, and report $-\log_2$ of the estimate per dimension. Its expected
# logarithm is still a lower bound on $\log P(x)$, but one that can only tighten as $S$ grows
# (Burda, Grosse & Salakhutdinov, 2016, prove both for this kind of estimator; Hoogeboom, Cohen
# & Tomczak, 2020, use it for dequantised flows). Write
#
# * `uniform_dequantize(x_levels, grey_levels, generator)`: $y = (x + u)/K$, with $u$ drawn
#   by `torch.rand` with the given generator, in float32;
# * `iw_bits_per_dim(log_p_y, num_dims, grey_levels)`: **derive** the estimate's bits per
#   dimension from the $S$ log-densities $\log p_Y(y^{(s)})$ of each image (a tensor of shape
#   $(S, B)$, in nats) and return one figure per image. Stay in logarithms: $\log p_Y$ of a
#   Fashion-MNIST image is of the order of a thousand nats, and its exponential does not exist
#   in floating point;
# * `evaluate_bits_per_dim(model, x_levels, draws, generator)`: the figure of each image of a
#   batch under a trained model, with your two functions: draw the `draws` dequantisations in
#   turn with `uniform_dequantize(x_levels, model.grey_levels, generator)` and score each with
#   `model.log_prob_continuous(y)`, the log-density $\log p_Y(y)$ of the model's flow
#   (`model.dim` is $D$).

# %% nbgrader={"grade": false, "grade_id": "10-p6-bits-per-dim", "locked": false, "schema_version": 3, "solution": true, "task": false}
def uniform_dequantize(x_levels: Tensor, grey_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """y = (x + u) / K with u ~ U[0, 1) per entry (torch.rand with `generator`), float32, shaped like x."""
    ### BEGIN SOLUTION
    u = torch.rand(x_levels.shape, generator=generator)
    return (x_levels.float() + u) / grey_levels
    ### END SOLUTION


def iw_bits_per_dim(log_p_y: Tensor, num_dims: int, grey_levels: int) -> Tensor:
    """-log2 of the S-draw estimate of P(x), per dimension, from log p_Y(y^(s)) of shape (S, B); shape (B,)."""
    ### BEGIN SOLUTION
    draws = log_p_y.shape[0]
    log_px = torch.logsumexp(log_p_y, dim=0) - math.log(draws) - num_dims * math.log(grey_levels)
    return -log_px / (num_dims * math.log(2))
    ### END SOLUTION


def evaluate_bits_per_dim(model: nn.Module, x_levels: Tensor, draws: int,
                          generator: torch.Generator | None = None) -> Tensor:
    """The importance-weighted bits/dim of each image of x_levels under `model`, shape (B,)."""
    ### BEGIN SOLUTION
    with torch.no_grad():
        log_p = torch.stack([model.log_prob_continuous(uniform_dequantize(x_levels, model.grey_levels, generator))
                             for _ in range(draws)])
    return iw_bits_per_dim(log_p, model.dim, model.grey_levels)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p6-bits-per-dim-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
class _KnownDensity(nn.Module):
    """A stand-in for a trained model: a density on [0, 1]^D that we know in closed form."""

    def __init__(self, log_density, shape: tuple[int, int, int], grey_levels: int) -> None:
        super().__init__()
        self.log_density, self.event_shape, self.grey_levels = log_density, torch.Size(shape), grey_levels
        self.dim = math.prod(shape)

    def log_prob_continuous(self, y: Tensor) -> Tensor:
        return self.log_density(y)


def _check_dequantize(seed: int, shape: tuple[int, ...], grey_levels: int) -> None:
    where = f"(images {shape}, K = {grey_levels})"
    x = torch.randint(0, grey_levels, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with hint(f"uniform_dequantize {where}"):
        y = uniform_dequantize(x, grey_levels, torch.Generator().manual_seed(seed + 1))
        y_again = uniform_dequantize(x.float(), grey_levels, torch.Generator().manual_seed(seed + 1))
        y_other = uniform_dequantize(x, grey_levels, torch.Generator().manual_seed(seed + 2))
    assert isinstance(y, Tensor) and y.shape == x.shape and y.dtype == torch.float32, (
        f"uniform_dequantize {where}: return a float32 tensor shaped like x, got "
        f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    u = grey_levels * y.double() - x.double()
    assert bool(((u >= -1e-4) & (u < 1 + 1e-4)).all()), (
        f"uniform_dequantize {where}: K y - x must lie in [0, 1): the noise fills each grey level's own cell")
    assert abs(float(u.mean()) - 0.5) < 0.03 and abs(float(u.var()) - 1 / 12) < 0.01, (
        f"uniform_dequantize {where}: the noise should be uniform on [0, 1) (mean 1/2, variance 1/12); got mean "
        f"{float(u.mean()):.3f}, variance {float(u.var()):.4f}")
    assert torch.equal(y, y_again), f"uniform_dequantize {where}: draw u with the generator you are given"
    assert not torch.equal(y, y_other), f"uniform_dequantize {where}: another generator seed must give other noise"
    check_own_work(uniform_dequantize, x, grey_levels, None, message="Write the dequantisation with torch operations.")


def _check_iw(seed: int, draws: int, batch: int, num_dims: int, grey_levels: int) -> None:
    g = torch.Generator().manual_seed(seed)
    where = f"(S = {draws}, D = {num_dims}, K = {grey_levels})"
    log_p = -2.0 * num_dims + 3.0 * torch.randn(draws, batch, generator=g, dtype=torch.float64)
    with hint(f"iw_bits_per_dim {where}: return one value per image, shape ({batch},)"):
        ours = iw_bits_per_dim(log_p, num_dims, grey_levels)
        single = torch.stack([iw_bits_per_dim(row.unsqueeze(0), num_dims, grey_levels) for row in log_p])
    assert isinstance(ours, Tensor) and tuple(ours.shape) == (batch,), (
        f"iw_bits_per_dim {where}: return one figure per image, shape ({batch},), got "
        f"{getattr(ours, 'shape', type(ours).__name__)}")
    plain = (-log_p / num_dims + math.log(grey_levels)) / math.log(2)  # one draw: lecture 4's bits/dim
    check_close(single, plain, f"iw_bits_per_dim {where}: with one draw (S = 1) the figure is lecture 4's "
                "(-log p_Y + D log K) / (D ln 2)", atol=1e-9)
    assert bool((ours >= single.min(0).values - 1e-9).all() and (ours <= single.max(0).values + 1e-9).all()), (
        f"iw_bits_per_dim {where}: the estimate of P(x) averages the S draws, so its figure must lie between the "
        "best and the worst single draw")
    assert bool((ours <= single.mean(0) + 1e-9).all()), (
        f"iw_bits_per_dim {where}: averaging probabilities can only beat averaging their logarithms (Jensen): your "
        "figure is above the mean of the single-draw figures")
    repeated = iw_bits_per_dim(log_p[:1].expand(draws, batch), num_dims, grey_levels)
    check_close(repeated, single[0], f"iw_bits_per_dim {where}: S equal draws must give the figure of one draw",
                atol=1e-9)
    huge = (log_p - 5000.0).float()  # log p_Y of the size of real images: exp() is 0 in float32
    with hint(f"iw_bits_per_dim of log-densities near -5000 nats {where}"):
        far = iw_bits_per_dim(huge, num_dims, grey_levels)
    assert bool(torch.isfinite(far).all()), (
        f"iw_bits_per_dim {where}: log-densities near -5000 nats give {far.tolist()[:3]}...; exp(-5000) is 0 in "
        "floating point. Average the probabilities without leaving the logarithms")
    check_own_work(iw_bits_per_dim, log_p, num_dims, grey_levels, message="Write the estimate with torch operations.")


def _check_evaluate(seed: int) -> None:
    shape, K, draws = (1, 4, 4), 8, 4
    x = torch.randint(0, K, (5, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    flat = _KnownDensity(lambda y: torch.full((y.shape[0],), 3.0), shape, K)
    with hint("evaluate_bits_per_dim of a model with the constant density e^3"):
        figure = evaluate_bits_per_dim(flat, x, draws, torch.Generator().manual_seed(seed))
    check_close(figure, torch.full((5,), -3.0 / (16 * math.log(2)) + 3.0),
                "evaluate_bits_per_dim: a constant density e^3 on [0, 1]^16 with K = 8 scores -3/(16 ln 2) + log2 8 "
                "bits/dim for every image, whatever the noise", atol=1e-5)
    tilted = _KnownDensity(lambda y: 6.0 * y.flatten(1).sum(1) - 48.0, shape, K)
    with hint("evaluate_bits_per_dim of a density that depends on y"):
        figure = evaluate_bits_per_dim(tilted, x, draws, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    expected = iw_bits_per_dim(torch.stack([tilted.log_prob_continuous(uniform_dequantize(x, K, gen))
                                            for _ in range(draws)]), 16, K)
    check_close(figure, expected, "evaluate_bits_per_dim: draw the dequantisations in turn with "
                "uniform_dequantize(x_levels, model.grey_levels, generator), score them with "
                "model.log_prob_continuous, then combine them with iw_bits_per_dim", atol=1e-5)


# By hand: D = 4, K = 4 and two draws with p_Y = 1 and 3: P(x) = ((1 + 3) / 2) 4^-4, so -log2 P(x) / 4 = 7/4.
with hint("iw_bits_per_dim of two draws by hand"):
    _hand = iw_bits_per_dim(torch.tensor([[0.0], [math.log(3.0)]]), 4, 4)
check_close(_hand, torch.tensor([1.75]), "two draws with p_Y = 1 and 3, D = 4, K = 4: the mean of the two "
            "probabilities is 2, so P(x) = 2 / 4^4 and the figure is 7/4 bits/dim", atol=1e-6)
_check_dequantize(seed=6, shape=(64, 1, 6, 6), grey_levels=256)
_check_iw(seed=7, draws=8, batch=5, num_dims=784, grey_levels=256)
_check_evaluate(seed=8)
### BEGIN HIDDEN TESTS
_check_dequantize(seed=60, shape=(40, 3, 5, 5), grey_levels=17)
_check_iw(seed=70, draws=3, batch=4, num_dims=64, grey_levels=17)
_check_iw(seed=71, draws=20, batch=2, num_dims=3072, grey_levels=256)
_far = iw_bits_per_dim(torch.tensor([[-5000.0], [-5000.0 + math.log(3.0)]], dtype=torch.float64), 784, 256)
_exact = (5000.0 - math.log(2.0) + 784 * math.log(256)) / (784 * math.log(2))
check_close(_far, torch.tensor([_exact], dtype=torch.float64), "iw_bits_per_dim far from 0 nats", atol=1e-9)
_check_evaluate(seed=80)
### END HIDDEN TESTS
print("part 6 passed")

# %% [markdown]
# ## The layers of your flow
#
# The layers below hold the parameters of the flow and call your functions of Parts 1 to 5;
# you need not change them. While a part is not done yet, its layer says so once and runs
# flowlib's version instead (after you finish or change a part, run this cell and the ones
# after it again). One step of flow is lecture 5's: ActNorm, then the $1\times1$
# convolution, then the affine coupling, whose conditioner is Glow's network from
# `flowlib.convnets` (a $3\times3$, a $1\times1$ and a zero-initialised $3\times3$ convolution,
# so every coupling starts as the identity). ActNorm initialises itself on the first batch it
# sees in training mode, with your `actnorm_initial_parameters`, and remembers that it did in a
# buffer, which is saved with the weights. The $1\times1$ convolution starts from a random
# rotation, $\log|\det W| = 0$. `reference_flow` is flowlib's own flow of the same
# architecture: it stands in for yours until Part 7 is done.

# %%
squeeze_fn = yours_or_reference(squeeze2x2, squeeze, "Part 1")
unsqueeze_fn = yours_or_reference(unsqueeze2x2, unsqueeze, "Part 1")


def _flowlib_layer(layer: Flow, params: dict[str, Tensor], x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """One of flowlib's layers, run with the given tensors as its parameters (gradients reach them)."""
    if inverse:
        layer, params = Inverse(layer), {f"flow.{name}": value for name, value in params.items()}
    return functional_call(layer, params, (x,))


def _flowlib_actnorm(x: Tensor, bias: Tensor, log_scale: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    layer = ActNorm(bias.numel())
    layer.mark_initialized()
    return _flowlib_layer(layer, {"bias": bias, "log_scale": log_scale}, x, inverse)


def _flowlib_actnorm_init(x: Tensor) -> tuple[Tensor, Tensor]:
    layer = ActNorm(x.shape[1]).to(x.dtype)
    layer.initialize(x)
    return layer.bias.detach().clone(), layer.log_scale.detach().clone()


def _flowlib_conv1x1(x: Tensor, weight: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    layer = InvertibleLinear(weight.shape[0], generator=torch.Generator().manual_seed(0))
    return _flowlib_layer(layer, {"weight": weight}, x, inverse)


def _flowlib_coupling(x: Tensor, conditioner: nn.Module, parity: int, clamp: float | None,
                      inverse: bool = False) -> tuple[Tensor, Tensor]:
    layer = Coupling(channel_mask(*x.shape[1:], parity), conditioner, Affine(clamp))
    return layer.inverse(x) if inverse else layer(x)


logit_fwd = yours_or_reference(logit_forward, lambda y, alpha: LogitPreprocess(alpha)(y), "Part 2")
logit_inv = yours_or_reference(logit_inverse, lambda z, alpha: LogitPreprocess(alpha).inverse(z), "Part 2")
actnorm_init = yours_or_reference(actnorm_initial_parameters, _flowlib_actnorm_init, "Part 3")
actnorm_fwd = yours_or_reference(actnorm_forward, _flowlib_actnorm, "Part 3")
actnorm_inv = yours_or_reference(actnorm_inverse, partial(_flowlib_actnorm, inverse=True), "Part 3")
conv1x1_fwd = yours_or_reference(conv1x1_forward, _flowlib_conv1x1, "Part 4")
conv1x1_inv = yours_or_reference(conv1x1_inverse, partial(_flowlib_conv1x1, inverse=True), "Part 4")
coupling_fwd = yours_or_reference(coupling_forward, _flowlib_coupling, "Part 5")
coupling_inv = yours_or_reference(coupling_inverse, partial(_flowlib_coupling, inverse=True), "Part 5")


class Logit(Flow):
    """y in [0, 1]^D -> z = logit(alpha + (1 - 2 alpha) y): your Part 2."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__(None)
        self.alpha = alpha

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return logit_fwd(y, self.alpha)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return logit_inv(z, self.alpha)


class ActNormLayer(Flow):
    """Your Part 3, with its parameters, initialised from the first batch seen in training mode."""

    def __init__(self, channels: int) -> None:
        super().__init__(None)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                bias, log_scale = actnorm_init(x)
                self.bias.copy_(bias)
                self.log_scale.copy_(log_scale)
                self.initialized.fill_(True)
        return actnorm_fwd(x, self.bias, self.log_scale)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return actnorm_inv(z, self.bias, self.log_scale)


class Conv1x1(Flow):
    """Your Part 4, with its weight W, a random rotation at the start."""

    def __init__(self, channels: int) -> None:
        super().__init__(None)
        self.weight = nn.Parameter(random_rotation(channels).to(torch.get_default_dtype()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return conv1x1_fwd(x, self.weight)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return conv1x1_inv(y, self.weight)


class CouplingLayer(Flow):
    """Your Part 5, with Glow's conditioner, C/2 -> C channels, whose last convolution starts at zero."""

    def __init__(self, channels: int, hidden: int, parity: int, clamp: float | None = 2.0) -> None:
        super().__init__(None)
        self.net = GlowConditioner(channels // 2, channels, hidden)
        self.parity, self.clamp = parity, clamp

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_fwd(x, self.net, self.parity, self.clamp)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return coupling_inv(z, self.net, self.parity, self.clamp)


def FlowStep(channels: int, hidden: int, parity: int) -> Compose:  # noqa: N802 - a layer, named like one
    """One step of flow on `channels` channels: ActNorm -> 1x1 convolution -> affine coupling (`parity`)."""
    return Compose(ActNormLayer(channels), Conv1x1(channels), CouplingLayer(channels, hidden, parity))


def reference_flow(shape: tuple[int, int, int], scales: int, depth: int, hidden: int) -> Flow:
    """flowlib's flow of the same architecture as Part 7's (with flowlib's own latent layout)."""
    per_scale = []
    for c, h, w in MultiScale.scale_shapes(shape, scales):
        per_scale.append([layer for k in range(depth) for layer in (
            ActNorm(c), InvertibleLinear(c),
            AffineCoupling(channel_mask(c, h, w, k % 2), GlowConditioner(c // 2, c, hidden), clamp=2.0))])
    return Compose(LogitPreprocess(0.05), MultiScale(shape, per_scale, split_prior=False))


print("one step on 4 channels:", [type(layer).__name__ for layer in FlowStep(4, HIDDEN, 0)],
      f"| {count_parameters(FlowStep(4, HIDDEN, 0)):,} parameters")

# %% [markdown]
# ## Part 7: the multi-scale flow (3 points)
#
# Now assemble the flow $f: y \mapsto z$ of lectures 4 and 5 from these layers. For an input of
# shape $(C, H, W)$ and `scales` $= L$:
#
# 1. apply the `Logit` layer;
# 2. at each scale $l = 0, \dots, L-1$: squeeze (`squeeze_fn`, your Part 1), then apply the
#    `depth` steps of that scale, `FlowStep(channels, hidden, parity)` with the parities
#    $0, 1, 0, 1, \dots$; then, except at the last scale, **factor out** the second half of the
#    channels as the final latent $z_l$ of this scale and pass the first half on to the next
#    scale; the last scale's whole output is $z_{L-1}$;
# 3. $\log|\det \partial z/\partial y|$ is the sum of every layer's;
# 4. $z$ is the concatenation of the flattened $z_0, z_1, \dots, z_{L-1}$ (in this order, each
#    flattened per image, `t.flatten(1)`), reshaped to the input's shape.
#
# The squeezes make the channels $4C, 8C, 16C, \dots$ at resolutions $H/2, H/4, \dots$: for
# Fashion-MNIST with 2 scales the steps act on $(4, 14, 14)$ and then $(8, 7, 7)$. Store the
# logit layer as `self.logit` and the steps as `self.per_scale`, an `nn.ModuleList` whose entry
# $l$ is a `Compose` of the `depth` steps of scale $l$. The inverse runs it all backwards:
# split $z$ into the per-scale latents, invert the last scale, unsqueeze, put the factored-out
# half back beside it, invert the scale before, and so on, down to the logit. `build_flow`
# (given) runs your flow once in both directions, so a part that is not done yet shows there.

# %% nbgrader={"grade": false, "grade_id": "10-p7-multiscale", "locked": false, "schema_version": 3, "solution": true, "task": false}
class MultiScaleFlow(Flow):
    """The capstone's flow f: y in [0, 1]^(C, H, W) -> z of the same shape (see the text for the layout of z)."""

    def __init__(self, shape: tuple[int, int, int], scales: int = 2, depth: int = 4, hidden: int = 32,
                 alpha: float = 0.05) -> None:
        super().__init__(tuple(shape))
        ### BEGIN SOLUTION
        self.logit = Logit(alpha)
        per_scale = []
        c, h, w = shape
        for _ in range(scales):
            c, h, w = 4 * c, h // 2, w // 2
            per_scale.append(Compose([FlowStep(c, hidden, k % 2) for k in range(depth)]))
            c //= 2  # the first half goes on
        self.per_scale = nn.ModuleList(per_scale)
        ### END SOLUTION

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        h, logdet = self.logit(y)
        latents = []
        for scale, steps in enumerate(self.per_scale):
            h, ld = steps(squeeze_fn(h))
            logdet = logdet + ld
            if scale < len(self.per_scale) - 1:
                h, factored = h.chunk(2, dim=1)
                latents.append(factored)
        latents.append(h)
        return torch.cat([t.flatten(1) for t in latents], dim=1).reshape(y.shape), logdet
        ### END SOLUTION

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ### BEGIN SOLUTION
        shapes = []
        c, h, w = self.event_shape
        for scale in range(len(self.per_scale)):
            c, h, w = 4 * c, h // 2, w // 2
            shapes.append((c, h, w) if scale == len(self.per_scale) - 1 else (c // 2, h, w))
            c //= 2
        pieces = z.flatten(1).split([math.prod(s) for s in shapes], dim=1)
        latents = [piece.reshape(-1, *s) for piece, s in zip(pieces, shapes, strict=True)]
        h, logdet = latents[-1], z.new_zeros(z.shape[0])
        for scale in reversed(range(len(self.per_scale))):
            if scale < len(self.per_scale) - 1:
                h = torch.cat([h, latents[scale]], dim=1)
            h, ld = self.per_scale[scale].inverse(h)
            logdet = logdet + ld
            h = unsqueeze_fn(h)
        y, ld = self.logit.inverse(h)
        return y, logdet + ld
        ### END SOLUTION


def build_flow(shape: tuple[int, int, int], scales: int, depth: int, hidden: int) -> Flow:
    """Your MultiScaleFlow, run once both ways on two random images (in evaluation mode, so ActNorm waits)."""
    flow = MultiScaleFlow(shape, scales=scales, depth=depth, hidden=hidden)
    flow.eval()
    with torch.no_grad():
        z, _ = flow(torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)))
        flow.inverse(z)
    return flow.train()


# %% nbgrader={"grade": true, "grade_id": "10-p7-multiscale-test", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
def _refuse_flowlib_assembly(fn, *args) -> None:
    used = [name for name in calls_into_flowlib(fn, *args)
            if name.startswith(("flowlib.multiscale.MultiScale", "flowlib.image_models"))]
    assert not used, f"Assemble the scales yourself, not with flowlib's multi-scale flow (your code calls {used[0]})"


def _check_multiscale(seed: int, shape: tuple[int, int, int], scales: int, depth: int, hidden: int) -> None:
    where = f"(shape {shape}, {scales} scales of {depth} steps)"
    torch.manual_seed(seed)
    with hint(f"MultiScaleFlow{where}: building it"):
        flow = MultiScaleFlow(shape, scales=scales, depth=depth, hidden=hidden).double()
    assert isinstance(getattr(flow, "per_scale", None), nn.ModuleList) and len(flow.per_scale) == scales, (
        f"MultiScaleFlow{where}: keep the steps in self.per_scale, an nn.ModuleList with one entry per scale")
    reference_size = count_parameters(reference_flow(shape, scales, depth, hidden))
    assert count_parameters(flow) == reference_size, (
        f"MultiScaleFlow{where}: {count_parameters(flow):,} parameters where the architecture of the text has "
        f"{reference_size:,}: {depth} FlowSteps per scale, on 4C channels at the first scale, 8C at the second, ...")
    g = torch.Generator().manual_seed(seed)
    y = 0.02 + 0.96 * torch.rand(6, *shape, generator=g, dtype=torch.float64)
    flow.train()
    with torch.no_grad(), hint(f"MultiScaleFlow{where}: a first forward pass in training mode (ActNorm initialises)"):
        flow(y)
        for p in flow.parameters():  # away from the identity: every layer does something
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    flow.eval()
    with hint(f"MultiScaleFlow{where}: forward"):
        z, logdet = _pair("MultiScaleFlow.forward", flow(y[:3]), (3, *shape))
    with hint(f"MultiScaleFlow{where}: inverse"):
        y_back, logdet_inv = _pair("MultiScaleFlow.inverse", flow.inverse(z), (3, *shape))
    check_close(y_back, y[:3], f"MultiScaleFlow{where}: inverse(forward(y)) must give y back", atol=1e-8)
    check_close(logdet_inv, -logdet, f"MultiScaleFlow{where}: the inverse's log-determinant is minus the "
                "forward's", atol=1e-8)
    with hint(f"MultiScaleFlow{where}: log|det| by autograd"):
        expected = autograd_logabsdet(lambda v: flow(v)[0], y[:2])
    check_close(logdet[:2], expected, f"MultiScaleFlow{where}: your log-determinant differs from autograd's: "
                "did you add every layer's, the logit's included?", atol=1e-7)
    with torch.no_grad():  # the layout of z, worked out layer by layer with your layers
        h, _ = flow.logit(y[:3])
        latents = []
        for scale in range(scales):
            h, _ = flow.per_scale[scale](squeeze(h))
            if scale < scales - 1:
                h, factored = h.chunk(2, dim=1)
                latents.append(factored)
        latents.append(h)
        layout = torch.cat([t.flatten(1) for t in latents], dim=1).reshape(3, *shape)
    check_close(z, layout, f"MultiScaleFlow{where}: z is laid out differently from the text (z_0 = the second half "
                "of the channels after scale 0, ..., the last scale's output; flattened, concatenated, reshaped)",
                atol=1e-8)
    _refuse_flowlib_assembly(flow.forward, y[:3])
    _refuse_flowlib_assembly(flow.inverse, z)


_check_multiscale(seed=7, shape=(1, 8, 8), scales=2, depth=2, hidden=8)
### BEGIN HIDDEN TESTS
_check_multiscale(seed=70, shape=(1, 8, 8), scales=3, depth=1, hidden=4)
_check_multiscale(seed=71, shape=(2, 4, 12), scales=2, depth=3, hidden=4)
### END HIDDEN TESTS
print("part 7 passed")

# %% [markdown]
# ## Training
#
# The model is your flow with a standard-normal base and lecture 4's uniform dequantisation
# of the $K = 256$ grey levels (flowlib's `ImageFlowModel`, which `fit` trains by its
# one-draw bound in bits/dim). ActNorm initialises on a first batch of 512 training images.
# Then `fit` runs the fixed budget of `STEPS` optimiser steps of 64 images (AdamW, a linear
# warm-up to the learning rate $2 \cdot 10^{-3}$, then a cosine decay to 0), validates on 1000
# held-out training images on the way and keeps the weights with the best validation figure.
# The full run takes 3000 steps, about 7 minutes of one CPU core (the cell measures it, wall
# clock and CPU); with `CI` set, 250 steps, well under a minute.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
make_flow = yours_or_reference(build_flow, reference_flow, "Part 7")
model = ImageFlowModel(make_flow(SHAPE, SCALES, DEPTH, HIDDEN), StandardNormal(SHAPE), grey_levels=GREY_LEVELS)
print(f"{type(model.flow).__name__}: {count_parameters(model):,} parameters")
model.initialize(x_train[:512].float())
t0, c0 = time.perf_counter(), time.process_time()
training = fit(model, x_train.float(), val_data=x_val.float(), steps=STEPS, batch_size=BATCH, lr=LR,
               eval_every=EVAL_EVERY, seed=0, device=DEVICE)
train_seconds = (time.perf_counter() - t0, time.process_time() - c0)  # wall clock, CPU of this process
model = model.cpu().eval()  # from here on the model is only read
print(training)
print(f"training: {train_seconds[0] / 60:.1f} min wall clock, {train_seconds[1] / 60:.1f} min of CPU")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.4))
plot_training_curve(training, ax=ax, smooth=50)
ax.axhline(8.0, color="0.5", ls=":", lw=1)
ax.set_ylim(top=8.5)
ax.set_title("training (one dequantisation draw per image) and validation, bits/dim")
plt.show()

# %% [markdown]
# ## Part 8: the test figure (4 points, a target under a fixed budget)
#
# The graded figure is the importance-weighted bits/dim of Part 6 with $S = 8$ dequantisation
# draws per image, averaged over the first 1000 test images. A model that knows nothing (the
# uniform density on $[0, 1]^D$) scores $\log_2 256 = 8$ bits/dim. The thresholds were set from
# runs of the solution: the figure of the solution as it stands here, plus a margin for the
# noise of the figure, for another random initialisation (a flow whose layers are created in
# another order starts from other random weights) and for differences between implementations
# and machines:
#
# | run | budget (optimiser steps of 64 images) | the solution's figure | threshold |
# | :-- | --: | --: | --: |
# | full (the default) | 3000 | 3.62 | **3.90** |
# | short (`CI` set) | 250 | 4.47 | **4.75** |
#
# The model must be the one you trained, built by your `build_flow` from your own pieces,
# with no more parameters than the architecture of the settings and within the budget. First
# the figure by your own `evaluate_bits_per_dim`; the grader computes it again with flowlib's
# code on the same images (with other noise draws).

# %% tags=["nbval-ignore-output"]
evaluate = yours_or_reference(evaluate_bits_per_dim, lambda m, x, draws, generator=None: m.bits_per_dim(x, draws),
                              "Part 6")
generator = torch.Generator().manual_seed(8)
test_levels = x_test[:TEST_IMAGES].float()
t0 = time.perf_counter()
per_image = torch.cat([evaluate(model, test_levels[i:i + 250], DRAWS, generator)
                       for i in range(0, TEST_IMAGES, 250)])
print(f"your evaluation: {float(per_image.mean()):.3f} bits/dim on the first {TEST_IMAGES} test images, "
      f"{DRAWS} draws each ({time.perf_counter() - t0:.0f} s)")

# %% nbgrader={"grade": true, "grade_id": "10-p8-test-bits-per-dim-test", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false} tags=["nbval-ignore-output"]
def _check_model_is_yours(model: nn.Module) -> None:
    """The trained model must be your MultiScaleFlow, with every piece of Parts 1 to 5 yours."""
    img = torch.linspace(0.1, 0.9, 16).reshape(1, 4, 2, 2)
    net = nn.Conv2d(2, 4, 1)
    for part, call in [("Part 1", lambda: squeeze2x2(img)), ("Part 1", lambda: unsqueeze2x2(img)),
                       ("Part 2", lambda: logit_forward(img, 0.05)), ("Part 2", lambda: logit_inverse(img, 0.05)),
                       ("Part 3", lambda: actnorm_initial_parameters(img)),
                       ("Part 3", lambda: actnorm_forward(img, torch.zeros(4), torch.zeros(4))),
                       ("Part 3", lambda: actnorm_inverse(img, torch.zeros(4), torch.zeros(4))),
                       ("Part 4", lambda: conv1x1_forward(img, torch.eye(4))),
                       ("Part 4", lambda: conv1x1_inverse(img, torch.eye(4))),
                       ("Part 5", lambda: coupling_forward(img, net, 0, 2.0)),
                       ("Part 5", lambda: coupling_inverse(img, net, 0, 2.0))]:
        with hint(f"{part} runs inside your trained flow"):
            call()  # raises NotImplementedError while the part is not done
    assert isinstance(getattr(model, "flow", None), MultiScaleFlow), (
        "The trained model is not your MultiScaleFlow (while Part 7 was not done, flowlib's reference was trained in "
        "its place): finish Parts 1 to 7, then run the training cell again")


_check_model_is_yours(model)
_budget, _threshold = (250, 4.75) if "CI" in os.environ else (3000, 3.90)
assert training.steps <= _budget, f"the budget is {_budget} optimiser steps; this model was trained for {training.steps}"
_limit = count_parameters(reference_flow((1, 28, 28), 2, 4, 64))
assert count_parameters(model) <= _limit, (
    f"the model has {count_parameters(model):,} parameters; the architecture of the settings has {_limit:,}")
_x_test, _ = load_fashion_mnist("test")
torch.manual_seed(2018)
_figure = mean_bits_per_dim(model, _x_test[:1000].float(), samples=8, batch=250)
print(f"the grader's figure: {_figure:.3f} bits/dim")
assert _figure < _threshold, (
    f"{_figure:.3f} bits/dim is not below {_threshold}. Check the training curve: did the loss fall steadily? Is your "
    "log-determinant right in every part (the tests of Parts 2 to 7)? Does every scale's output reach z?")
### BEGIN HIDDEN TESTS
torch.manual_seed(2019)
_again = mean_bits_per_dim(model, _x_test[1000:2000].float(), samples=8, batch=250)
assert _again < _threshold + 0.05, f"on the next 1000 test images the figure is {_again:.3f} bits/dim"
### END HIDDEN TESTS
print("part 8 passed")

# %% [markdown]
# ## Part 9: samples at temperature $T$ (2 points)
#
# Write `sample_images(model, n, temperature, generator)`: draw the noise
# $\varepsilon$ = `torch.randn((n, *model.event_shape), generator=generator)`, scale it by the
# temperature, $z = T\varepsilon$, and return $y = f^{-1}(z)$ (`model.flow.inverse(z)` returns
# the pair $(y, \log|\det \partial y/\partial z|)$) clamped to $[0, 1]$, without gradients. The
# test also grades your trained model: its samples at $T = 0.7$ must be images, not noise
# spread evenly nor blanks: each sample must vary from pixel to pixel (a standard deviation over
# its pixels of at least 0.03 in at least half of them), and the samples must differ from each
# other (on average by at least 15% of the distance between two real test images).

# %% nbgrader={"grade": false, "grade_id": "10-p9-samples", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sample_images(model: nn.Module, n: int, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """n images y = f^{-1}(T eps), eps ~ N(0, I) drawn with `generator`, clamped to [0, 1], without gradients."""
    ### BEGIN SOLUTION
    eps = torch.randn((n, *model.event_shape), generator=generator)
    with torch.no_grad():
        y, _ = model.flow.inverse(temperature * eps)
    return y.clamp(0, 1)
    ### END SOLUTION


# %%
draw = yours_or_reference(sample_images, lambda m, n, temperature, generator=None: m.sample(n, temperature).clamp(0, 1),
                          "Part 9")
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
image_grid((x_test[:36].float() + 0.5) / GREY_LEVELS, nrow=6, ax=axes[0], title="test images")
for ax, temperature in zip(axes[1:], (1.0, 0.7), strict=True):
    image_grid(draw(model, 36, temperature, torch.Generator().manual_seed(9)), nrow=6, ax=ax,
               title=f"samples, T = {temperature:g} (the same noise)")
plt.show()


# %% nbgrader={"grade": true, "grade_id": "10-p9-samples-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _pairwise(images: Tensor) -> float:
    """The mean distance between two different images of a batch (root mean square over pixels)."""
    flat = images.flatten(1).double()
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    return float(d.sum() / (len(flat) * (len(flat) - 1)))


def _check_samples(model: nn.Module, seed: int, n: int, temperature: float) -> Tensor:
    where = f"(n = {n}, T = {temperature})"
    with hint(f"sample_images {where}"):
        images = sample_images(model, n, temperature, torch.Generator().manual_seed(seed))
        again = sample_images(model, n, temperature, torch.Generator().manual_seed(seed))
    assert isinstance(images, Tensor) and tuple(images.shape) == (n, *model.event_shape), (
        f"sample_images {where}: return images of shape {(n, *model.event_shape)}, got "
        f"{getattr(images, 'shape', type(images).__name__)}")
    assert not images.requires_grad, f"sample_images {where}: sample without gradients (torch.no_grad())"
    assert bool(torch.isfinite(images).all()) and float(images.min()) >= 0 and float(images.max()) <= 1, (
        f"sample_images {where}: the images must be finite and clamped to [0, 1]")
    assert torch.equal(images, again), f"sample_images {where}: draw the noise with the generator you are given"
    eps = torch.randn((n, *model.event_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.flow.inverse(temperature * eps)[0].clamp(0, 1)
    check_close(images, expected, f"sample_images {where}: y = f^-1(T eps) with eps = torch.randn((n, "
                "*model.event_shape), generator=generator), clamped", atol=1e-5)
    return images


_check_model_is_yours(model)
_samples = _check_samples(model, seed=9, n=64, temperature=0.7)
_x_real, _ = load_fashion_mnist("test")
_real = (_x_real[:64].float() + 0.5) / 256
_per_sample = _samples.flatten(1).std(1)
assert float(_per_sample.median()) > 0.03, (
    f"the samples at T = 0.7 hardly vary from pixel to pixel (median standard deviation {float(_per_sample.median()):.3f}): "
    "blank images. Was the model trained?")
assert _pairwise(_samples) > 0.15 * _pairwise(_real), (
    f"the samples at T = 0.7 are nearly all alike (mean distance {_pairwise(_samples):.3f}, real test images "
    f"{_pairwise(_real):.3f})")
_mode = _check_samples(model, seed=9, n=8, temperature=0.0)
check_close(_mode, _mode[:1].expand_as(_mode), "at T = 0 every sample is f^-1(0), the same image", atol=1e-5)
### BEGIN HIDDEN TESTS
_more = _check_samples(model, seed=90, n=100, temperature=0.7)
assert float(_more.flatten(1).std(1).median()) > 0.03 and _pairwise(_more) > 0.15 * _pairwise(_real)
_check_samples(model, seed=91, n=5, temperature=1.0)
### END HIDDEN TESTS
print("part 9 passed")

# %% [markdown]
# ## Part 10: interpolation in latent space (2 points)
#
# Write `interpolate(model, x_a, x_b, alphas)`: for two images of grey levels $x_a$, $x_b$
# (shape $(C, H, W)$, as the data set holds them), take the centres of their grey levels'
# cells, $y = (x + 1/2)/K$, encode both, $z_a = f(y_a)$ and $z_b = f(y_b)$, and decode the
# straight line between them, $f^{-1}\big((1 - \alpha) z_a + \alpha z_b\big)$ for each
# $\alpha$ of `alphas`, without gradients: shape $(\text{len(alphas)}, C, H, W)$. Because $f$
# is invertible, the path starts and ends at the two images themselves (lecture 5).

# %% nbgrader={"grade": false, "grade_id": "10-p10-interpolation", "locked": false, "schema_version": 3, "solution": true, "task": false}
def interpolate(model: nn.Module, x_a: Tensor, x_b: Tensor, alphas) -> Tensor:
    """f^{-1}((1 - alpha) f(y_a) + alpha f(y_b)) for each alpha, with y = (x + 1/2) / K; (len(alphas), C, H, W)."""
    ### BEGIN SOLUTION
    y = (torch.stack([x_a, x_b]).float() + 0.5) / model.grey_levels
    a = torch.as_tensor(alphas, dtype=torch.float32).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        z, _ = model.flow(y)
        path, _ = model.flow.inverse((1 - a) * z[:1] + a * z[1:])
    return path
    ### END SOLUTION


# %%
walk = yours_or_reference(interpolate, lambda m, x_a, x_b, alphas: LatentInterpolation(m, x_a, x_b).decode(alphas),
                          "Part 10")
pairs = [(0, 7), (1, 3), (5, 9)]  # T-shirt -> sneaker, trouser -> dress, sandal -> ankle boot
fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 1.3 * len(pairs) + 0.4))
for ax, (a, b) in zip(axes, pairs, strict=True):
    strip = walk(model, x_test[first_of_each[a]], x_test[first_of_each[b]], torch.linspace(0, 1, 9).tolist())
    image_grid(strip.clamp(0, 1), nrow=9, ax=ax, title=f"{CLASSES[a]} -> {CLASSES[b]}: alpha = 0, 1/8, ..., 1")
plt.show()


# %% nbgrader={"grade": true, "grade_id": "10-p10-interpolation-test", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
def _check_interpolation(model: nn.Module, a: int, b: int, alphas: list[float]) -> None:
    x_all, labels = load_fashion_mnist("test")
    x_a, x_b = x_all[int(torch.nonzero(labels == a)[0])], x_all[int(torch.nonzero(labels == b)[0])]
    where = f"(classes {a} and {b}, alphas {alphas})"
    with hint(f"interpolate {where}"):
        path = interpolate(model, x_a, x_b, alphas)
    shape = (len(alphas), *model.event_shape)
    assert isinstance(path, Tensor) and tuple(path.shape) == shape, (
        f"interpolate {where}: return images of shape {shape}, got {getattr(path, 'shape', type(path).__name__)}")
    assert not path.requires_grad, f"interpolate {where}: decode without gradients (torch.no_grad())"
    assert bool(torch.isfinite(path).all()), f"interpolate {where}: the decoded images must be finite"
    lo, hi = LogitPreprocess(0.05).domain
    assert float(path.min()) >= lo - 1e-4 and float(path.max()) <= hi + 1e-4, (
        f"interpolate {where}: decoded values must lie in the range f^-1 can produce, [{lo:.4f}, {hi:.4f}]")
    y = (torch.stack([x_a, x_b]).float() + 0.5) / 256
    with torch.no_grad():
        z = model.flow(y)[0]
        weights = torch.tensor(alphas, dtype=torch.float32).reshape(-1, 1, 1, 1)
        expected = model.flow.inverse((1 - weights) * z[:1] + weights * z[1:])[0]
    check_close(path.clamp(0, 1), expected.clamp(0, 1), f"interpolate {where}: decode the straight line "
                "(1 - alpha) f(y_a) + alpha f(y_b), with y = (x + 1/2) / K", atol=1e-4)
    for k, alpha in enumerate(alphas):
        if alpha in (0.0, 1.0):
            check_close(path[k], y[0 if alpha == 0.0 else 1], f"interpolate {where}: alpha = {alpha:g} must give "
                        "the image itself back", atol=1e-4)


_check_model_is_yours(model)
_check_interpolation(model, 0, 7, torch.linspace(0, 1, 9).tolist())
### BEGIN HIDDEN TESTS
_check_interpolation(model, 4, 8, [0.25, 0.5])
_check_interpolation(model, 9, 2, [1.0, 0.0, 0.3])
### END HIDDEN TESTS
print("part 10 passed")

# %% [markdown]
# ## Part 11: the exact round trip (1 point)
#
# Nothing new to write: this part checks that your trained flow inverts itself on real data.
# On 256 dequantised test images, $\max |f^{-1}(f(y)) - y|$ must stay below $10^{-4}$, room for
# the rounding of float32 arithmetic through the 25 layers of the flow. Part 7 checked the round
# trip on a small flow in float64; training moves every layer far from the identity, and a layer
# whose inverse is only approximately right would show here.

# %% nbgrader={"grade": true, "grade_id": "10-p11-round-trip-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def _check_round_trip(model: nn.Module, start: int, n: int, seed: int) -> None:
    x_all, _ = load_fashion_mnist("test")
    y = (x_all[start:start + n].float() + torch.rand(n, *model.event_shape,
                                                     generator=torch.Generator().manual_seed(seed))) / 256
    with torch.no_grad():
        z, _ = model.flow(y)
        back, _ = model.flow.inverse(z)
    assert bool(torch.isfinite(z).all()), "f(y) has non-finite entries on test images"
    error = float((back - y).abs().max())
    assert error < 1e-4, (f"max |f^-1(f(y)) - y| = {error:.2e} on test images {start}..{start + n - 1}: does every "
                          "layer's inverse undo its forward exactly, with the same halves and the same parameters?")


_check_model_is_yours(model)
_check_round_trip(model, 0, 256, seed=11)
### BEGIN HIDDEN TESTS
_check_round_trip(model, 5000, 500, seed=110)
### END HIDDEN TESTS
print("part 11 passed")

# %% [markdown]
# ## Part 12: predict, then move the sliders (2 points)
#
# Two widgets on your trained model. Answer each question **before** you touch the widget,
# in the function below it, then check your answer with the slider.
#
# **The temperature grid.** It draws the noise $\varepsilon$ of 100 samples once, and decodes
# $f^{-1}(T\varepsilon)$ as you move $T$. Question: at $T = 0$, how many *different* images
# will the grid of 100 show?

# %% tags=["nbval-ignore-output"]
temperature_widget = TemperatureGrid(model, n=100, temperature=0.7)
temperature_widget

# %% nbgrader={"grade": false, "grade_id": "10-p12-temperature-prediction", "locked": false, "schema_version": 3, "solution": true, "task": false}
def distinct_images_at_zero() -> int:
    """Your prediction: how many different images does the 100-image grid show at T = 0?"""
    ### BEGIN SOLUTION
    return 1
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p12-temperature-prediction-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_answer = distinct_images_at_zero()
assert isinstance(_answer, int) and 1 <= _answer <= 100, f"answer with a whole number from 1 to 100, got {_answer!r}"
### BEGIN HIDDEN TESTS
_grid = TemperatureGrid(model, n=100, temperature=0.0)  # the widget itself, moved to T = 0
_kinds: list[Tensor] = []
for _image in _grid.images:
    if all(float((_image - _kind).abs().max()) > 1e-4 for _kind in _kinds):
        _kinds.append(_image)
_distinct = len(_kinds)
assert _answer == _distinct, (f"at T = 0 the grid shows {_distinct} different image(s): every eps becomes z = 0 "
                              "x eps = 0, and f^-1(0) is one image (the model's mode in latent space)")
### END HIDDEN TESTS
print("part 12a passed")

# %% [markdown]
# **The interpolation.** The widget walks between two test images, a T-shirt and a sneaker,
# along the straight line in latent space ("linear") or along the great circle ("spherical",
# lecture 5). Under the base $\mathcal{N}(0, I)$ in $D = 784$ dimensions, the latent of a
# typical image has a norm close to $\sqrt{D} = 28$ (and what is the angle between two
# independent draws, typically?). Question: on the linear path, what is the ratio
# $|z(1/2)| \,/\, \tfrac12(|z_a| + |z_b|)$ of the midpoint's norm to the mean norm of the two
# ends, for these two images under your model? Answer with a number; within 0.1 of the value
# the widget's latents give counts.

# %% tags=["nbval-ignore-output"]
interpolation_widget = LatentInterpolation(model, x_test[first_of_each[0]], x_test[first_of_each[7]], frames=9)
interpolation_widget

# %% nbgrader={"grade": false, "grade_id": "10-p12-interpolation-prediction", "locked": false, "schema_version": 3, "solution": true, "task": false}
def midpoint_norm_ratio() -> float:
    """Your prediction: |z(1/2)| / ((|z_a| + |z_b|) / 2) on the linear path."""
    ### BEGIN SOLUTION
    return math.sqrt(0.5)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "10-p12-interpolation-prediction-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
_answer = midpoint_norm_ratio()
assert isinstance(_answer, (int, float)) and 0 < _answer <= 1.5, f"answer with a number (a ratio of norms), got {_answer!r}"
### BEGIN HIDDEN TESTS
_x_all, _labels = load_fashion_mnist("test")
_walk = LatentInterpolation(model, _x_all[int(torch.nonzero(_labels == 0)[0])], _x_all[int(torch.nonzero(_labels == 7)[0])])
_ratio = float(_walk.latents([0.5], "linear").norm() / (0.5 * (_walk.z_a.norm() + _walk.z_b.norm())))
assert abs(_answer - _ratio) < 0.1, (f"the widget's latents give {_ratio:.2f}. For nearly orthogonal z_a and z_b of "
                                     "equal norm r, |z(1/2)| = |z_a + z_b| / 2 = r / sqrt(2)")
### END HIDDEN TESTS
print("part 12b passed")

# %% [markdown]
# ## Summary
#
# * A multi-scale flow is a handful of invertible pieces, each with a log-determinant that needs
#   no Jacobian: the logit, ActNorm, the $1\times1$ convolution and the affine coupling; the
#   squeeze and the factoring out only move numbers, at no cost in volume.
# * A wrong log-determinant need not show in samples or reconstructions, only in the
#   likelihood; autograd's Jacobian on a small input finds it.
# * The test figure averages probabilities over several dequantisation draws, in logarithms: an
#   estimate whose expected logarithm is a lower bound on $\log P(x)$ that tightens with more
#   draws.
# * Samples at $T < 1$ trade diversity for cleaner images ($T = 0$: one image); the exact
#   encoder makes interpolation start and end at the real images.
#
# ## References
#
# * H. Xiao, K. Rasul, R. Vollgraf (2017). *Fashion-MNIST: a novel image dataset for benchmarking
#   machine learning algorithms*. arXiv:1708.07747.
# * L. Dinh, J. Sohl-Dickstein, S. Bengio (2017). *Density estimation using Real NVP*. ICLR.
# * D. P. Kingma, P. Dhariwal (2018). *Glow: Generative flow with invertible 1x1 convolutions*. NeurIPS.
# * Y. Burda, R. Grosse, R. Salakhutdinov (2016). *Importance weighted autoencoders*. ICLR.
# * E. Hoogeboom, T. S. Cohen, J. M. Tomczak (2020). *Learning discrete distributions by
#   dequantization*. arXiv:2001.11235.

# %% tags=["nbval-ignore-output"]
print(f"notebook ran in {time.perf_counter() - T_START:.0f} s wall-clock, {time.process_time():.0f} s of CPU "
      f"(SMOKE={SMOKE}, device={DEVICE})")
