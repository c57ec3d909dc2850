"""Exact Gaussian processes: predictive, marginal likelihood, sampling, type-II ML."""

from probnet.gp.exact import (
    GPPosterior,
    condition,
    log_marginal_likelihood,
    predict,
    predict_covariance,
    sample_posterior,
    sample_prior,
)
from probnet.gp.fit import fit_hyperparameters

__all__ = [
    "GPPosterior",
    "condition",
    "fit_hyperparameters",
    "log_marginal_likelihood",
    "predict",
    "predict_covariance",
    "sample_posterior",
    "sample_prior",
]
