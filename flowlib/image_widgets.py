"""Deprecated: the image widgets live in :mod:`flowlib.widgets` (one file per widget).

``from flowlib.image_widgets import TemperatureGrid`` keeps working, with a DeprecationWarning
that names the new spelling, ``from flowlib.widgets import TemperatureGrid``. ``tile_images``
is now :func:`flowlib.viz.tile_images` and ``read_only`` is :func:`flowlib._modules.evaluating`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from flowlib._modules import evaluating
from flowlib.viz import tile_images
from flowlib.widgets import PAPER_TEMPERATURES, LatentInterpolation, TemperatureGrid

__all__ = ["TemperatureGrid", "LatentInterpolation", "PAPER_TEMPERATURES", "tile_images", "read_only"]

warnings.warn("flowlib.image_widgets is deprecated: import TemperatureGrid, LatentInterpolation and "
              "PAPER_TEMPERATURES from flowlib.widgets (and tile_images from flowlib.viz)",
              DeprecationWarning, stacklevel=2)


@contextmanager
def read_only(model: nn.Module) -> Iterator[None]:
    """Deprecated: use ``flowlib._modules.evaluating(model)`` (eval mode, no gradients, flags restored)."""
    warnings.warn("flowlib.image_widgets.read_only is deprecated: use flowlib._modules.evaluating",
                  DeprecationWarning, stacklevel=3)
    with evaluating(model):
        yield
