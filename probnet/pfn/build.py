"""Build a PFN for a prior: bar borders and input/target statistics from prior samples."""

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from probnet.distributions import bar_borders
from probnet.pfn.model import PFN
from probnet.priors import AbstractPrior


def pfn_for_prior(
    prior: AbstractPrior,
    key: PRNGKeyArray,
    num_bars: int = 100,
    emb_size: int = 128,
    ff_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_points: int = 32,
    num_border_tasks: int = 2000,
) -> PFN:
    """A PFN whose bar borders are quantiles of `num_border_tasks` prior datasets' targets
    (equal prior mass per bucket) and whose fixed normalisation is the prior's x and y mean and
    standard deviation. Deterministic given `key`."""
    k_data, k_model = jax.random.split(key)
    tasks = prior.sample(k_data, num_border_tasks, num_points)
    x = tasks.x.reshape(-1, prior.num_features)
    return PFN(
        k_model,
        bar_borders(tasks.y, num_bars),
        num_features=prior.num_features,
        emb_size=emb_size,
        ff_size=ff_size,
        num_layers=num_layers,
        num_heads=num_heads,
        x_loc=jnp.mean(x, 0),
        x_scale=jnp.std(x, 0) + 1e-6,
        y_loc=jnp.mean(tasks.y),
        y_scale=jnp.std(tasks.y) + 1e-6,
    )
