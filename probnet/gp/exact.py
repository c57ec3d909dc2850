"""Exact Gaussian-process regression: posterior predictive, marginal likelihood, sampling.

Contexts may carry a boolean `context_mask` `[N]`: masked-out points are removed exactly (their
rows and columns of the Gram matrix are replaced by the identity and their targets by zero), so
one compiled function serves every context size.
"""

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
)
from probnet.kernels import AbstractKernel
from probnet.linalg import cho_solve, cholesky, solve_lower


class GPPosterior(eqx.Module):
    """The GP conditioned on a (masked) context: factor `chol` of K + σ²I and `alpha` = K⁻¹y."""

    kernel: AbstractKernel
    noise_variance: Float[Array, ""]
    x_context: Float[Array, "N D"]
    chol: Float[Array, "N N"]
    alpha: Float[Array, " N"]
    mask: Bool[Array, " N"]

    def cross(self, x_target: Float[Array, "M D"]) -> Float[Array, "N M"]:
        """k(X, x*) with masked-out context rows zeroed."""
        return jnp.where(self.mask[:, None], self.kernel.gram(self.x_context, x_target), 0.0)

    def mean(self, x_target: Float[Array, "M D"]) -> Float[Array, " M"]:
        return self.cross(x_target).T @ self.alpha

    def variance(self, x_target: Float[Array, "M D"], include_noise: bool = True):
        v = solve_lower(self.chol, self.cross(x_target))
        prior = self.kernel.diag(x_target)
        # floored at the round-off of the difference (eps·prior), not 0: a latent variance
        # that rounds to 0 at a context point gave zero scales and NaN class probabilities
        var = jnp.maximum(prior - jnp.sum(v**2, axis=0), jnp.finfo(prior.dtype).eps * prior)
        return var + self.noise_variance if include_noise else var

    def covariance(self, x_target: Float[Array, "M D"], include_noise: bool = True):
        v = solve_lower(self.chol, self.cross(x_target))
        cov = self.kernel.gram(x_target, x_target) - v.T @ v
        if include_noise:
            cov = cov + self.noise_variance * jnp.eye(x_target.shape[0], dtype=cov.dtype)
        return cov

    def log_marginal_likelihood(self, y_context: Float[Array, " N"]) -> Float[Array, ""]:
        y = jnp.where(self.mask, y_context, 0.0)
        n = jnp.sum(self.mask)
        return (
            -0.5 * jnp.dot(y, self.alpha)
            - jnp.sum(jnp.log(jnp.diagonal(self.chol)))
            - 0.5 * n * jnp.log(2 * jnp.pi)
        )


def condition(
    kernel: AbstractKernel,
    noise_variance,
    x_context: Float[Array, "N D"],
    y_context: Float[Array, " N"],
    context_mask: Bool[Array, " N"] | None = None,
    jitter: float = 0.0,
) -> GPPosterior:
    """Condition a zero-mean GP with Gaussian noise of variance `noise_variance` on a context.

    `jitter` is the relative diagonal jitter the factorisation starts from (`linalg.cholesky`;
    only the context's real points set its scale and receive it).
    """
    noise_variance = as_float_array(noise_variance)
    n = x_context.shape[0]
    mask = jnp.ones((n,), bool) if context_mask is None else context_mask
    gram = kernel.gram(x_context, x_context) + noise_variance * jnp.eye(n, dtype=x_context.dtype)
    both = mask[:, None] & mask[None, :]
    gram = jnp.where(both, gram, jnp.eye(n, dtype=gram.dtype))
    chol = cholesky(gram, jitter, mask=mask)
    alpha = cho_solve(chol, jnp.where(mask, y_context, 0.0))
    return GPPosterior(kernel, noise_variance, x_context, chol, alpha, mask)


def _checked_condition(kernel, noise_variance, x_context, y_context, x_target, context_mask):
    noise_variance = check_positive("noise_variance", as_float_array(noise_variance))
    x_context, y_context = check_data(x_context, y_context, "x_context", "y_context")
    x_target = check_inputs_shape("x_target", x_target)
    if x_target.shape[1] != x_context.shape[1]:
        raise ValueError(
            f"x_target and x_context must have the same number of features D, got x_target "
            f"{x_target.shape} and x_context {x_context.shape}"
        )
    kernel.check_features(x_target.shape[1])
    mask = check_mask("context_mask", context_mask, x_context.shape[0])
    return condition(kernel, noise_variance, x_context, y_context, mask), x_target


