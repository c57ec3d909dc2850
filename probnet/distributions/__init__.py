"""Distributions: the predictive protocol, Normals and mixtures, and scalar (hyper)priors."""

from probnet.distributions.bar import BarDistribution, bar_borders
from probnet.distributions.base import AbstractDistribution
from probnet.distributions.normal import Normal, NormalMixture, normal_log_prob
from probnet.distributions.scalar import Discrete, Gamma, InverseGamma, LogUniform, Uniform

__all__ = [
    "AbstractDistribution",
    "BarDistribution",
    "Discrete",
    "Gamma",
    "InverseGamma",
    "LogUniform",
    "Normal",
    "NormalMixture",
    "Uniform",
    "bar_borders",
    "normal_log_prob",
]
from probnet.distributions.scale import BurrXII, HalfCauchy, LogNormal, StudentT  # noqa: E402

__all__ += ["BurrXII", "HalfCauchy", "LogNormal", "StudentT"]
from probnet.distributions.gmm import GMM, fit_gmm, gmm_kl_divergence  # noqa: E402

__all__ += ["GMM", "fit_gmm", "gmm_kl_divergence"]
