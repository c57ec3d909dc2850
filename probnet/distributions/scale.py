"""Heavy-tailed and scale distributions: Student-t (predictive of a Student-t process) and priors
on a positive scale (Burr type XII, half-Cauchy, log-normal).

All follow the `AbstractDistribution` protocol (`log_prob`, `sample(key, shape)`, `mean`,
`variance`, `cdf`, `quantile`); parameters broadcast to the batch shape. The positive families
sample by their quantile function, so draws are differentiable in the parameters
(reparameterised), which lets importance-sampling estimates be optimised with gradients.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, betaln, gammaln, ndtr, ndtri, polygamma
from jaxtyping import Array, Float, PRNGKeyArray

from probnet._checks import as_float_array
from probnet.distributions.scalar import _check_positive_fields, _large, _log1pmx, _Scalar

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _uniform(key, shape, dtype):
    """Uniform draws strictly inside (0, 1)."""
    tiny = jnp.finfo(dtype).tiny
    return jax.random.uniform(key, shape, dtype, minval=tiny, maxval=1.0)


# `_large` (scalar.py): from these df on (30 in float32, 1e5 in float64), Hill's transform
# replaces the incomplete beta (which loses more digits than Hill's error: float32 at ν = 30,
# 4e-6 against 8e-8, and Hill's relative error in the far tails is below 1e-4 there; float64 at
# ν = 1e5, ~3e-11 each), and log-beta replaces differences of log-gammas (whose cancellation
# costs 2e-5 nats at ν = 358 in float32; JAX's float64 betaln is itself off by 5e-8 at moderate
# arguments)


def log_gamma_ratio(a: Float[Array, "..."], h: Float[Array, "..."]) -> Float[Array, "..."]:
    """log Γ(a + h) − log Γ(a) for a > 0, h ≥ 0; as log Γ(h) − log B(a, h) for large a, where
    the plain difference of two huge log-gammas cancels (0.6 nats lost in float32 at a = 1e6)."""
    a, h = jnp.asarray(a), jnp.asarray(h)
    large = _large(a, jnp.result_type(a, h)) & (h > 0)
    safe_h = jnp.where(large, h, 1.0)
    safe_a = jnp.where(large, a, 1.0)
    plain = gammaln(jnp.where(large, 1.0, a + h)) - gammaln(jnp.where(large, 1.0, a))
    return jnp.where(large, gammaln(safe_h) - betaln(safe_a, safe_h), plain)


def _log_density_at_0(nu):
    """log of the standard Student-t(ν) density at 0: log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπ)."""
    return log_gamma_ratio(0.5 * nu, 0.5) - 0.5 * jnp.log(nu * jnp.pi)


def _hill_normal_deviate(z, nu):
    """The normal deviate with the Student-t(ν) cdf at `z`: Hill (1970), CACM Algorithm 395
    (cdf error below 1e-10 for ν ≥ 20, where the float32 incomplete beta is off by up to 3e-6,
    and by 2.7e-2 at ν = 1e6). w² = (ν − ½)·log(1 + z²/ν), written as z·√(…) to be smooth
    at 0, and through log|z| beyond |z| = √ν so that z²/ν cannot overflow (z = ±inf included)."""
    a = nu - 0.5
    b = 48.0 * a**2
    big = jnp.abs(z) > jnp.sqrt(nu)
    u = jnp.where(big, 1.0, z**2 / nu)
    # log1p(u)/u = 1 + log1pmx(u)/u; below u = 1e-8 it is 1 − u/2 to round-off in float64 too,
    # and there the quotient's derivative (log1pmx(u)/u²) would underflow to 0·inf
    tiny = u < 1e-8
    safe_u = jnp.where(tiny, 1.0, u)
    log1p_ratio = jnp.where(tiny, 1.0 - 0.5 * u, 1.0 + _log1pmx(safe_u) / safe_u)
    far = jnp.where(big, jnp.abs(z), 2.0 * jnp.sqrt(nu))
    log1p_far = 2.0 * jnp.log(far) - jnp.log(nu) + jnp.log1p(nu / far**2)  # log1p(z²/ν)
    w = jnp.where(big, jnp.sign(z) * jnp.sqrt(a * log1p_far), z * jnp.sqrt(a / nu * log1p_ratio))
    y = jnp.minimum(w**2, 1e6)  # the correction's polynomial; beyond, the cdf is 0 or 1
    correction = (
        (((-0.4 * y - 3.3) * y - 24.0) * y - 85.5) / (0.8 * y**2 + 100.0 + b) + y + 3.0
    ) / b
    return w * (1.0 + correction)


class StudentT(_Scalar):
    """Student-t with `df` degrees of freedom, location `loc` and scale `scale`.

    Density ∝ (1 + z²/df)^(−(df+1)/2) with z = (x − loc)/scale. The mean is `loc` for df > 1
    (NaN otherwise); the variance is scale²·df/(df − 2) for df > 2, inf for 1 < df ≤ 2 and NaN
    for df ≤ 1. `cdf` uses the regularised incomplete beta function; `quantile` inverts it by
    bisection on arctan(z) followed by Newton steps.
    """

    df: Float[Array, "..."] = eqx.field(converter=as_float_array)
    loc: Float[Array, "..."] = eqx.field(converter=as_float_array)
    scale: Float[Array, "..."] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        _check_positive_fields(self, "df", "scale")

    def _z(self, value):
        return (jnp.asarray(value) - self.loc) / self.scale

    def log_prob(self, value):
        nu, z = self.df, self._z(value)
        norm = _log_density_at_0(nu)
        return norm - jnp.log(self.scale) - 0.5 * (nu + 1) * jnp.log1p(z**2 / nu)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        df = jnp.broadcast_to(self.df, full)
        return self.loc + self.scale * jax.random.t(key, df, full, self.scale.dtype)

    @property
    def mean(self):
        return jnp.broadcast_to(jnp.where(self.df > 1, self.loc, jnp.nan), self.batch_shape)

    @property
    def variance(self):
        nu = self.df
        safe = jnp.where(nu > 2, nu, 3.0)
        var = jnp.where(
            nu > 2, self.scale**2 * safe / (safe - 2), jnp.where(nu > 1, jnp.inf, jnp.nan)
        )
        return jnp.broadcast_to(var, self.batch_shape)

    def _standard_cdf(self, z):
        # large ν: Hill's normal transform (above). Otherwise the regularised incomplete beta:
        # tails from I_{ν/(ν+z²)}(ν/2, ½); near the centre, where ν/(ν+z²) rounds to 1, from
        # the complementary I_{z²/(ν+z²)}(½, ν/2); for |z| < 1e-3, where that one's derivative
        # is 0·∞, from the cubic series (error ~1e-15). Each branch gets a harmless input
        # where it is not used, so its derivative there cannot turn gradients into NaN.
        z = jnp.asarray(z)
        large = _large(self.df, jnp.result_type(z, self.df))
        nu = jnp.where(large, 4.0, self.df)
        tiny = jnp.abs(z) < 1e-3
        near = (z**2 < nu) & ~tiny
        tail = 0.5 * betainc(0.5 * nu, 0.5, jnp.where(near | tiny, 0.5, nu / (nu + z**2)))
        centre = 0.5 * betainc(0.5, 0.5 * nu, jnp.where(near, z**2 / (nu + z**2), 0.5))
        series = 0.5 + jnp.exp(_log_density_at_0(nu)) * z * (1.0 - (nu + 1) / (6.0 * nu) * z**2)
        by_beta = jnp.where(near, 0.5 + jnp.sign(z) * centre, jnp.where(z > 0, 1.0 - tail, tail))
        hill = ndtr(_hill_normal_deviate(z, jnp.where(large, self.df, 1e3)))
        return jnp.where(large, hill, jnp.where(tiny, series, by_beta))

    def cdf(self, value):
        return self._standard_cdf(self._z(value))

    def quantile(self, q, num_bisections: int = 60, num_newton: int = 3):
        q = jnp.asarray(q, self.scale.dtype)
        shape = jnp.broadcast_shapes(jnp.shape(q), self.batch_shape)
        q = jnp.broadcast_to(q, shape)
        half_pi = 0.5 * jnp.pi
        lo, hi = jnp.full(shape, -half_pi, q.dtype), jnp.full(shape, half_pi, q.dtype)

        def bisect(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self._standard_cdf(jnp.tan(mid)) < q
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, num_bisections, bisect, (lo, hi))
        z_lo, z_hi = jnp.tan(lo), jnp.tan(hi)
        standard = StudentT(self.df, 0.0, 1.0)

        def newton(_, z):
            step = (self._standard_cdf(z) - q) / jnp.exp(standard.log_prob(z))
            new = z - step
            return jnp.where((new >= z_lo) & (new <= z_hi) & jnp.isfinite(new), new, z)

        z = jax.lax.fori_loop(0, num_newton, newton, jnp.tan(0.5 * (lo + hi)))
        z = jnp.where(q <= 0, -jnp.inf, jnp.where(q >= 1, jnp.inf, z))
        return self.loc + self.scale * z


def _lgamma_second_difference(x, h):
    """lgamma(x + 2h) − 2·lgamma(x + h) + lgamma(x) for x > 0 and x + 2h > 0 (h of either sign),
    free of the plain form's cancellation (the result is about h²·trigamma(x)). Shifted by 4,
    lgamma(x) = lgamma(y) − log(x(x + 1)(x + 2)(x + 3)) with y = x + 4, each log's second
    difference as log1pmx(2h/z) − 2·log1pmx(h/z); lgamma's at y as
    h²·∫₀¹ u·(trigamma(y + hu) + trigamma(y + 2h − hu)) du by Gauss–Legendre (4 nodes in
    float32, 7 in float64: trigamma's pole is ≥ 16 half-widths away) where |2h| ≤ y/4; the
    plain form where h is larger, as nothing cancels much there."""
    dtype = jnp.result_type(x, h)
    x, h = jnp.broadcast_arrays(jnp.asarray(x, dtype), jnp.asarray(h, dtype))
    small = jnp.abs(2.0 * h) <= 0.25 * (x + 4.0)
    hs = jnp.where(small, h, 0.0)  # each form gets harmless inputs where unused
    nodes, weights = np.polynomial.legendre.leggauss(7 if dtype == jnp.float64 else 4)
    u, w = (0.5 * (nodes + 1.0)).astype(dtype), (0.25 * weights * (nodes + 1.0)).astype(dtype)
    y, hu = (x + 4.0)[..., None], (hs[..., None] * u)
    both = polygamma(1, jnp.stack([y + hu, y + 2.0 * hs[..., None] - hu]))
    at_y = hs**2 * jnp.sum(w * (both[0] + both[1]), axis=-1)
    steps = hs[..., None] / (x[..., None] + np.arange(4.0))  # h/z for z = x, …, x + 3
    logs = jnp.sum(_log1pmx(2.0 * steps) - 2.0 * _log1pmx(steps), axis=-1)
    hp = jnp.where(small, 0.0, h)
    plain = gammaln(x + 2.0 * hp) - 2.0 * gammaln(x + hp) + gammaln(x)
    return jnp.where(small, at_y - logs, plain)


class BurrXII(_Scalar):
    """Burr type XII on x > 0 with shapes `c`, `k` and `scale` λ (SciPy's `burr12(c, k)`).

    cdf 1 − (1 + (x/λ)^c)^(−k); the right tail decays like x^(−ck − 1), so moments of order
    ≥ ck are infinite (`mean` is inf unless ck > 1, `variance` unless ck > 2).
    """

    c: Float[Array, "..."] = eqx.field(converter=as_float_array)
    k: Float[Array, "..."] = eqx.field(converter=as_float_array)
    scale: Float[Array, "..."] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        _check_positive_fields(self, "c", "k", "scale")

    def _log1p_power(self, value):
        """log(1 + (x/λ)^c) and log(x/λ) for x > 0, without overflow for large c."""
        log_u = jnp.log(value) - jnp.log(self.scale)
        return jax.nn.softplus(self.c * log_u), log_u

    def log_prob(self, value):
        value = jnp.asarray(value)
        positive = value > 0
        log1p_power, log_u = self._log1p_power(jnp.where(positive, value, 1.0))
        lp = (
            jnp.log(self.c)
            + jnp.log(self.k)
            - jnp.log(self.scale)
            + (self.c - 1) * log_u
            - (self.k + 1) * log1p_power
        )
        return jnp.where(positive, lp, -jnp.inf)

    def cdf(self, value):
        value = jnp.asarray(value)
        positive = value > 0
        log1p_power, _ = self._log1p_power(jnp.where(positive, value, 1.0))
        return jnp.where(positive, -jnp.expm1(-self.k * log1p_power), 0.0)

    def quantile(self, q):
        q = jnp.asarray(q)
        return self.scale * jnp.expm1(-jnp.log1p(-q) / self.k) ** (1.0 / self.c)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return self.quantile(_uniform(key, full, self.scale.dtype))

    def _log_raw_moment(self, order, k):
        """log E[X^order] = log(λ^order·k) + log B(k − order/c, 1 + order/c), for c·k > order
        (`k` is the shape, or a safe stand-in where that fails)."""
        h = order / self.c
        return order * jnp.log(self.scale) + jnp.log(k) + betaln(k - h, 1.0 + h)

    def _raw_moment(self, order):
        finite = self.c * self.k > order
        safe_k = jnp.where(finite, self.k, order / self.c + 1.0)
        return jnp.where(finite, jnp.exp(self._log_raw_moment(order, safe_k)), jnp.inf)

    @property
    def mean(self):
        return jnp.broadcast_to(self._raw_moment(1), self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(_burr_variance(self), self.batch_shape)


@jax.jit  # one compiled computation also where `variance` is read outside jit
def _burr_variance(dist: BurrXII) -> Float[Array, "..."]:
    """m₁²·expm1(log(m₂/m₁²)), in logs: m₂ − m₁² cancels as c grows (the law concentrates at
    λ; var/m₁² ≈ π²/(6c²) at k = 1: float32 lost 7.4e-3 relative at c = 100, 0.6 at 1e3), and
    m₁² alone can underflow while the variance does not. From
    log m_r = log(λ^r·k) + lgamma(k − r/c) + lgamma(1 + r/c) − lgamma(k + 1),
    log(m₂/m₁²) = Δ²lgamma(k; −1/c) + Δ²lgamma(1; 1/c)."""
    c, k = jnp.broadcast_arrays(dist.c, dist.k)
    finite = c * k > 2
    h = 1.0 / c
    safe_k = jnp.where(finite, k, 3.0 * h)
    both = _lgamma_second_difference(jnp.stack([safe_k, jnp.ones_like(h)]), jnp.stack([-h, h]))
    log_ratio = jnp.maximum(both[0] + both[1], jnp.finfo(h.dtype).tiny)  # > 0 but for round-off
    log_m1 = dist._log_raw_moment(1, safe_k)
    log_var = 2.0 * log_m1 + log_ratio + jnp.log(-jnp.expm1(-log_ratio))  # log expm1(ratio)
    return jnp.where(finite, jnp.exp(log_var), jnp.inf)


class HalfCauchy(_Scalar):
    """|X| for X ~ Cauchy(0, scale): density 2/(π·scale·(1 + (x/scale)²)) on x > 0.

    Mean and variance are infinite.
    """

    scale: Float[Array, "..."] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        _check_positive_fields(self, "scale")

    def log_prob(self, value):
        value = jnp.asarray(value)
        lp = math.log(2 / math.pi) - jnp.log(self.scale) - jnp.log1p((value / self.scale) ** 2)
        return jnp.where(value > 0, lp, -jnp.inf)

    def cdf(self, value):
        return (2 / jnp.pi) * jnp.arctan(jnp.maximum(jnp.asarray(value), 0.0) / self.scale)

    def quantile(self, q):
        # upper half as 1/tan of the complement: float32 π/2 exceeds π/2, so tan(π/2·q) went
        # negative at q = 1 (and lost digits near it)
        q = jnp.asarray(q)
        upper = q > 0.5
        angle = 0.5 * jnp.pi * jnp.where(upper, 1.0 - q, q)
        return self.scale * jnp.where(upper, 1.0 / jnp.tan(angle), jnp.tan(angle))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return self.quantile(_uniform(key, full, self.scale.dtype))

    @property
    def mean(self):
        return jnp.full(self.batch_shape, jnp.inf, self.scale.dtype)

    @property
    def variance(self):
        return jnp.full(self.batch_shape, jnp.inf, self.scale.dtype)


class LogNormal(_Scalar):
    """log X ~ N(loc, scale²)."""

    loc: Float[Array, "..."] = eqx.field(converter=as_float_array, default=0.0)
    scale: Float[Array, "..."] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        _check_positive_fields(self, "scale")

    def log_prob(self, value):
        value = jnp.asarray(value)
        positive = value > 0
        log_x = jnp.log(jnp.where(positive, value, 1.0))
        z = (log_x - self.loc) / self.scale
        lp = -0.5 * z**2 - jnp.log(self.scale) - _LOG_SQRT_2PI - log_x
        return jnp.where(positive, lp, -jnp.inf)

    def cdf(self, value):
        value = jnp.asarray(value)
        log_x = jnp.log(jnp.where(value > 0, value, 1.0))
        return jnp.where(value > 0, ndtr((log_x - self.loc) / self.scale), 0.0)

    def quantile(self, q):
        return jnp.exp(self.loc + self.scale * ndtri(jnp.asarray(q)))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()):
        full = tuple(shape) + self.batch_shape
        return jnp.exp(self.loc + self.scale * jax.random.normal(key, full, self.scale.dtype))

    @property
    def mean(self):
        return jnp.broadcast_to(jnp.exp(self.loc + 0.5 * self.scale**2), self.batch_shape)

    @property
    def variance(self):
        s2 = self.scale**2
        return jnp.broadcast_to(jnp.expm1(s2) * jnp.exp(2 * self.loc + s2), self.batch_shape)
