"""Finite-width networks of the same architectures as the NNGP kernels, as Equinox modules.

`finite_network(kernel, key, num_features, width)` draws one network with weights
N(0, W_std²/fan_in) and biases N(0, b_std²) layer by layer, exactly the parameterisation whose
infinite-width limit is `kernel`. With a `scale_prior` the network's output is multiplied by
σ, σ² ~ scale_prior (the last-layer variance), so that given σ² the output covariance tends to
σ²·K: an inverse-gamma prior gives Student-t marginals. Draws are pure functions of the key, so
`jax.vmap` over keys gives an ensemble of networks.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probnet._checks import check_count
from probnet.distributions import AbstractDistribution
from probnet.nngp.kernels import NNGPKernel

__all__ = ["FiniteNetwork", "finite_network"]


class FiniteNetwork(eqx.Module):
    """A finite network: `net(x)` maps one input `[D]` to its outputs `[num_outputs]`."""

    layers: tuple
    output_scale: Float[Array, ""]
    input_shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, x: Float[Array, " D"]) -> Float[Array, " num_outputs"]:
        h = jnp.reshape(x, self.input_shape)
        for layer in self.layers:
            h = layer(h)
        return self.output_scale * h


def finite_network(
    kernel: NNGPKernel,
    key: PRNGKeyArray,
    num_features: int | None = None,
    width: int = 512,
    num_outputs: int = 1,
    scale_prior: AbstractDistribution | None = None,
) -> FiniteNetwork:
    """One random finite network of `kernel`'s architecture.

    Every Dense layer and every Conv layer has `width` units (channels), except the last
    parameterised layer, which has `num_outputs`. `num_features` (D) is needed for vector
    inputs; image kernels take it from their `input_shape`. With `scale_prior`, σ² is drawn from
    it and the output multiplied by σ (else σ = 1).
    """
    if not isinstance(kernel, NNGPKernel):
        raise ValueError(f"kernel must be an NNGPKernel (from serial), got {type(kernel).__name__}")
    width = check_count("width", width)
    num_outputs = check_count("num_outputs", num_outputs)
    if kernel.input_shape is not None:
        shape = tuple(kernel.input_shape)
    else:
        if num_features is None:
            raise ValueError("num_features (D) is required for a kernel with vector inputs")
        shape = (check_count("num_features", num_features),)
    input_shape = shape
    last = max((i for i, layer in enumerate(kernel.layers) if layer.has_parameters), default=-1)
    if last < 0:
        raise ValueError("the network has no Dense or Conv layer to draw weights for")
    widths = [num_outputs if i == last else width for i in range(len(kernel.layers))]
    sizes, probe = [], shape
    for layer, w in zip(kernel.layers, widths, strict=True):
        sizes.append(layer.num_finite_parameters(probe, w))
        probe = layer.finite_output_shape(probe, w)
    # One random draw for all parameters: cheap to compile, and the same key gives the same net.
    key_weights, key_scale = jax.random.split(key)
    noise = jax.random.normal(key_weights, (sum(sizes),), jnp.result_type(float))
    layers, start = [], 0
    for layer, w, size in zip(kernel.layers, widths, sizes, strict=True):
        finite, shape = layer.init_finite(noise[start : start + size], shape, w)
        layers.append(finite)
        start += size
    if len(shape) != 1:
        raise ValueError(f"the network's output must be flat, got shape {shape}")
    if scale_prior is None:
        scale = jnp.ones((), jnp.result_type(float))
    else:
        scale = jnp.sqrt(scale_prior.sample(key_scale))
    return FiniteNetwork(tuple(layers), scale, input_shape)
