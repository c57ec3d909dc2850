"""Prior-Data Fitted Networks: one forward pass for the posterior predictive of a prior."""

from probnet.pfn.build import pfn_for_prior
from probnet.pfn.evaluation import bayesian_mlp_of, nll_by_context
from probnet.pfn.loss import pfn_loss
from probnet.pfn.model import PFN, TransformerLayers

__all__ = [
    "PFN",
    "TransformerLayers",
    "bayesian_mlp_of",
    "nll_by_context",
    "pfn_for_prior",
    "pfn_loss",
]
