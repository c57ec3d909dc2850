"""Distribution Transformer: a Gaussian-mixture prior and data in, a Gaussian-mixture posterior out.

Whittle, Ziomek, Rawling, Osborne (arXiv 2502.02463). `DistributionTransformer` is the model,
`dt_loss` its training objective on `probnet.priors.GMMPosteriorTasks`, `filter` /
`exact_filter` sequential inference, and `probnet.dt.evaluation` the comparisons with the exact
posterior, moment-matched and prior floors, and NUTS.
"""

from probnet.dt.filtering import exact_filter, filter
from probnet.dt.loss import dt_loss
from probnet.dt.model import DistributionTransformer

__all__ = ["DistributionTransformer", "dt_loss", "exact_filter", "filter"]
