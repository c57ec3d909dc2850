"""Shared helpers for priors: fixed-or-random parameters and input draws."""

import jax.numpy as jnp

from probnet._checks import as_float_array
from probnet.distributions import AbstractDistribution


def draw(key, value, shape=()):
    """A draw of shape `shape` from `value` if it is a distribution, else `value` itself."""
    if isinstance(value, AbstractDistribution):
        return value.sample(key, shape)
    return jnp.broadcast_to(as_float_array(value), shape)


def check_inputs(inputs: AbstractDistribution, num_features: int) -> None:
    """Raise unless `inputs` is a distribution of batch shape `()` or `[num_features]`."""
    if not isinstance(inputs, AbstractDistribution):
        raise ValueError(f"inputs must be a probnet distribution, got {type(inputs).__name__}")
    if inputs.batch_shape not in ((), (num_features,)):
        raise ValueError(
            f"inputs must have batch shape () or [num_features] = [{num_features}], got "
            f"{inputs.batch_shape}"
        )


def draw_inputs(key, inputs: AbstractDistribution, num_points: int, num_features: int):
    """Inputs `[num_points, num_features]` drawn i.i.d. from `inputs`."""
    if inputs.batch_shape == ():
        return inputs.sample(key, (num_points, num_features))
    return inputs.sample(key, (num_points,))
