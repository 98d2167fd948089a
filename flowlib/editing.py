"""Editing images in a flow's latent space: attributes, directions, and what each scale holds.

A flow's latent z = f(x) is a code of the whole image that can be changed and decoded exactly.
Kingma & Dhariwal (2018, section 5 and figure 5) edit faces this way: the *direction* of an
attribute is the mean latent of the training images that have it minus the mean of those that
do not, and x' = f^{-1}(f(x) + alpha d) adds (alpha > 0) or removes (alpha < 0) it. Here the
attributes are computed from the pixels of handwritten digits (:func:`stroke_thickness`,
:func:`slant`), so no labels are needed. Dinh et al. (2017, section 4.3 and figure 6) showed
what the scales of a multi-scale flow hold by resampling one scale's latents and keeping the
others (:func:`resample_scale`).

Images go in as grey levels 0..K-1 (as :mod:`flowlib.data` gives them) and come out as
continuous images in [0, 1] (the centre (k + 1/2) / K of each level's bin, see
:func:`flowlib.inpainting.to_unit`).

>>> bar = torch.zeros(1, 1, 12, 12)
>>> bar[..., 2:10, 5:7] = 255           # a vertical bar, 2 pixels wide, 8 long
>>> round(float(stroke_thickness(bar)), 3), abs(round(float(slant(bar)), 3))
(1.6, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, integer, number
from flowlib._modules import evaluating
from flowlib.core import FlowModel
from flowlib.inpainting import check_image_model, to_unit
from flowlib.multiscale import MultiScale

__all__ = ["stroke_thickness", "slant", "attribute_direction", "edit", "resample_scale"]


def _ink(images: Tensor, who: str) -> Tensor:
    """Ink weights in [0, 1], shape (n, H, W): the first channel over its own maximum grey level."""
    x = torch.as_tensor(images)
    if x.dim() == 4:
        x = x[:, 0]
    if x.dim() != 3:
        raise FlowInputError(f"{who}: expected images (n, C, H, W) or (n, H, W), got {tuple(x.shape)}")
    x = x.double()
    top = x.flatten(1).amax(1).clamp_min(1e-12)
    return x / top[:, None, None]


def stroke_thickness(images: Tensor, threshold: float = 0.5) -> Tensor:
    """The mean width of the strokes, in pixels: 2 A / P for the ink (pixels above ``threshold``
    of the image's maximum), A its area and P the length of its boundary (pixel edges between
    ink and background, the image's border counting as background).

    For a w x L bar, 2 w L / (2 w + 2 L) = w L / (w + L): w for long strokes, and it grows with
    the pen's width whatever the digit's length.
    """
    ink = (_ink(images, "stroke_thickness") > threshold).double()
    padded = torch.nn.functional.pad(ink, (1, 1, 1, 1))
    edges = ((padded[:, 1:, :] - padded[:, :-1, :]).abs().flatten(1).sum(1)
             + (padded[:, :, 1:] - padded[:, :, :-1]).abs().flatten(1).sum(1))
    area = ink.flatten(1).sum(1)
    return torch.where(edges > 0, 2 * area / edges.clamp_min(1), torch.zeros_like(area))


def slant(images: Tensor) -> Tensor:
    """The slant of the ink, as a shear: -mu11 / mu02 from the ink-weighted second moments
    (mu11 = E[(col - mean)(row - mean)], mu02 = E[(row - mean)^2]); 0 for an upright stroke,
    positive when the top leans to the right (rows count downwards), s for a bar sheared by
    col -> col + s (centre row - row)."""
    w = _ink(images, "slant")
    h, wd = w.shape[1:]
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, wd)
    cols = torch.arange(wd, dtype=torch.float64)[None, :].expand(h, wd)
    mass = w.flatten(1).sum(1).clamp_min(1e-12)
    r_mean = (w * rows).flatten(1).sum(1) / mass
    c_mean = (w * cols).flatten(1).sum(1) / mass
    dr = rows[None] - r_mean[:, None, None]
    dc = cols[None] - c_mean[:, None, None]
    mu11 = (w * dr * dc).flatten(1).sum(1) / mass
    mu02 = (w * dr ** 2).flatten(1).sum(1) / mass
    return -mu11 / mu02.clamp_min(1e-12)


def _encode(model: FlowModel, x: Tensor, context: object, who: str, batch: int = 256) -> Tensor:
    check_image_model(model, who)
    dtype = next(model.parameters()).dtype
    with evaluating(model):
        parts = []
        for i in range(0, x.shape[0], batch):
            c = context[i:i + batch] if isinstance(context, Tensor) and context.dim() > 0 else context
            parts.append(model.encode(to_unit(x[i:i + batch], model.grey_levels).to(dtype), c))
    return torch.cat(parts)


def attribute_direction(model: FlowModel, x: Tensor, has_attribute: Tensor, context: object = None) -> Tensor:
    """d = mean f(x) over the images with the attribute - mean f(x) over the others (Glow's recipe).

    ``x``: grey levels (n, C, H, W); ``has_attribute``: n booleans (e.g. ``slant(x) > slant(x).median()``),
    with both groups non-empty. Returns d with the latent's shape (C, H, W).
    """
    has = torch.as_tensor(has_attribute).bool().flatten()
    if has.numel() != x.shape[0] or not bool(has.any()) or bool(has.all()):
        raise FlowInputError(f"attribute_direction: expected {x.shape[0]} booleans with both groups "
                             f"non-empty, got {int(has.sum())} of {has.numel()} with the attribute")
    z = _encode(model, x, context, "attribute_direction")
    return z[has.to(z.device)].mean(0) - z[~has.to(z.device)].mean(0)


def edit(model: FlowModel, x: Tensor, direction: Tensor, alphas: Sequence[float],
         context: object = None) -> Tensor:
    """f^{-1}(f(x) + alpha d) for each alpha: shape (len(alphas), n, C, H, W), in [0, 1]."""
    z = _encode(model, x, context, "edit")
    d = direction.to(z)
    out = []
    with torch.no_grad(), evaluating(model):
        for a in alphas:
            a = number(a, "alpha", "edit")
            out.append(model.decode(z + a * d, context).clamp(0, 1))
    return torch.stack(out)


def resample_scale(model: FlowModel, x: Tensor, scale: int, temperature: float = 1.0,
                   generator: torch.Generator | None = None, context: object = None) -> Tensor:
    """Encode, draw scale ``scale``'s latents afresh (N(0, T^2)), keep every other scale, decode.

    Scales count from the finest (0, the first factored out) to the coarsest (L - 1, the top
    latent): resampling a fine scale changes details, the coarse one what the image shows
    (Dinh et al., 2017, figure 6). Returns images in [0, 1], shape (n, C, H, W).
    """
    multiscale = next((m for m in model.flow.modules() if isinstance(m, MultiScale)), None)
    if multiscale is None:
        raise FlowInputError(f"resample_scale: the model has no MultiScale flow (its flow is a "
                             f"{type(model.flow).__name__})")
    scale = integer(scale, "scale", "resample_scale", minimum=0)
    if scale >= multiscale.scales:
        raise FlowInputError(f"resample_scale: scale must be in 0..{multiscale.scales - 1}, got {scale}")
    temperature = number(temperature, "temperature", "resample_scale", minimum=0.0)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    z = _encode(model, x, context, "resample_scale")
    latents = multiscale.split_latents(z)
    fresh = torch.randn(latents[scale].shape, generator=g, dtype=z.dtype).to(z.device)
    latents[scale] = temperature * fresh
    with torch.no_grad(), evaluating(model):
        return model.decode(multiscale.merge_latents(latents), context).clamp(0, 1)
