"""BlackJAX HMC and NUTS transition kernels behind one small functional interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import jax.numpy as jnp

__all__ = ["AlgorithmSettings", "TransitionKernel", "build_kernel"]


class AlgorithmSettings(NamedTuple):
    """Static (hashable) settings of the transition kernel.

    `name` is `"nuts"` or `"hmc"`; `max_num_doublings` is NUTS' maximum tree depth;
    `num_integration_steps` is HMC's fixed number of leapfrog steps per transition;
    `divergence_threshold` is the energy error (nats) that marks a divergent transition.
    """

    name: str
    max_num_doublings: int = 10
    num_integration_steps: int = 0
    divergence_threshold: float = 1000.0


class TransitionKernel(NamedTuple):
    """`init(position, logdensity_fn) -> state`;
    `step(key, state, logdensity_fn, step_size, inverse_mass_matrix) -> (state, stats)`.

    `stats` holds scalars: `acceptance_rate`, `is_divergent`, `num_integration_steps`
    (gradient evaluations of the transition) and `tree_depth` (0 for HMC).
    """

    init: Callable[..., Any]
    step: Callable[..., Any]


def build_kernel(settings: AlgorithmSettings) -> TransitionKernel:
    """The BlackJAX kernel for `settings`, with the statistics we keep per transition."""
    if settings.name == "nuts":
        module, extra = blackjax.nuts, {"max_num_doublings": settings.max_num_doublings}
    elif settings.name == "hmc":
        module, extra = blackjax.hmc, {"num_integration_steps": settings.num_integration_steps}
    else:
        raise ValueError(f"algorithm must be 'nuts' or 'hmc', got {settings.name!r}")
    kernel = module.build_kernel(divergence_threshold=settings.divergence_threshold)

    def step(key, state, logdensity_fn, step_size, inverse_mass_matrix):
        state, info = kernel(key, state, logdensity_fn, step_size, inverse_mass_matrix, **extra)
        # HMC: a fixed number of leapfrog steps and no tree
        depth = getattr(info, "num_trajectory_expansions", 0)
        steps = getattr(info, "num_integration_steps", settings.num_integration_steps)
        return state, {
            "acceptance_rate": info.acceptance_rate,
            "is_divergent": info.is_divergent,
            "num_integration_steps": jnp.asarray(steps, jnp.int32),
            "tree_depth": jnp.asarray(depth, jnp.int32),
        }

    return TransitionKernel(module.init, step)
