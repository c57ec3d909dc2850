"""Distributions: the predictive protocol, Normals and mixtures, and scalar (hyper)priors."""

from probnet.distributions.base import AbstractDistribution
from probnet.distributions.normal import Normal, NormalMixture, normal_log_prob
from probnet.distributions.scalar import Discrete, Gamma, InverseGamma, LogUniform, Uniform

__all__ = [
    "AbstractDistribution",
    "Discrete",
    "Gamma",
    "InverseGamma",
    "LogUniform",
    "Normal",
    "NormalMixture",
    "Uniform",
    "normal_log_prob",
]