def predict(
    kernel: AbstractKernel,
    noise_variance,
    x_context: Float[Array, "N D"],
    y_context: Float[Array, " N"],
    x_target: Float[Array, "M D"],
    include_noise: bool = True,
    context_mask: Bool[Array, " N"] | None = None,
) -> tuple[Float[Array, " M"], Float[Array, " M"]]:
    """Posterior predictive mean and variance at `x_target`.

    `include_noise` adds the observation noise (the predictive of a noisy y*); otherwise the
    latent f* variance. With zero context points this is the prior.
    """
    post, x_target = _checked_condition(
        kernel, noise_variance, x_context, y_context, x_target, context_mask
    )
    return post.mean(x_target), post.variance(x_target, include_noise)


def predict_covariance(
    kernel: AbstractKernel,
    noise_variance,
    x_context: Float[Array, "N D"],
    y_context: Float[Array, " N"],
    x_target: Float[Array, "M D"],
    include_noise: bool = True,
    context_mask: Bool[Array, " N"] | None = None,
) -> tuple[Float[Array, " M"], Float[Array, "M M"]]:
    """Posterior predictive mean `[M]` and full covariance `[M, M]` at `x_target`."""
    post, x_target = _checked_condition(
        kernel, noise_variance, x_context, y_context, x_target, context_mask
    )
    return post.mean(x_target), post.covariance(x_target, include_noise)


def log_marginal_likelihood(
    kernel: AbstractKernel,
    noise_variance,
    x: Float[Array, "N D"],
    y: Float[Array, " N"],
    context_mask: Bool[Array, " N"] | None = None,
) -> Float[Array, ""]:
    """log p(y | X, θ) of the (masked) data under the GP with Gaussian noise, in nats."""
    post, _ = _checked_condition(kernel, noise_variance, x, y, x[:0], context_mask)
    return post.log_marginal_likelihood(y)


def sample_prior(
    key: PRNGKeyArray,
    kernel: AbstractKernel,
    x: Float[Array, "N D"],
    num_samples: int = 1,
    noise_variance=0.0,
) -> Float[Array, "S N"]:
    """`num_samples` draws of f(x) (plus noise of variance `noise_variance`), shape `[S, N]`."""
    x = check_inputs_shape("x", x)
    kernel.check_features(x.shape[1])
    check_count("num_samples", num_samples)
    noise_variance = check_positive(
        "noise_variance", as_float_array(noise_variance), allow_zero=True
    )
    cov = kernel(x, x) + noise_variance * jnp.eye(x.shape[0], dtype=x.dtype)
    chol = cholesky(cov)
    eps = jax.random.normal(key, (num_samples, x.shape[0]), x.dtype)
    return eps @ chol.T


def sample_posterior(
    key: PRNGKeyArray,
    kernel: AbstractKernel,
    noise_variance,
    x_context: Float[Array, "N D"],
    y_context: Float[Array, " N"],
    x_target: Float[Array, "M D"],
    num_samples: int = 1,
    include_noise: bool = False,
    context_mask: Bool[Array, " N"] | None = None,
) -> Float[Array, "S M"]:
    """Joint posterior draws of f(x_target) (or noisy y*), shape `[S, M]`."""
    post, x_target = _checked_condition(
        kernel, noise_variance, x_context, y_context, x_target, context_mask
    )
    mean, cov = post.mean(x_target), post.covariance(x_target, include_noise)
    # k** − VᵀV carries round-off of order eps·k**, far above the posterior variance near the
    # context in float32 (eigenvalues of −1e-6 against variances of 1e-5): a Cholesky factor
    # needs jitter that inflates those variances (~2x), so the factor is the symmetric square
    # root with the round-off's negative eigenvalues set to 0
    eigenvalues, vectors = jnp.linalg.eigh(0.5 * (cov + cov.T))
    factor = vectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))
    eps = jax.random.normal(key, (num_samples, x_target.shape[0]), mean.dtype)
    return mean + eps @ factor.T
