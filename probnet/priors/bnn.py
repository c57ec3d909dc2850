"""Bayesian-neural-network prior: functions drawn from randomly initialised MLPs (PFN paper)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from probnet._checks import check_count, check_positive, is_traced
from probnet.distributions import AbstractDistribution, LogUniform, Uniform
from probnet.priors._draw import check_inputs, draw, draw_inputs
from probnet.priors.base import AbstractPrior, Task

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "sin": jnp.sin,
}


class BNNPrior(AbstractPrior):
    """Tasks y = MLP(x) + ε from a randomly initialised MLP with a random architecture.

    Per task: hidden depth ~ U{min_depth..max_depth}, width ~ U{min_width..max_width}, an
    activation from `activations`, a weight scale σ_w ~ `weight_std` (weights ~ N(0, σ_w²/fan_in),
    biases ~ N(0, σ_w²)), and noise std ~ `noise_std`. Fixed values are allowed in place of
    distributions. Shapes stay static: narrower or shallower nets are masks on the largest one.
    """

    num_features: int = eqx.field(static=True)
    min_depth: int = eqx.field(static=True, default=1)
    max_depth: int = eqx.field(static=True, default=3)
    min_width: int = eqx.field(static=True, default=8)
    max_width: int = eqx.field(static=True, default=64)
    activations: tuple[str, ...] = eqx.field(
        static=True, converter=tuple, default=("relu", "tanh", "sigmoid")
    )
    weight_std: AbstractDistribution | float = eqx.field(
        default_factory=lambda: LogUniform(0.5, 2.0)
    )
    noise_std: AbstractDistribution | float = eqx.field(
        default_factory=lambda: LogUniform(0.01, 0.3)
    )
    inputs: AbstractDistribution = eqx.field(default_factory=lambda: Uniform(-1.0, 1.0))

    def __check_init__(self):
        check_count("num_features", self.num_features)
        check_count("min_depth", self.min_depth)
        check_count("min_width", self.min_width)
        if self.max_depth < self.min_depth or self.max_width < self.min_width:
            raise ValueError(
                f"need min_depth <= max_depth and min_width <= max_width, got depth "
                f"[{self.min_depth}, {self.max_depth}], width [{self.min_width}, {self.max_width}]"
            )
        unknown = [a for a in self.activations if a not in ACTIVATIONS]
        if not self.activations or unknown:
            raise ValueError(
                f"activations must be a non-empty tuple from {sorted(ACTIVATIONS)}, got "
                f"{self.activations}"
            )
        check_inputs(self.inputs, self.num_features)
        for name in ("weight_std", "noise_std"):
            value = getattr(self, name)
            if not isinstance(value, AbstractDistribution) and not is_traced(value):
                check_positive(name, value, allow_zero=name == "noise_std")  # noise-free is fine

    def sample_task(self, key: PRNGKeyArray, num_points: int) -> Task:
        keys = jax.random.split(key, 8)
        x = draw_inputs(keys[0], self.inputs, num_points, self.num_features)
        depth = jax.random.randint(keys[1], (), self.min_depth, self.max_depth + 1)
        width = jax.random.randint(keys[2], (), self.min_width, self.max_width + 1)
        act = jax.random.randint(keys[3], (), 0, len(self.activations))
        w_std = draw(keys[4], self.weight_std)
        noise_std = draw(keys[5], self.noise_std)
        active = (jnp.arange(self.max_width) < width).astype(x.dtype)
        branches = [ACTIVATIONS[a] for a in self.activations]

        def activate(z):
            return jax.lax.switch(act, branches, z) * active

        def layer_weights(k, fan_in, fan_out, fan_in_scale):
            kw, kb = jax.random.split(k)
            w = jax.random.normal(kw, (fan_in, fan_out), x.dtype) * w_std / jnp.sqrt(fan_in_scale)
            return w, jax.random.normal(kb, (fan_out,), x.dtype) * w_std

        hidden_keys = jax.random.split(keys[6], self.max_depth + 1)
        w, b = layer_weights(hidden_keys[0], self.num_features, self.max_width, self.num_features)
        h = activate(x @ w + b)
        for layer in range(1, self.max_depth):
            w, b = layer_weights(hidden_keys[layer], self.max_width, self.max_width, width)
            h = jnp.where(layer < depth, activate(h @ w + b), h)
        w, b = layer_weights(hidden_keys[-1], self.max_width, 1, width)
        f = (h @ w + b)[:, 0]
        return Task(x, f + noise_std * jax.random.normal(keys[7], (num_points,), x.dtype))
