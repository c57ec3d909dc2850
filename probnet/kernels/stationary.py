"""Stationary kernels with a variance and shared or per-dimension (ARD) lengthscales, and the
linear kernel."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from probnet._checks import as_float_array, check_positive, is_traced
from probnet.kernels.base import AbstractKernel, _check_lengthscale_features


def _safe_norm(sq: Float[Array, "..."]) -> Float[Array, "..."]:
    """sqrt of a squared distance with a finite gradient at zero."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


class AbstractParametrisedKernel(AbstractKernel):
    """A kernel with a positive `variance` and positive `lengthscale` (scalar or `[D]`)."""

    variance: eqx.AbstractVar[Float[Array, ""]]
    lengthscale: eqx.AbstractVar[Float[Array, "*D"]]

    def __check_init__(self):
        for name in ("variance", "lengthscale"):
            value = getattr(self, name)
            if not is_traced(value):
                check_positive(name, value)
        if jnp.ndim(self.variance) != 0:
            raise ValueError(f"variance must be a scalar, got shape {jnp.shape(self.variance)}")
        if jnp.ndim(self.lengthscale) > 1:
            raise ValueError(
                f"lengthscale must be a scalar or shape [D], got {jnp.shape(self.lengthscale)}"
            )

    def check_features(self, num_features):
        _check_lengthscale_features(self.lengthscale, num_features)


class AbstractStationaryKernel(AbstractParametrisedKernel):
    """k(x, x') = variance · f(r²) with r² the lengthscale-scaled squared distance."""

    @abc.abstractmethod
    def profile(self, sqdist: Float[Array, "..."]) -> Float[Array, "..."]:
        """The correlation f(r²), equal to 1 at r² = 0."""

    def scaled_diff(self, x1, x2):
        return (x1[:, None, :] - x2[None, :, :]) / self.lengthscale

    def gram(self, x1, x2):
        sqdist = jnp.sum(self.scaled_diff(x1, x2) ** 2, axis=-1)
        return self.variance * self.profile(sqdist)

    def diag(self, x):
        return jnp.full(x.shape[:1], self.variance, dtype=self.variance.dtype)


class RBF(AbstractStationaryKernel):
    """Squared exponential: variance · exp(-r²/2)."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def profile(self, sqdist):
        return jnp.exp(-0.5 * sqdist)


class Matern12(AbstractStationaryKernel):
    """Matérn ν = 1/2 (exponential): variance · exp(-r)."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def profile(self, sqdist):
        return jnp.exp(-_safe_norm(sqdist))


class Matern32(AbstractStationaryKernel):
    """Matérn ν = 3/2: variance · (1 + √3 r) exp(-√3 r)."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def profile(self, sqdist):
        s = jnp.sqrt(3.0) * _safe_norm(sqdist)
        return (1 + s) * jnp.exp(-s)


class Matern52(AbstractStationaryKernel):
    """Matérn ν = 5/2: variance · (1 + √5 r + 5r²/3) exp(-√5 r)."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def profile(self, sqdist):
        s = jnp.sqrt(5.0) * _safe_norm(sqdist)
        return (1 + s + 5.0 / 3.0 * sqdist) * jnp.exp(-s)


class Periodic(AbstractParametrisedKernel):
    """Periodic: variance · exp(-2 Σ_d sin²(π |x_d - x'_d| / period_d) / lengthscale_d²)."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)
    period: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        if not is_traced(self.period):
            check_positive("period", self.period)

    def check_features(self, num_features):
        super().check_features(num_features)
        _check_lengthscale_features(self.period, num_features, "period")

    def gram(self, x1, x2):
        diff = x1[:, None, :] - x2[None, :, :]
        s = jnp.sin(jnp.pi * diff / self.period) / self.lengthscale
        return self.variance * jnp.exp(-2.0 * jnp.sum(s**2, axis=-1))

    def diag(self, x):
        return jnp.full(x.shape[:1], self.variance, dtype=self.variance.dtype)


class Linear(AbstractParametrisedKernel):
    """Linear (dot product): variance · Σ_d x_d x'_d / lengthscale_d²."""

    variance: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    lengthscale: Float[Array, "*D"] = eqx.field(converter=as_float_array, default=1.0)

    def gram(self, x1, x2):
        return self.variance * (x1 / self.lengthscale) @ (x2 / self.lengthscale).T

    def diag(self, x):
        return self.variance * jnp.sum((x / self.lengthscale) ** 2, axis=-1)
