"""A prior that draws each task from one of several priors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probnet._checks import as_float_array, check_positive, is_traced
from probnet.priors.base import AbstractPrior, Task


class MixturePrior(AbstractPrior):
    """Each task comes from `priors[i]` with probability `weights[i]` (uniform by default)."""

    priors: tuple[AbstractPrior, ...]
    weights: Float[Array, " P"] = eqx.field(converter=as_float_array)
    num_features: int = eqx.field(static=True)

    def __init__(self, priors, weights=None):
        priors = tuple(priors)
        if not priors or not all(isinstance(p, AbstractPrior) for p in priors):
            raise ValueError("priors must be a non-empty sequence of probnet priors")
        features = {p.num_features for p in priors}
        if len(features) != 1:
            raise ValueError(f"all priors must have the same num_features, got {features}")
        self.priors = priors
        self.weights = jnp.full(len(priors), 1.0 / len(priors)) if weights is None else weights
        self.num_features = features.pop()

    def __check_init__(self):
        if jnp.shape(self.weights) != (len(self.priors),):
            raise ValueError(
                f"weights must have shape [{len(self.priors)}], got {jnp.shape(self.weights)}"
            )
        if not is_traced(self.weights):
            check_positive("weights", self.weights, allow_zero=True)
            if not np.sum(np.asarray(self.weights)) > 0:
                raise ValueError("weights must not all be zero")

    def sample_task(self, key: PRNGKeyArray, num_points: int) -> Task:
        k_choice, *keys = jax.random.split(key, len(self.priors) + 1)
        choice = jax.random.categorical(k_choice, jnp.log(self.weights))
        tasks = [p.sample_task(k, num_points) for p, k in zip(self.priors, keys, strict=True)]
        return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves)[choice], *tasks)
