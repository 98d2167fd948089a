"""flowlib: the small normalizing-flow library the course is built on.

The data flows one way: data -> layers -> models -> training / metrics -> plots / widgets.
Every layer follows one contract (see :mod:`flowlib.core`)::

    z, logdet = layer(x)            # data -> latent, logdet = log|det dz/dx|
    x, logdet = layer.inverse(z)    # latent -> data, logdet = log|det dx/dz|
"""

from flowlib import (
    actnorm,
    autoregressive,
    convnets,
    coupling,
    dequantize,
    distributions,
    elementwise,
    grading,
    image_models,
    linear,
    models,
    multiscale,
    nets,
    permutations,
    planar,
    reversible,
    splines,
    transformers,
)
from flowlib.core import Compose, Flow, FlowInputError, FlowModel, Inverse
from flowlib.distributions import DiagonalGaussian, StandardNormal
from flowlib.models import glow, nice, planar_flow, radial_flow, realnvp
from flowlib.train import FitResult, TrainingError, fit

__version__ = "0.1.0"

__all__ = [
    "Compose",
    "FitResult",
    "TrainingError",
    "fit",
    "glow",
    "nice",
    "planar_flow",
    "radial_flow",
    "realnvp",
    "DiagonalGaussian",
    "Flow",
    "FlowInputError",
    "FlowModel",
    "Inverse",
    "StandardNormal",
    "actnorm",
    "autoregressive",
    "convnets",
    "coupling",
    "dequantize",
    "distributions",
    "elementwise",
    "grading",
    "image_models",
    "linear",
    "models",
    "multiscale",
    "nets",
    "permutations",
    "planar",
    "reversible",
    "splines",
    "transformers",
]
