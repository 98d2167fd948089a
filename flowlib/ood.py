"""Out-of-distribution scores for flows, and the AUROC that measures them.

A flow gives every input a likelihood, and it is tempting to call the inputs it finds unlikely
"out of distribution". Nalisnick et al. (2019, "Do deep generative models know what they don't
know?") showed that this fails: a Glow trained on Fashion-MNIST gives MNIST digits a HIGHER
likelihood than its own test images. Likelihoods are dominated by how simple an image is
(large uniform backgrounds are cheap to encode), not by what it shows. Three scores here, higher
meaning "more likely out of distribution":

- :func:`nll_score`: bits/dim, -log2 P(x) / D (the naive score);
- :func:`complexity_corrected_score`: bits/dim minus the image's complexity L(x), the length in
  bits/dim of a lossless compression of the image (Serra et al., 2020, "Input complexity and
  out-of-distribution detection with likelihood-based generative models"): an image that the
  flow explains no better than a generic compressor is suspect, however simple it is;
- :func:`likelihood_ratio_score`: bits/dim under the model minus bits/dim under a *background*
  model that captures only generic image statistics (Schirrmeister et al., 2020; Ren et al.,
  2019): the ratio cancels what both models find easy;
- :func:`typicality_score`: the distance of -log p(x) from the mean training value (Nalisnick et
  al., 2019b, "Detecting out-of-distribution inputs to deep generative models using
  typicality"): samples of a high-dimensional model are typical, not likely.

:func:`auroc` is the probability that a random out-of-distribution input scores higher than a
random in-distribution one (ties count half): 0.5 is chance, 1 is perfect, and below 0.5 the
score points the wrong way.

>>> auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.4]))
0.8333333333333334
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, integer
from flowlib.image_models import ImageFlowModel
from flowlib.metrics import bits_per_dim_each

__all__ = ["auroc", "roc_curve", "nll_score", "complexity_bits", "complexity_corrected_score",
           "perturb_pixels", "likelihood_ratio_score", "typicality_score"]


def _scores(scores: Tensor, name: str) -> Tensor:
    s = torch.as_tensor(scores).detach().double().flatten().cpu()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise FlowInputError(f"auroc: {name} must be a non-empty tensor of finite scores, got "
                             f"{s.numel()} values ({int((~torch.isfinite(s)).sum())} not finite)")
    return s


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for "out" against "in", higher score = "out":

        AUROC = P(s_out > s_in) + P(s_out = s_in) / 2,

    the Mann-Whitney statistic U / (n_in n_out), computed from the ranks of the pooled scores
    (average ranks for ties), exactly and in O(n log n).
    """
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    pooled = torch.cat([s_in, s_out]).numpy()
    # Average ranks (1-based) over runs of equal values: a run of c values ending at rank r has rank
    # r - (c - 1) / 2.
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


