"""Posterior predictives from MCMC draws: log-mean-exp of likelihoods, equal-weight mixtures."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from probnet.distributions import NormalMixture
from probnet.samplers.program import FunctionKey

__all__ = ["normal_mixture_over_draws", "posterior_predictive_log_prob"]


def _merge_draw_axes(draws: PyTree, batch_ndim: int, name: str = "draws") -> tuple[PyTree, int]:
    leaves = jax.tree.leaves(draws)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array")
    shapes = {tuple(jnp.shape(x)[:batch_ndim]) for x in leaves}
    if len(shapes) != 1 or any(len(s) != batch_ndim for s in shapes):
        raise ValueError(
            f"every leaf of {name} must share its {batch_ndim} leading draw axes "
            f"([chains, samples] by default), got leading shapes {sorted(shapes)}"
        )
    num = math.prod(shapes.pop())
    return jax.tree.map(lambda x: jnp.reshape(x, (num, *jnp.shape(x)[batch_ndim:])), draws), num


@functools.partial(jax.jit, static_argnums=(0,))
def _log_mean_exp(loglik: FunctionKey, flat_draws, args):
    values = jax.vmap(lambda d: loglik.fn(d, *args))(flat_draws)
    return jax.nn.logsumexp(values, axis=0) - jnp.log(values.shape[0])


def posterior_predictive_log_prob(
    loglik_fn: Callable[..., Float[Array, "*points"]],
    draws: PyTree[Float[Array, "chains samples ..."]],
    *args: PyTree,
    batch_ndim: int = 2,
) -> Float[Array, "*points"]:
    """log p(y* | D) ≈ log (1/S) Σ_s p(y* | θ_s), in nats.

    `loglik_fn(theta, *args)` gives log p(y* | θ) for one draw (a scalar, or per point
    `[*points]` for pointwise predictive densities). `draws` has `batch_ndim` leading draw axes
    (`[chains, samples]` as in `SamplerResult.draws`). Computed with `logsumexp` (stable);
    compiled once per `loglik_fn` and shapes.
    """
    flat, _ = _merge_draw_axes(draws, batch_ndim)
    return _log_mean_exp(FunctionKey(loglik_fn), flat, tuple(args))


def normal_mixture_over_draws(
    means: Float[Array, "draws ..."], variances: Float[Array, "draws ..."]
) -> NormalMixture:
    """Equal-weight mixture of per-draw Gaussian predictives, batch shape `[*points]`.

    `means` and `variances` are the predictive mean and variance of y* under each draw.
    """
    if jnp.shape(means) != jnp.shape(variances) or jnp.ndim(means) < 1:
        raise ValueError(
            "means and variances must share a shape [draws, *points], got "
            f"{jnp.shape(means)} and {jnp.shape(variances)}"
        )
    loc = jnp.moveaxis(jnp.asarray(means), 0, -1)
    scale = jnp.sqrt(jnp.moveaxis(jnp.asarray(variances), 0, -1))
    return NormalMixture(jnp.zeros_like(loc), loc, scale)
