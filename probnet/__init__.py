"""probnet: probabilistic modelling and amortized Bayesian inference in JAX."""

from probnet import (
    distributions,
    dt,
    gp,
    kernels,
    linalg,
    nngp,
    pfn,
    priors,
    samplers,
    training,
)
from probnet.training import Trainer, TrainerConfig, load_run

__version__ = "0.1.0"

__all__ = [
    "Trainer",
    "TrainerConfig",
    "distributions",
    "dt",
    "gp",
    "kernels",
    "linalg",
    "load_run",
    "nngp",
    "pfn",
    "priors",
    "samplers",
    "training",
]
