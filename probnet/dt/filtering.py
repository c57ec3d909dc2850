"""Sequential inference: condition, push through linear-Gaussian dynamics, repeat."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from probnet.distributions.gmm import GMM
from probnet.priors.gmm import (
    AbstractObservationModel,
    LinearGaussianDynamics,
    LinearGaussianObservations,
)

__all__ = ["exact_filter", "filter"]


def _as_steps(observations, mask, obs_dim):
    y = jnp.asarray(observations)
    if y.ndim == 2 and obs_dim is not None and y.shape[1] == obs_dim:
        y = y[:, None, :]  # [T, m]: one observation per step
    elif y.ndim == 1:
        y = y[:, None, None]  # [T]: one scalar observation per step
    if y.ndim != 3:
        raise ValueError(f"observations must have shape [T, N, m] or [T, m], got {y.shape}")
    mask = jnp.ones(y.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != y.shape[:2]:
        raise ValueError(f"mask must have shape [T, N] = {y.shape[:2]}, got {mask.shape}")
    return y, mask


def filter(  # noqa: A001 - the public name of the issue
    model: Callable[[GMM, Array, Array], GMM],
    prior: GMM,
    observations: Float[Array, "T N m"],
    dynamics: LinearGaussianDynamics,
    mask: Bool[Array, "T N"] | None = None,
) -> GMM:
    """Filter with any update `model(prior, y, mask) -> GMM` (a `DistributionTransformer`).

    Step t conditions the current prior on `observations[t]` (`[N, m]`, or `[T, m]` for one
    observation per step), records the posterior, and pushes it through `dynamics` exactly, per
    component (Aμ, AΣAᵀ + Q), to give the prior of step t + 1. Returns the T filtering
    posteriors as one GMM whose leaves lead with T.
    """
    y, mask = _as_steps(observations, mask, getattr(model, "obs_dim", None))

    def step(current, inputs):
        y_t, mask_t = inputs
        posterior = model(current, y_t, mask_t)
        return dynamics.push(posterior), posterior

    _, posteriors = jax.lax.scan(step, prior, (y, mask))
    return posteriors


def exact_filter(
    prior: GMM,
    observations: Float[Array, "T N m"],
    dynamics: LinearGaussianDynamics,
    observation_model: AbstractObservationModel,
    mask: Bool[Array, "T N"] | None = None,
) -> GMM:
    """The exact mixture Kalman filter: `filter` with the exact update
    `observation_model.exact_posterior` (a linear-Gaussian model, so every step stays a GMM)."""
    if not isinstance(observation_model, LinearGaussianObservations):
        raise ValueError(
            "exact_filter needs LinearGaussianObservations (the posterior stays a GMM), got "
            f"{type(observation_model).__name__}"
        )
    y, mask = _as_steps(observations, mask, observation_model.obs_dim)
    return filter(observation_model.exact_posterior, prior, y, dynamics, mask)
