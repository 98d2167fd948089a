"""Data sets: 2D toys with exact log-densities (:mod:`flowlib.data.toys`), images
(:mod:`flowlib.data.images`: the embedded 8x8 digits, MNIST and Fashion-MNIST; where their files
come from: :mod:`flowlib.data.files`) and simulated weak-lensing convergence maps
(:mod:`flowlib.data.lensing`, generated on the fly)."""

from flowlib.data.images import *  # noqa: F401,F403
from flowlib.data.images import __all__ as _images_all
from flowlib.data.images import __getattr__  # noqa: F401  (old constant names, with a DeprecationWarning)
from flowlib.data.toys import *  # noqa: F401,F403
from flowlib.data.toys import __all__ as _toys_all

__all__ = [*_toys_all, *_images_all]
