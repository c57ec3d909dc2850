"""Prior-Data Fitted Networks: one forward pass for the posterior predictive of a prior."""

from probnet.pfn.loss import pfn_loss
from probnet.pfn.model import PFN, TransformerLayers

__all__ = ["PFN", "TransformerLayers", "pfn_loss"]
