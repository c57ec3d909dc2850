"""Gaussian predictive distributions: a batch of Normals and a batch of Normal mixtures."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri
from jaxtyping import Array, Float, PRNGKeyArray

from probnet._checks import as_float_array, check_positive, is_traced
from probnet.distributions.base import AbstractDistribution

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(value, loc, scale):
    """Elementwise log N(value; loc, scale^2)."""
    z = (value - loc) / scale
    return -0.5 * z**2 - jnp.log(scale) - _LOG_SQRT_2PI


class Normal(AbstractDistribution):
    """Independent Normals N(loc, scale^2), batch shape the broadcast of `loc` and `scale`."""

    loc: Float[Array, "..."] = eqx.field(converter=as_float_array)
    scale: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        if not is_traced(self.scale):
            check_positive("scale", self.scale)

    @classmethod
    def from_mean_variance(cls, mean, variance) -> "Normal":
        """Normal with the given mean and variance."""
        return cls(mean, jnp.sqrt(variance))

    @property
    def batch_shape(self):
        return jnp.broadcast_shapes(jnp.shape(self.loc), jnp.shape(self.scale))

    def log_prob(self, value):
        return normal_log_prob(value, self.loc, self.scale)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        eps = jax.random.normal(key, tuple(shape) + self.batch_shape, self.loc.dtype)
        return self.loc + self.scale * eps

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(self.scale**2, self.batch_shape)

    def cdf(self, value):
        return ndtr((value - self.loc) / self.scale)

    def quantile(self, q):
        return self.loc + self.scale * ndtri(q)


class NormalMixture(AbstractDistribution):
    """Batch of mixtures of Normals; components along the last axis.

    `logits`, `loc` and `scale` have shape `batch_shape + [K]`; weights are `softmax(logits)`.
    """

    logits: Float[Array, "... K"] = eqx.field(converter=as_float_array)
    loc: Float[Array, "... K"] = eqx.field(converter=as_float_array)
    scale: Float[Array, "... K"] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        if jnp.ndim(self.loc) < 1:
            raise ValueError(f"loc must have shape [..., K], got {jnp.shape(self.loc)}")
        if not is_traced(self.scale):
            check_positive("scale", self.scale)

    @property
    def batch_shape(self):
        return self._shape[:-1]

    @property
    def _shape(self):
        """`batch_shape + [K]`, with K broadcast over logits, loc and scale."""
        shapes = (jnp.shape(self.logits), jnp.shape(self.loc), jnp.shape(self.scale))
        return jnp.broadcast_shapes(*shapes)

    @property
    def log_weights(self) -> Float[Array, "... K"]:
        """Normalised log mixture weights."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    def log_prob(self, value):
        comp = normal_log_prob(jnp.asarray(value)[..., None], self.loc, self.scale)
        return jax.nn.logsumexp(self.log_weights + comp, axis=-1)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        # components by inverting the cumulative weights (O(log K) per draw, where Gumbel-max
        # over all K components cost O(K))
        k1, k2 = jax.random.split(key)
        shape, num_components = tuple(shape), self._shape[-1]
        size, full = math.prod(shape), shape + self.batch_shape
        cum = jnp.cumsum(jnp.exp(self.log_weights), axis=-1)
        cum = jnp.broadcast_to(cum, self._shape).reshape(-1, num_components)  # [B, K]
        u = jax.random.uniform(k1, (cum.shape[0], size), cum.dtype) * cum[:, -1:]
        idx = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cum, u)
        idx = jnp.minimum(idx, num_components - 1)  # [B, size]

        def pick(param):
            flat = jnp.broadcast_to(param, self._shape).reshape(-1, num_components)
            chosen = jnp.take_along_axis(flat, idx, axis=-1)  # [B, size]
            return jnp.moveaxis(chosen, 0, -1).reshape(full)

        loc, scale = pick(self.loc), pick(self.scale)
        return loc + scale * jax.random.normal(k2, full, loc.dtype)

    @property
    def mean(self):
        return jnp.sum(jnp.exp(self.log_weights) * self.loc, axis=-1)

    @property
    def variance(self):
        # centred on the mean: E[x²] − E[x]² loses everything when |loc| ≫ scale
        w = jnp.exp(self.log_weights)
        centred = self.loc - self.mean[..., None]
        return jnp.sum(w * (self.scale**2 + centred**2), axis=-1)

    def cdf(self, value):
        z = (jnp.asarray(value)[..., None] - self.loc) / self.scale
        return jnp.sum(jnp.exp(self.log_weights) * ndtr(z), axis=-1)

    def quantile(self, q, num_iterations: int = 80):
        """Quantile by bisection between the extreme component quantiles."""
        q = jnp.asarray(q)
        lo = jnp.min(self.loc - 40 * self.scale, axis=-1)
        hi = jnp.max(self.loc + 40 * self.scale, axis=-1)
        lo, hi = jnp.broadcast_arrays(lo + 0 * q, hi + 0 * q)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < q
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, num_iterations, body, (lo, hi))
        return 0.5 * (lo + hi)
