"""A small model that exercises the engine until the model issues land: a pointwise MLP.

`PointwiseGaussian` predicts N(mean(x), scale(x)²) for each point of a task from its inputs
alone, and `gaussian_nll` trains it by the mean negative log-likelihood of the targets.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probnet.distributions import Normal


class PointwiseGaussian(eqx.Module):
    """x `[points, features]` ↦ independent Normals `[points]`, from a shared MLP."""

    mlp: eqx.nn.MLP
    min_scale: float = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        width: int = 32,
        depth: int = 2,
        min_scale: float = 1e-3,
        *,
        key: PRNGKeyArray,
    ):
        if in_features < 1 or width < 1 or depth < 0:
            raise ValueError(
                f"need in_features >= 1, width >= 1, depth >= 0; got in_features={in_features}, "
                f"width={width}, depth={depth}"
            )
        if not min_scale > 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.mlp = eqx.nn.MLP(in_features, 2, width, depth, activation=jax.nn.gelu, key=key)
        self.min_scale = float(min_scale)

    def __call__(self, x: Float[Array, "points features"]) -> Normal:
        out = jax.vmap(self.mlp)(x)
        return Normal(out[:, 0], self.min_scale + jax.nn.softplus(out[:, 1]))


def gaussian_nll(model, batch, key: PRNGKeyArray | None = None):
    """Mean Gaussian negative log-likelihood over tasks and points; metrics: mse.

    `batch` has `x [tasks, points, features]` and `y [tasks, points]` (a `probnet.priors.Task`).
    """
    del key
    predictive = jax.vmap(model)(batch.x)
    nll = -predictive.log_prob(batch.y)
    return jnp.mean(nll), {"mse": jnp.mean((predictive.mean - batch.y) ** 2)}
