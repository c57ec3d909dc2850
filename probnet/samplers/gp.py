"""Fully Bayesian GP regression: hyperparameters under priors, sampled with NUTS.

The kernel's `variance` and `lengthscale` and the `noise_variance` are sampled on the log
scale; the posterior predictive is the equal-weight mixture over draws of the exact GP
predictives (`probnet.gp`). The log density is a module-level function and the model is
passed to the sampler as data, so one compiled sampler serves every dataset and every prior
setting of the same shapes.
"""

from __future__ import annotations

import abc
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from probnet import gp
from probnet._checks import check_data, check_mask
from probnet.distributions import NormalMixture
from probnet.distributions.scalar import _standard_gamma_log_prob
from probnet.kernels import RBF, AbstractParametrisedKernel
from probnet.samplers.mcmc import nuts
from probnet.samplers.predictive import _merge_draw_axes, normal_mixture_over_draws
from probnet.samplers.result import SamplerResult

__all__ = [
    "AbstractHyperprior",
    "BayesianGP",
    "GammaPrior",
    "LogNormalPrior",
    "gp_logdensity",
]

LOG_BOUND = 20.0  # |log θ| beyond this (θ outside [2e-9, 5e8]) has zero posterior density


class AbstractHyperprior(eqx.Module):
    """A prior on a positive hyperparameter θ, evaluated as a density of log θ."""

    @abc.abstractmethod
    def log_prob_log(self, log_value: Float[Array, "*shape"]) -> Float[Array, ""]:
        """log p(log θ) summed over entries (Jacobian of θ -> log θ included), in nats."""

    @abc.abstractmethod
    def sample_log(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "*shape"]:
        """Draws of log θ."""


class LogNormalPrior(AbstractHyperprior):
    """θ ~ LogNormal(loc, scale), i.e. log θ ~ N(loc, scale²)."""

    loc: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=0.0)
    scale: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def __check_init__(self):
        if not isinstance(self.scale, jax.core.Tracer) and not bool(jnp.all(self.scale > 0)):
            raise ValueError(f"scale must be > 0, got {self.scale}")

    def log_prob_log(self, log_value):
        z = (log_value - self.loc) / self.scale
        return jnp.sum(-0.5 * z**2 - jnp.log(self.scale) - 0.5 * jnp.log(2 * jnp.pi))

    def sample_log(self, key, shape):
        return self.loc + self.scale * jax.random.normal(key, shape)


class GammaPrior(AbstractHyperprior):
    """θ ~ Gamma(concentration, rate) on the positive scale."""

    concentration: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=2.0)
    rate: Float[Array, ""] = eqx.field(converter=jnp.asarray, default=1.0)

    def __check_init__(self):
        for name in ("concentration", "rate"):
            value = getattr(self, name)
            if not isinstance(value, jax.core.Tracer) and not bool(jnp.all(value > 0)):
                raise ValueError(f"{name} must be > 0, got {value}")

    def log_prob_log(self, log_value):
        # log Gamma(θ; a, b) + log θ (Jacobian of θ = exp(log θ)), by the distributions' Gamma
        # density of bθ (Stirling's form at large a, where the plain a·log b − lgamma(a) +
        # a·log θ − bθ cancels), given log(bθ) so that θ may underflow
        a, b = self.concentration, self.rate
        w, log_w = b * jnp.exp(log_value), jnp.log(b) + log_value
        return jnp.sum(jnp.log(b) + _standard_gamma_log_prob(a, w, log_w) + log_value)

    def sample_log(self, key, shape):
        # loggamma: log of a gamma draw without underflow for small concentrations
        return jax.random.loggamma(key, self.concentration, shape) - jnp.log(self.rate)


