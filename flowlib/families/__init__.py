"""The other generative families beside flows, small enough to read, for side-by-side comparisons.

- :mod:`flowlib.families.vae`: the VAE (ELBO, reparameterisation), the IWAE bound, a flow posterior.
"""

from flowlib.families.vae import VAE

__all__ = ["VAE"]
