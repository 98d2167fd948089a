"""What the image widgets ask of a model, checked once: a flow model of images, seen from outside.

The widgets use only a model's public API: ``encode`` (z = f(x)), ``decode`` (x = f^{-1}(z)),
``event_shape``, ``base.latent`` (the latent of fixed noise at a temperature) and, for images
given as grey levels, ``grey_levels``. They never reach into ``model.flow`` and never change the
model: every call runs inside :func:`flowlib._modules.evaluating`.
"""

from __future__ import annotations

from torch import nn

from flowlib._checks import FlowInputError

__all__ = ["image_model", "grey_levels", "figure_size"]


def image_model(model: object, who: str) -> tuple[int, int, int]:
    """Check that ``model`` is a flow model of images (C = 1 or 3); return its event shape (C, H, W)."""
    if not isinstance(model, nn.Module) or not all(callable(getattr(model, name, None))
                                                   for name in ("encode", "decode")):
        raise FlowInputError(f"{who}: expected a flow model (a flowlib FlowModel, with encode and decode), "
                             f"got {type(model).__name__}")
    shape = tuple(int(s) for s in getattr(model, "event_shape", ()))
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise FlowInputError(f"{who}: expected a model of images (1 or 3 channels, height, width), "
                             f"got event shape {shape}")
    return shape  # type: ignore[return-value]


def grey_levels(model: object) -> int | None:
    """The number of grey levels K the model's data have (an ImageFlowModel's), or None."""
    # ``grey_levels`` is the name; ``levels`` the old one, read only where the new one is missing.
    if hasattr(model, "grey_levels"):
        return model.grey_levels
    return getattr(model, "levels", None)


def figure_size(pixels_h: int, pixels_w: int, inches: float) -> tuple[float, float]:
    """A figure whose longer side is ``inches``, in the grid's aspect ratio (plus a title strip)."""
    scale = inches / max(pixels_h, pixels_w)
    return max(1.5, pixels_w * scale), max(1.5, pixels_h * scale) + 0.35
