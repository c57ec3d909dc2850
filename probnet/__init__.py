"""probnet: probabilistic modelling and amortized Bayesian inference in JAX."""

from probnet import distributions, gp, kernels, linalg, priors

__version__ = "0.1.0"

__all__ = ["distributions", "gp", "kernels", "linalg", "priors"]
