"""Distributions of positive or bounded scalars: hyperpriors, input distributions, scale priors.

Each has `log_prob`, `sample(key, shape)`, `cdf`, `mean` and `variance`, so it can serve as a
hyperprior of a prior, as the distribution of a prior's inputs, or as a scale prior.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammainc, gammaincc, gammaln
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import as_float_array, check_finite, check_positive, is_traced
from probnet.distributions.base import AbstractDistribution


def _check_positive_fields(module, *names):
    for name in names:
        value = getattr(module, name)
        if not is_traced(value):
            check_positive(name, value)


class _Scalar(AbstractDistribution):
    """Shared batch shape for the parameter-broadcast scalar families below."""

    @property
    def batch_shape(self):
        arrays = [x for x in jax.tree_util.tree_leaves(self) if hasattr(x, "shape")]
        return jnp.broadcast_shapes(*(jnp.shape(x) for x in arrays))


class Uniform(_Scalar):
    """U(low, high)."""

    low: Float[Array, "..."] = eqx.field(converter=as_float_array)
    high: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        if not (is_traced(self.low) or is_traced(self.high)) and not jnp.all(self.high > self.low):
            raise ValueError(f"Uniform needs high > low, got low={self.low}, high={self.high}")

    def log_prob(self, value):
        inside = (value >= self.low) & (value <= self.high)
        return jnp.where(inside, -jnp.log(self.high - self.low), -jnp.inf)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return jax.random.uniform(key, full, self.low.dtype, self.low, self.high)

    def cdf(self, value):
        return jnp.clip((value - self.low) / (self.high - self.low), 0.0, 1.0)

    def quantile(self, q):
        return self.low + q * (self.high - self.low)

    @property
    def mean(self):
        return jnp.broadcast_to(0.5 * (self.low + self.high), self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to((self.high - self.low) ** 2 / 12, self.batch_shape)


class LogUniform(_Scalar):
    """log x ~ U(log low, log high), for 0 < low < high."""

    low: Float[Array, "..."] = eqx.field(converter=as_float_array)
    high: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        _check_positive_fields(self, "low", "high")
        if not (is_traced(self.low) or is_traced(self.high)) and not jnp.all(self.high > self.low):
            raise ValueError(f"LogUniform needs high > low, got low={self.low}, high={self.high}")

    def _width(self):
        return jnp.log(self.high) - jnp.log(self.low)

    def log_prob(self, value):
        inside = (value >= self.low) & (value <= self.high)
        safe = jnp.where(inside, value, 1.0)
        return jnp.where(inside, -jnp.log(safe) - jnp.log(self._width()), -jnp.inf)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        u = jax.random.uniform(key, tuple(shape) + self.batch_shape, self.low.dtype)
        return self.low * jnp.exp(u * self._width())

    def cdf(self, value):
        safe = jnp.maximum(value, self.low)
        return jnp.clip((jnp.log(safe) - jnp.log(self.low)) / self._width(), 0.0, 1.0)

    def quantile(self, q):
        return self.low * jnp.exp(q * self._width())

    @property
    def mean(self):
        return jnp.broadcast_to((self.high - self.low) / self._width(), self.batch_shape)

    @property
    def variance(self):
        second = (self.high**2 - self.low**2) / (2 * self._width())
        return jnp.broadcast_to(second - self.mean**2, self.batch_shape)


# From these concentrations (or degrees of freedom) on, float32 densities switch to forms that
# avoid cancelling large terms (thresholds per dtype; the Student-t cdf and log-gamma ratios of
# `scale.py` use the same): the plain forms lose whole nats in float32, not in float64 below 1e5
_LARGE = {jnp.dtype(jnp.float32): 30.0, jnp.dtype(jnp.float64): 1e5}


def _large(value, dtype) -> Bool[Array, "..."]:
    return value >= _LARGE.get(jnp.dtype(dtype), 30.0)


def _standard_gamma_log_prob(a, w):
    """log density of Gamma(a, rate 1) at w > 0. For large a, Stirling's form
    ½ log(a/2π) − stirlerr(a) + a·(log1p(u) − u) − log w with u = w/a − 1: the plain
    a·log w − w − lgamma(a) cancels terms of order a (0.04 to 0.09 nats lost at a = 1e5 in
    float32, depending on the rate)."""
    plain = (a - 1) * jnp.log(w) - w - gammaln(a)
    large = _large(a, jnp.result_type(a, w))
    big_a = jnp.where(large, a, 1e3)
    u = jnp.where(large, w / big_a - 1.0, 0.0)  # harmless where unused (no NaN gradients)
    small = jnp.abs(u) < 0.1
    su = jnp.where(small, u, 0.0)
    coeffs = (1 / 9, -1 / 8, 1 / 7, -1 / 6, 1 / 5, -1 / 4, 1 / 3, -1 / 2)
    series = 0.0
    for c in coeffs:
        series = series * su + c
    lu = jnp.where(small, 0.5, u)
    log1pmx = jnp.where(small, su**2 * series, jnp.log1p(lu) - lu)  # log1p(u) − u
    inv = 1.0 / big_a
    stirlerr = inv * (1 / 12 - inv**2 * (1 / 360 - inv**2 / 1260))
    log_w = jnp.log(jnp.where(large, w, 1.0))
    stirling = 0.5 * jnp.log(big_a / (2 * jnp.pi)) - stirlerr + big_a * log1pmx - log_w
    return jnp.where(large, stirling, plain)


class Gamma(_Scalar):
    """Gamma(concentration, rate): density ∝ x^(concentration-1) exp(-rate x)."""

    concentration: Float[Array, "..."] = eqx.field(converter=as_float_array)
    rate: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        _check_positive_fields(self, "concentration", "rate")

    def log_prob(self, value):
        safe = jnp.where(value > 0, value, 1.0)
        lp = jnp.log(self.rate) + _standard_gamma_log_prob(self.concentration, self.rate * safe)
        return jnp.where(value > 0, lp, -jnp.inf)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return jax.random.gamma(key, self.concentration, full, self.rate.dtype) / self.rate

    def cdf(self, value):
        return gammainc(self.concentration, self.rate * jnp.maximum(value, 0.0))

    @property
    def mean(self):
        return jnp.broadcast_to(self.concentration / self.rate, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(self.concentration / self.rate**2, self.batch_shape)


class InverseGamma(_Scalar):
    """Inverse-gamma IG(concentration α, scale β): density ∝ x^(-α-1) exp(-β / x)."""

    concentration: Float[Array, "..."] = eqx.field(converter=as_float_array)
    scale: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        _check_positive_fields(self, "concentration", "scale")

    def log_prob(self, value):
        # the Gamma(α, rate β) density of 1/x, times the Jacobian 1/x²
        safe = jnp.where(value > 0, value, 1.0)
        standard = _standard_gamma_log_prob(self.concentration, self.scale / safe)
        lp = jnp.log(self.scale) + standard - 2 * jnp.log(safe)
        return jnp.where(value > 0, lp, -jnp.inf)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return self.scale / jax.random.gamma(key, self.concentration, full, self.scale.dtype)

    def cdf(self, value):
        safe = jnp.where(value > 0, value, 1.0)
        return jnp.where(value > 0, gammaincc(self.concentration, self.scale / safe), 0.0)

    @property
    def mean(self):
        a = self.concentration
        return jnp.broadcast_to(jnp.where(a > 1, self.scale / (a - 1), jnp.inf), self.batch_shape)

    @property
    def variance(self):
        a, b = self.concentration, self.scale
        var = jnp.where(a > 2, b**2 / ((a - 1) ** 2 * (a - 2)), jnp.inf)
        return jnp.broadcast_to(var, self.batch_shape)


class Discrete(AbstractDistribution):
    """A distribution on a finite set of `values` [M] with probabilities `probs` [M]."""

    values: Float[Array, " M"] = eqx.field(converter=as_float_array)
    probs: Float[Array, " M"] = eqx.field(converter=as_float_array)

    def __init__(self, values, probs=None):
        self.values = values
        values = jnp.asarray(values)
        self.probs = jnp.full(values.shape, 1.0 / values.shape[0]) if probs is None else probs

    def __check_init__(self):
        if jnp.ndim(self.values) != 1 or jnp.shape(self.values) != jnp.shape(self.probs):
            raise ValueError(
                f"values and probs must both have shape [M], got {jnp.shape(self.values)} "
                f"and {jnp.shape(self.probs)}"
            )
        if not is_traced(self.probs):
            if not (jnp.all(self.probs >= 0) and jnp.abs(jnp.sum(self.probs) - 1) < 1e-5):
                raise ValueError(f"probs must be >= 0 and sum to 1, got {self.probs}")
        if not is_traced(self.values):
            check_finite("values", self.values)

    @property
    def batch_shape(self):
        return ()

    def log_prob(self, value):
        hit = jnp.asarray(value)[..., None] == self.values
        return jnp.log(jnp.sum(jnp.where(hit, self.probs, 0.0), axis=-1))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        idx = jax.random.categorical(key, jnp.log(self.probs), shape=tuple(shape))
        return self.values[idx]

    def cdf(self, value):
        below = self.values <= jnp.asarray(value)[..., None]
        return jnp.sum(jnp.where(below, self.probs, 0.0), axis=-1)

    @property
    def mean(self):
        return jnp.sum(self.probs * self.values)

    @property
    def variance(self):
        return jnp.sum(self.probs * (self.values - self.mean) ** 2)