class BayesianGP(eqx.Module):
    """GP regression with hyperpriors (final class).

    `kernel` is a template (`RBF`, `Matern52`, ...): its `lengthscale` shape (scalar or ARD
    `[D]`) is kept, its values are replaced by the sampled ones. Defaults: log-normal priors
    with lengthscale median 0.3, variance median 1 and noise-variance median 0.01, all with
    log-scale sd 1.
    """

    kernel: AbstractParametrisedKernel = eqx.field(default_factory=RBF)
    lengthscale_prior: AbstractHyperprior = eqx.field(
        default_factory=lambda: LogNormalPrior(math.log(0.3), 1.0)
    )
    variance_prior: AbstractHyperprior = eqx.field(default_factory=lambda: LogNormalPrior(0.0, 1.0))
    noise_variance_prior: AbstractHyperprior = eqx.field(
        default_factory=lambda: LogNormalPrior(math.log(0.01), 1.0)
    )

    def __check_init__(self):
        if not isinstance(self.kernel, AbstractParametrisedKernel):
            raise ValueError(
                "kernel must have variance and lengthscale (an AbstractParametrisedKernel such "
                f"as RBF), got {type(self.kernel).__name__}"
            )

    def with_hyperparameters(
        self, params: dict[str, Float[Array, "..."]]
    ) -> tuple[AbstractParametrisedKernel, Float[Array, ""]]:
        """`(kernel, noise_variance)` for one draw of the log hyperparameters."""
        kernel = eqx.tree_at(
            lambda k: (k.variance, k.lengthscale),
            self.kernel,
            (jnp.exp(params["log_variance"]), jnp.exp(params["log_lengthscale"])),
        )
        return kernel, jnp.exp(params["log_noise_variance"])

    def log_prior(self, params: dict[str, Float[Array, "..."]]) -> Float[Array, ""]:
        """log p(log ℓ, log σ_f², log σ_n²), in nats."""
        return (
            self.lengthscale_prior.log_prob_log(params["log_lengthscale"])
            + self.variance_prior.log_prob_log(params["log_variance"])
            + self.noise_variance_prior.log_prob_log(params["log_noise_variance"])
        )

    def sample_prior(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()) -> dict:
        """Draws of the log hyperparameters, leaves `shape + param_shape`."""
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "log_lengthscale": self.lengthscale_prior.sample_log(
                k1, tuple(shape) + jnp.shape(self.kernel.lengthscale)
            ),
            "log_variance": self.variance_prior.sample_log(k2, tuple(shape)),
            "log_noise_variance": self.noise_variance_prior.sample_log(k3, tuple(shape)),
        }

    def sample_posterior(
        self,
        key: PRNGKeyArray,
        x: Float[Array, "N D"],
        y: Float[Array, " N"],
        context_mask: Bool[Array, " N"] | None = None,
        num_chains: int = 4,
        **nuts_kwargs,
    ) -> SamplerResult:
        """NUTS over the log hyperparameters given the (masked) data.

        Draws are a dict of `[chains, samples, ...]` arrays keyed `log_lengthscale`,
        `log_variance`, `log_noise_variance`. Chains start from prior draws.
        """
        x, y, context_mask = _check_data(self, x, y, context_mask)
        init_key, run_key = jax.random.split(key)
        init = self.sample_prior(init_key, (num_chains,))
        init = jax.tree.map(lambda v: v.astype(x.dtype), init)
        return nuts(
            gp_logdensity,
            init,
            run_key,
            data=(self, x, y, context_mask),
            num_chains=num_chains,
            **nuts_kwargs,
        )

    def predictive(
        self,
        draws: PyTree,
        x_context: Float[Array, "N D"],
        y_context: Float[Array, " N"],
        x_target: Float[Array, "M D"],
        include_noise: bool = True,
        context_mask: Bool[Array, " N"] | None = None,
        batch_ndim: int = 2,
    ) -> NormalMixture:
        """Posterior predictive at `x_target`: equal-weight mixture of the GP predictives.

        Batch shape `[M]`, one component per draw; `include_noise` predicts y* rather than f*.
        """
        x_context, y_context, context_mask = _check_data(self, x_context, y_context, context_mask)
        x_target = jnp.asarray(x_target, x_context.dtype)
        if x_target.ndim != 2 or x_target.shape[1] != x_context.shape[1]:
            raise ValueError(
                f"x_target must be [M, {x_context.shape[1]}], got shape {x_target.shape}"
            )
        flat, _ = _merge_draw_axes(draws, batch_ndim)
        means, variances = _predict_draws(
            self, flat, x_context, y_context, x_target, context_mask, bool(include_noise)
        )
        return normal_mixture_over_draws(means, variances)


def _check_data(model: BayesianGP, x, y, context_mask):
    x, y = check_data(x, y)
    model.kernel.check_features(x.shape[1])
    return x, y, check_mask("context_mask", context_mask, x.shape[0])


def gp_logdensity(
    params: dict[str, Float[Array, "..."]],
    model: BayesianGP,
    x: Float[Array, "N D"],
    y: Float[Array, " N"],
    context_mask: Bool[Array, " N"] | None = None,
) -> Float[Array, ""]:
    """log p(θ) + log p(y | x, θ) for log hyperparameters `params` (unnormalised posterior).

    The marginal likelihood is `probnet.gp`'s exact one (via `gp.condition`, which skips the
    boundary checks that `gp.log_marginal_likelihood` would repeat at every leapfrog step).
    Log hyperparameters outside `[-LOG_BOUND, LOG_BOUND]` (or not finite) get log density -inf:
    a diverging trajectory may reach them, and exp() would overflow the Gram matrix.
    """
    inside = jnp.all(jnp.stack([jnp.all(jnp.abs(v) < LOG_BOUND) for v in jax.tree.leaves(params)]))
    safe = jax.tree.map(lambda v: jnp.where(inside, v, jnp.zeros_like(v)), params)
    kernel, noise_variance = model.with_hyperparameters(safe)
    posterior = gp.condition(kernel, noise_variance, x, y, context_mask)
    value = model.log_prior(safe) + posterior.log_marginal_likelihood(y)
    return jnp.where(inside, value, -jnp.inf)


@functools.partial(jax.jit, static_argnums=(6,))
def _predict_draws(model, flat, x_context, y_context, x_target, context_mask, include_noise):
    def one(params):
        kernel, noise_variance = model.with_hyperparameters(params)
        posterior = gp.condition(kernel, noise_variance, x_context, y_context, context_mask)
        return posterior.mean(x_target), posterior.variance(x_target, include_noise)

    return jax.vmap(one)(flat)
