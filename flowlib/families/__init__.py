"""The other generative families beside flows, small enough to read, for side-by-side comparisons.

- :mod:`flowlib.families.vae`: the VAE (ELBO, reparameterisation), the IWAE bound, a flow posterior;
- :mod:`flowlib.families.gan`: the GAN (minimax and non-saturating losses) and WGAN-GP;
- :mod:`flowlib.families.flow_matching`: a continuous flow trained by flow matching, with exact
  log-likelihoods through the divergence of its velocity field;
- :mod:`flowlib.families.rbm`: the RBM, contrastive divergence, and log Z by annealed importance
  sampling (or exactly, for few hidden units).

Their samples are compared with the flows' by :func:`flowlib.metrics.energy_distance` and
:func:`flowlib.metrics.modes_covered`, which need no density.
"""

from flowlib.families.flow_matching import FlowMatching, divergence
from flowlib.families.gan import (
    GAN,
    critic_loss,
    discriminator_loss,
    fit_gan,
    generator_loss,
    gradient_penalty,
)
from flowlib.families.rbm import RBM
from flowlib.families.vae import VAE, importance_weighted_bound

__all__ = ["VAE", "GAN", "FlowMatching", "RBM", "divergence", "fit_gan", "discriminator_loss",
           "generator_loss", "critic_loss", "gradient_penalty", "importance_weighted_bound"]
