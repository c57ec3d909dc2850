"""Bayesian linear regression prior, with its exact posterior predictive."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import (
    as_float_array,
    check_count,
    check_data,
    check_inputs_shape,
    check_mask,
    check_positive,
    is_traced,
)
from probnet.distributions import AbstractDistribution, Normal, Uniform
from probnet.linalg import cho_solve, cholesky, solve_lower
from probnet.priors._draw import check_inputs, draw_inputs
from probnet.priors.base import AbstractPrior, Task


class LinearPrior(AbstractPrior):
    """Tasks y = φ(x)ᵀw + ε with w ~ N(0, weight_variance·I), ε ~ N(0, noise_variance).

    φ(x) = [1, x] with `bias=True`, else x; x ~ `inputs`.
    """

    num_features: int = eqx.field(static=True)
    weight_variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    noise_variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.1)
    bias: bool = eqx.field(static=True, default=True)
    inputs: AbstractDistribution = eqx.field(default_factory=lambda: Uniform(-1.0, 1.0))

    def __check_init__(self):
        check_count("num_features", self.num_features)
        for name in ("weight_variance", "noise_variance"):
            if not is_traced(getattr(self, name)):
                check_positive(name, getattr(self, name))
        check_inputs(self.inputs, self.num_features)

    def features(self, x: Float[Array, "N D"]) -> Float[Array, "N P"]:
        """The design matrix φ(x)."""
        if self.bias:
            return jnp.concatenate([jnp.ones_like(x[:, :1]), x], axis=1)
        return x

    def sample_task(self, key: PRNGKeyArray, num_points: int) -> Task:
        k_x, k_w, k_e = jax.random.split(key, 3)
        x = draw_inputs(k_x, self.inputs, num_points, self.num_features)
        phi = self.features(x)
        w = jnp.sqrt(self.weight_variance) * jax.random.normal(k_w, phi.shape[1:], x.dtype)
        noise = jnp.sqrt(self.noise_variance) * jax.random.normal(k_e, (num_points,), x.dtype)
        return Task(x, phi @ w + noise)

    @property
    def has_exact_predictive(self) -> bool:
        return True

    def posterior(self, x_context, y_context, context_mask=None):
        """Posterior of w: mean `[P]` and Cholesky factor of the precision A `[P, P]`."""
        phi = self.features(x_context)
        if context_mask is not None:
            phi = jnp.where(context_mask[:, None], phi, 0.0)
            y_context = jnp.where(context_mask, y_context, 0.0)
        p = phi.shape[1]
        precision = phi.T @ phi / self.noise_variance + jnp.eye(p) / self.weight_variance
        chol = cholesky(precision)
        mean = cho_solve(chol, phi.T @ y_context / self.noise_variance)
        return mean, chol

    def predictive(
        self,
        x_context: Float[Array, "N D"],
        y_context: Float[Array, " N"],
        x_target: Float[Array, "M D"],
        context_mask: Bool[Array, " N"] | None = None,
    ) -> Normal:
        """N(φ*ᵀm, φ*ᵀA⁻¹φ* + σ²) with A = ΦᵀΦ/σ² + I/σ_w², m = A⁻¹Φᵀy/σ²."""
        x_context, y_context = check_data(
            x_context, y_context, "x_context", "y_context", self.num_features
        )
        x_target = check_inputs_shape("x_target", x_target, self.num_features)
        context_mask = check_mask("context_mask", context_mask, x_context.shape[0])
        mean, chol = self.posterior(x_context, y_context, context_mask)
        phi_t = self.features(x_target)
        v = solve_lower(chol, phi_t.T)
        return Normal.from_mean_variance(phi_t @ mean, jnp.sum(v**2, 0) + self.noise_variance)
