"""Scale mixtures of neural-network Gaussian processes (Lee, Yun, Yang and Lee, ICLR 2022).

- NNGP kernels by closed-form layer recursions: `serial(Dense(W_std, b_std), ReLU(), ...)`
  returns an `NNGPKernel` (an `AbstractKernel`, usable by `probnet.gp`); layers `Dense`,
  `ReLU`, `Erf`, `Conv`, `Flatten`.
- `finite_network`: a random finite network of the same architecture (Equinox module), with
  the last-layer variance optionally drawn from a scale prior.
- `ScaleMixtureNNGP(kernel, scale_prior, noise)`: the NNGP (no prior), the Student-t process
  (inverse-gamma prior, closed form) or any other scale prior (importance sampling or NUTS
  over log σ²); `condition`, `predict`, `log_marginal_likelihood`, `fit`.
- `class_probabilities(posterior, key, x_target)`: argmax class probabilities for
  classification by regression on one-hot labels.
"""

from probnet.nngp.finite import FiniteNetwork, finite_network
from probnet.nngp.kernels import (
    AbstractLayer,
    Conv,
    Dense,
    Erf,
    Flatten,
    NNGPKernel,
    NNGPState,
    ReLU,
    serial,
)
from probnet.nngp.model import ScaleMixtureNNGP, ScaleMixturePosterior, class_probabilities

__all__ = [
    "AbstractLayer",
    "Conv",
    "Dense",
    "Erf",
    "FiniteNetwork",
    "Flatten",
    "NNGPKernel",
    "NNGPState",
    "ReLU",
    "ScaleMixtureNNGP",
    "ScaleMixturePosterior",
    "class_probabilities",
    "finite_network",
    "serial",
]