def roc_curve(scores_in: Tensor, scores_out: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) over every threshold, "out" = positive.

    At a threshold t the rates are the fractions of "in" and "out" scores >= t; the thresholds are
    the distinct pooled scores from the highest down, so the curve starts at (0, 0) and ends at
    (1, 1), and the trapezoids under it add up to :func:`auroc`. Counted by sorting, O(n log n).
    """
    s_in, s_out = _scores(scores_in, "scores_in").numpy(), _scores(scores_out, "scores_out").numpy()
    thresholds = np.unique(np.concatenate([s_in, s_out]))[::-1]

    def at_least(scores: np.ndarray) -> np.ndarray:  # the fraction of scores >= each threshold
        return (len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left")) / len(scores)

    return np.concatenate([[0.0], at_least(s_in)]), np.concatenate([[0.0], at_least(s_out)])


def nll_score(model: ImageFlowModel, x: Tensor, samples: int = 1, batch: int = 256) -> Tensor:
    """Bits/dim of each image, shape (n,): the naive out-of-distribution score

        nll(x) = -log2 P(x) / D,   P(x) ~ (1/S) sum_s p(x + u_s) / q(u_s | x),  u_s ~ q,

    with the model's dequantization q (uniform: q = 1) and S = ``samples`` draws (S = 1: the
    usual variational bound; S > 1: the importance-weighted one, closer to the exact value).
    Evaluated in batches of ``batch`` images, in evaluation mode, without gradients.
    """
    if not isinstance(model, ImageFlowModel):
        raise FlowInputError(f"nll_score: expected an ImageFlowModel, got {type(model).__name__}")
    return bits_per_dim_each(model, x, samples=samples, batch=integer(batch, "batch", "nll_score"))


def complexity_bits(images: Tensor, grey_levels: int = 256, level: int = 9) -> Tensor:
    """L(x): the length of each image compressed without loss, in bits per pixel, shape (n,).

    Each image's grey levels (0..K-1, one byte each) are filtered as PNG's "Sub" filter does
    (each byte minus its left neighbour, modulo 256: smooth rows become runs of small values) and
    compressed by DEFLATE (zlib, ``level`` 9), the compressor inside PNG; Serra et al. (2020)
    report that the choice of lossless compressor matters little. The zlib header and checksum
    (6 bytes) are not counted.
    """
    x = torch.as_tensor(images)
    if x.dim() < 3:
        raise FlowInputError(f"complexity_bits: expected images (n, C, H, W) or (n, H, W), got "
                             f"{tuple(x.shape)}")
    levels = x.detach().cpu().round().clamp(0, grey_levels - 1).to(torch.int64).numpy()
    d = int(np.prod(levels.shape[1:]))
    out = []
    for image in levels.reshape(levels.shape[0], -1, levels.shape[-1]):
        rows = image.astype(np.int16)
        filtered = np.concatenate([rows[:, :1], np.diff(rows, axis=1)], axis=1) % 256
        packed = zlib.compress(filtered.astype(np.uint8).tobytes(), level)
        out.append(8.0 * (len(packed) - 6) / d)
    return torch.tensor(out, dtype=torch.float64)


def complexity_corrected_score(model: ImageFlowModel, x: Tensor, samples: int = 1) -> Tensor:
    """S(x) = bits/dim under the model - L(x) (:func:`complexity_bits`), Serra et al. (2020).

    Negative where the model compresses the image better than the generic compressor: the more
    negative, the more the image looks like the training data, so a high S flags "out".
    """
    return nll_score(model, x, samples=samples) - complexity_bits(x, model.grey_levels)


def perturb_pixels(images: Tensor, rate: float = 0.15, grey_levels: int = 256,
                   generator: torch.Generator | None = None) -> Tensor:
    """The training inputs of a background model (Ren et al., 2019): each pixel, with probability
    ``rate``, replaced by a grey level drawn uniformly from 0..K-1; same shape and dtype.

    A model trained on such images still learns what is common to all of them (dark, smooth
    backgrounds, the local correlations of neighbouring pixels) but much less of the shapes
    that the noise breaks up: the "background" statistics that :func:`likelihood_ratio_score`
    divides out. The rate is a hyperparameter (Ren et al. tune it on validation data).
    """
    x = torch.as_tensor(images)
    if not 0 <= float(rate) <= 1:
        raise FlowInputError(f"perturb_pixels: rate must lie in [0, 1], got {rate}")
    replace = torch.rand(x.shape, generator=generator) < float(rate)
    noise = torch.randint(0, grey_levels, x.shape, generator=generator).to(x.dtype)
    return torch.where(replace.to(x.device), noise.to(x.device), x)


def likelihood_ratio_score(model: ImageFlowModel, background: nn.Module, x: Tensor,
                           samples: int = 1) -> Tensor:
    """bits/dim under ``model`` minus bits/dim under ``background``, shape (n,):

        LLR(x) = -[log2 p_model(x) - log2 p_background(x)] / D,

    high where the model explains the image no better than the background does.

    The background: a much smaller flow trained on the SAME data with a fraction of the pixels
    replaced by noise (:func:`perturb_pixels`), as Ren et al. (2019, "Likelihood ratios for
    out-of-distribution detection") do for their background PixelCNN. Both models find simple
    images (mostly black, smooth) likely, since that is what the likelihood of either is
    dominated by; the noise and the small size keep the background from learning the semantic
    content, so the ratio keeps what the full model has learned beyond low-level statistics.
    Schirrmeister et al. (2020) use instead a model of a general image domain (e.g. Tiny
    Images); we use Ren et al.'s choice because it needs no other data set, and no image of the
    out-of-distribution kind is ever seen by either model. (:func:`complexity_corrected_score` is
    the same test with a lossless compressor as the background, Serra et al., 2020.)
    """
    return nll_score(model, x, samples=samples) - nll_score(background, x, samples=samples)


def typicality_score(model: ImageFlowModel, x: Tensor, train_bpd: Tensor | float, group: int = 1,
                     samples: int = 1) -> Tensor:
    """| mean bits/dim of a group of M inputs - the mean training bits/dim |, one per group:

        T(x_1..x_M) = | (1/M) sum_m nll(x_m) - mean_train nll |.

    Nalisnick et al. (2019b): in high dimension the model's samples concentrate on a shell whose
    log-likelihood is close to minus the entropy, estimated by the training set's mean; inputs
    far from it on EITHER side (too likely as well as too unlikely) are atypical. ``group`` M > 1
    averages consecutive inputs first (their test is on batches); the result has n // M entries.
    """
    group = integer(group, "group", "typicality_score")
    bpd = nll_score(model, x, samples=samples)
    n = (bpd.numel() // group) * group
    if n == 0:
        raise FlowInputError(f"typicality_score: {bpd.numel()} inputs make no group of {group}")
    reference = float(torch.as_tensor(train_bpd, dtype=torch.float64).mean())
    return (bpd[:n].reshape(-1, group).mean(1) - reference).abs()
