"""HMC/NUTS on BlackJAX, compiled once per model and shape, chains vmapped or sharded.

- `nuts`, `hmc`: sample a log density `logdensity(position, *data)` or a NumPyro model;
  warmup (Stan window adaptation) and sampling are one cached XLA program.
- `SamplerResult`: draws `[chains, samples, ...]`, R-hat, bulk/tail ESS, divergences, timings.
- `diagnostics`: rank-normalised split R-hat, bulk/tail ESS, Monte Carlo standard errors.
- `posterior_predictive_log_prob`, `normal_mixture_over_draws`: predictives from draws.
- `BayesianGP` (fully Bayesian GP hyperparameters) and `BayesianMLP` (BNN regression).
"""

from probnet.samplers import diagnostics
from probnet.samplers.bnn import BayesianMLP
from probnet.samplers.gp import (
    AbstractHyperprior,
    BayesianGP,
    GammaPrior,
    LogNormalPrior,
    gp_logdensity,
)
from probnet.samplers.mcmc import hmc, nuts
from probnet.samplers.predictive import normal_mixture_over_draws, posterior_predictive_log_prob
from probnet.samplers.result import SamplerResult

__all__ = [
    "AbstractHyperprior",
    "BayesianGP",
    "BayesianMLP",
    "GammaPrior",
    "LogNormalPrior",
    "SamplerResult",
    "diagnostics",
    "gp_logdensity",
    "hmc",
    "normal_mixture_over_draws",
    "nuts",
    "posterior_predictive_log_prob",
]
