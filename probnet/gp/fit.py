"""Type-II maximum likelihood: fit kernel hyperparameters and noise by maximising log p(y | θ)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float

from probnet._checks import as_float_array, check_count, check_data, check_mask, check_positive
from probnet.gp.exact import condition
from probnet.kernels import AbstractKernel


def fit_hyperparameters(
    kernel: AbstractKernel,
    noise_variance,
    x: Float[Array, "N D"],
    y: Float[Array, " N"],
    num_steps: int = 300,
    learning_rate: float = 0.1,
    context_mask: Bool[Array, " N"] | None = None,
    min_noise_variance: float = 1e-6,
) -> tuple[AbstractKernel, Float[Array, ""]]:
    """Maximise the log marginal likelihood over every positive parameter of `kernel` and the
    noise variance, by Adam on their logarithms, starting from the given values.

    Returns the fitted `(kernel, noise_variance)`. Pure and jit-compiled (a `lax.scan` over
    steps), so it can be vmapped over many datasets; the noise variance is kept above
    `min_noise_variance`.
    """
    check_count("num_steps", num_steps)
    check_positive("learning_rate", learning_rate)
    check_positive("min_noise_variance", min_noise_variance, allow_zero=True)
    x, y = check_data(x, y)
    kernel.check_features(x.shape[1])
    mask = check_mask("context_mask", context_mask, x.shape[0])
    noise_variance = check_positive(
        "noise_variance", as_float_array(noise_variance), allow_zero=True
    )
    params, static = eqx.partition(kernel, eqx.is_inexact_array)
    log_params = jax.tree_util.tree_map(jnp.log, params)
    log_noise = jnp.log(jnp.maximum(noise_variance - min_noise_variance, min_noise_variance))
    return _fit(
        static, (log_params, log_noise), x, y, mask, num_steps, learning_rate, min_noise_variance
    )


@eqx.filter_jit
def _fit(static, raw, x, y, mask, num_steps, learning_rate, min_noise_variance):
    def unpack(raw):
        log_params, log_noise = raw
        kernel = eqx.combine(jax.tree_util.tree_map(jnp.exp, log_params), static)
        return kernel, min_noise_variance + jnp.exp(log_noise)

    def loss(raw):
        kernel, noise = unpack(raw)
        return -condition(kernel, noise, x, y, mask).log_marginal_likelihood(y)

    optimiser = optax.adam(learning_rate)

    def step(carry, _):
        raw, state = carry
        value, grad = jax.value_and_grad(loss)(raw)
        updates, state = optimiser.update(grad, state, raw)
        return (optax.apply_updates(raw, updates), state), value

    (raw, _), _ = jax.lax.scan(step, (raw, optimiser.init(raw)), None, length=num_steps)
    return unpack(raw)
