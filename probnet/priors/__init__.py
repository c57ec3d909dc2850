"""The prior-sampling pipeline: jit-compiled, vmapped, sharded samplers of regression tasks."""

from probnet.priors.base import AbstractPrior, Task, sample_tasks
from probnet.priors.bnn import ACTIVATIONS, BNNPrior
from probnet.priors.gp_prior import GPPrior
from probnet.priors.linear import LinearPrior
from probnet.priors.mixture import MixturePrior

__all__ = [
    "ACTIVATIONS",
    "AbstractPrior",
    "BNNPrior",
    "GPPrior",
    "LinearPrior",
    "MixturePrior",
    "Task",
    "sample_tasks",
]
from probnet.priors.gmm import (  # noqa: E402
    AbstractObservationModel,
    GMMMetaPrior,
    GMMPosteriorTasks,
    GMMTask,
    GridPosterior,
    LinearGaussianDynamics,
    LinearGaussianObservations,
    NormalVarianceObservations,
)

__all__ += [
    "AbstractObservationModel",
    "GMMMetaPrior",
    "GMMPosteriorTasks",
    "GMMTask",
    "GridPosterior",
    "LinearGaussianDynamics",
    "LinearGaussianObservations",
    "NormalVarianceObservations",
]
