"""The course's interactive widgets: one canvas, one file per widget.

Every widget draws one matplotlib figure once and, on each move of a control, redraws only its
data and shows the picture as a PNG (or JPEG) in an ``ipywidgets.Image``: no interactive
backend needed (:mod:`flowlib.widgets.canvas`). Widgets only read the models they show,
through their public API (``encode``, ``decode``, ``base.latent``), and never change them.

* :class:`ChangeOfVariables1D` (lecture 1): p_X(x) = p_Z(f(x)) |f'(x)| for a monotone f of
  :mod:`flowlib.elementwise`, its samples and its integral read live.
* :class:`PlanarFlow2D` (lecture 2): planar and radial flows (Rezende & Mohamed, 2015) stacked
  1..K times, their density on a grid, and what happens when a planar layer is not invertible.
* :class:`ShearAndScale2D` (lecture 3): an additive coupling shearing a shape, area kept; NICE's scaling.
* :class:`MasksAndSqueeze` (lecture 4): a coupling's mask and the squeeze, which pixels condition which.
* :class:`DequantizationBound` (lecture 4): noise width vs the bound on the discrete log-likelihood.
* :class:`TemperatureGrid` (lecture 5): samples x = f^{-1}(z) at temperature T from fixed noise.
* :class:`LatentInterpolation` (lecture 5): the decoded path between the latents of two images.
* :class:`SplineKnots` (lecture 6): a spline's knots and slopes under sliders, its derivative and density.
* :class:`AttributeSlider` (lecture 7): images moved along a latent direction, f^{-1}(f(x) + alpha d).
* :class:`ConvergenceMap` (lecture 9): a log-normal convergence map under sliders for sigma_8 and Omega_m.
"""

from flowlib.viz import tile_images
from flowlib.widgets.attribute import AttributeSlider
from flowlib.widgets.bases_1d import BASES_1D, MAPS_1D, Base1D, Map1D
from flowlib.widgets.canvas import Canvas, ControlledUpdates
from flowlib.widgets.change_of_variables import ChangeOfVariables1D
from flowlib.widgets.dequantization import DequantizationBound
from flowlib.widgets.interpolation import LatentInterpolation
from flowlib.widgets.lensing import ConvergenceMap
from flowlib.widgets.masks import MasksAndSqueeze
from flowlib.widgets.planar import PlanarFlow2D
from flowlib.widgets.shear import ShearAndScale2D
from flowlib.widgets.spline import SplineKnots
from flowlib.widgets.temperature import PAPER_TEMPERATURES, TemperatureGrid

__all__ = [
    "ChangeOfVariables1D",
    "PlanarFlow2D",
    "ShearAndScale2D",
    "MasksAndSqueeze",
    "DequantizationBound",
    "TemperatureGrid",
    "LatentInterpolation",
    "SplineKnots",
    "AttributeSlider",
    "ConvergenceMap",
    "PAPER_TEMPERATURES",
    "BASES_1D",
    "MAPS_1D",
    "Base1D",
    "Map1D",
    "Canvas",
    "ControlledUpdates",
    "tile_images",
]
