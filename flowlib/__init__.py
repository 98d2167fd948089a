"""flowlib: the small normalizing-flow library the course is built on.

The data flows one way: data -> layers -> models -> training / metrics -> plots / widgets.
Every layer follows one contract (see :mod:`flowlib.core`)::

    z, logdet = layer(x)            # data -> latent, logdet = log|det dz/dx|
    x, logdet = layer.inverse(z)    # latent -> data, logdet = log|det dx/dz|
"""

from flowlib import (
    actnorm,
    convnets,
    coupling,
    dequantize,
    distributions,
    elementwise,
    image_models,
    linear,
    models,
    multiscale,
    nets,
    permutations,
    planar,
    reversible,
)
from flowlib.core import (
    Compose,
    Flow,
    FlowInputError,
    FlowModel,
    Inverse,
    layer_classes,
    register_layer,
)
from flowlib.distributions import DiagonalGaussian, StandardNormal

__version__ = "0.1.0"

__all__ = [
    "Compose",
    "DiagonalGaussian",
    "Flow",
    "FlowInputError",
    "FlowModel",
    "Inverse",
    "StandardNormal",
    "actnorm",
    "convnets",
    "coupling",
    "dequantize",
    "distributions",
    "elementwise",
    "image_models",
    "layer_classes",
    "linear",
    "models",
    "multiscale",
    "nets",
    "permutations",
    "planar",
    "register_layer",
    "reversible",
]
