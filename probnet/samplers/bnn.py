"""Bayesian MLP regression as a log density, sampled with NUTS: the reference for BNN priors.

    y = MLP_θ(x) + ε,  ε ~ N(0, noise_std²),
    W_l ~ N(0, weight_std² / fan_in),  b_l ~ N(0, bias_std²)  (bias_std defaults to weight_std),

with a fixed architecture `num_features -> hidden_widths... -> 1`. This matches one
architecture of `probnet.priors.BNNPrior` (weights N(0, σ_w²/fan_in), biases N(0, σ_w²)).
Parameters are a list of `(W [fan_in, fan_out], b [fan_out])` pairs.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from probnet.distributions import NormalMixture
from probnet.priors.bnn import ACTIVATIONS  # the same activations as the BNN prior
from probnet.samplers.mcmc import nuts
from probnet.samplers.predictive import (
    _merge_draw_axes,
    normal_mixture_over_draws,
    posterior_predictive_log_prob,
)
from probnet.samplers.result import SamplerResult

__all__ = ["ACTIVATIONS", "BayesianMLP"]

Params = list[tuple[Float[Array, "fan_in fan_out"], Float[Array, " fan_out"]]]


def _normal_logpdf(x, std):
    return jnp.sum(-0.5 * (x / std) ** 2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi))


class BayesianMLP(eqx.Module):
    """A fixed-architecture Bayesian MLP for regression (final class; all fields static).

    Being hashable, `model.logdensity` selects one compiled sampler per architecture.
    """

    num_features: int = eqx.field(static=True)
    hidden_widths: tuple[int, ...] = eqx.field(static=True, default=(50,))
    activation: str = eqx.field(static=True, default="tanh")
    weight_std: float = eqx.field(static=True, default=1.0)
    noise_std: float = eqx.field(static=True, default=0.1)
    bias_std: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.num_features, bool) or not isinstance(self.num_features, int):
            raise ValueError(f"num_features must be an int >= 1, got {self.num_features!r}")
        if self.num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {self.num_features}")
        if not isinstance(self.hidden_widths, tuple) or not all(
            isinstance(w, int) and w >= 1 for w in self.hidden_widths
        ):
            raise ValueError(
                f"hidden_widths must be a tuple of ints >= 1, got {self.hidden_widths!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        for name in ("weight_std", "noise_std", "bias_std"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """`(num_features, *hidden_widths, 1)`."""
        return (self.num_features, *self.hidden_widths, 1)

    @property
    def num_params(self) -> int:
        """Number of weights and biases."""
        sizes = self.layer_sizes
        return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def _stds(self):
        bias_std = self.weight_std if self.bias_std is None else self.bias_std
        sizes = self.layer_sizes
        return [(self.weight_std / fan_in**0.5, bias_std) for fan_in in sizes[:-1]]

    def init_params(self, key: PRNGKeyArray, dtype=jnp.float32) -> Params:
        """One draw of the parameters from the prior."""
        sizes = self.layer_sizes
        keys = jax.random.split(key, 2 * (len(sizes) - 1))
        params = []
        for i, ((a, b), (w_std, b_std)) in enumerate(
            zip(zip(sizes[:-1], sizes[1:], strict=True), self._stds(), strict=True)
        ):
            w = w_std * jax.random.normal(keys[2 * i], (a, b), dtype)
            bias = b_std * jax.random.normal(keys[2 * i + 1], (b,), dtype)
            params.append((w, bias))
        return params

    def forward(self, params: Params, x: Float[Array, "N D"]) -> Float[Array, " N"]:
        """The network's output f_θ(x), shape `[N]`."""
        act = ACTIVATIONS[self.activation]
        h = x
        for w, b in params[:-1]:
            h = act(h @ w + b)
        w, b = params[-1]
        return (h @ w + b)[:, 0]

    def log_prior(self, params: Params) -> Float[Array, ""]:
        """log p(θ) under the Gaussian weight prior, in nats."""
        return sum(
            _normal_logpdf(w, w_std) + _normal_logpdf(b, b_std)
            for (w, b), (w_std, b_std) in zip(params, self._stds(), strict=True)
        )

    def log_likelihood(
        self, params: Params, x: Float[Array, "N D"], y: Float[Array, " N"]
    ) -> Float[Array, " N"]:
        """Pointwise log p(y_i | x_i, θ), shape `[N]`."""
        return -0.5 * ((y - self.forward(params, x)) / self.noise_std) ** 2 - jnp.log(
            self.noise_std * jnp.sqrt(2 * jnp.pi)
        )

    def logdensity(
        self, params: Params, x: Float[Array, "N D"], y: Float[Array, " N"]
    ) -> Float[Array, ""]:
        """Unnormalised log posterior log p(θ) + Σ_i log p(y_i | x_i, θ)."""
        return self.log_prior(params) + jnp.sum(self.log_likelihood(params, x, y))

    def sample_posterior(
        self,
        key: PRNGKeyArray,
        x: Float[Array, "N D"],
        y: Float[Array, " N"],
        num_chains: int = 4,
        **nuts_kwargs,
    ) -> SamplerResult:
        """NUTS on the posterior given `(x, y)`; chains start from prior draws."""
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.ndim != 2 or x.shape[1] != self.num_features or y.shape != x.shape[:1]:
            raise ValueError(
                f"x must be [N, {self.num_features}] and y [N], got x {x.shape} and y {y.shape}"
            )
        init_key, run_key = jax.random.split(key)
        init = jax.vmap(lambda k: self.init_params(k, x.dtype))(
            jax.random.split(init_key, num_chains)
        )
        return nuts(
            self.logdensity, init, run_key, data=(x, y), num_chains=num_chains, **nuts_kwargs
        )

    def predictive(
        self, draws: PyTree, x_target: Float[Array, "M D"], batch_ndim: int = 2
    ) -> NormalMixture:
        """Posterior predictive of y* at `x_target`: equal-weight mixture over draws, `[M]`."""
        flat, _ = _merge_draw_axes(draws, batch_ndim)
        means = jax.vmap(lambda p: self.forward(p, x_target))(flat)
        return normal_mixture_over_draws(means, jnp.full_like(means, self.noise_std**2))

    def predictive_log_prob(
        self,
        draws: PyTree,
        x_target: Float[Array, "M D"],
        y_target: Float[Array, " M"],
        batch_ndim: int = 2,
    ) -> Float[Array, " M"]:
        """Pointwise log p(y*_j | x*_j, D) ≈ log-mean-exp over draws, shape `[M]`."""
        return posterior_predictive_log_prob(
            self.log_likelihood, draws, x_target, y_target, batch_ndim=batch_ndim
        )
