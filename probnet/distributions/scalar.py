"""Distributions of positive or bounded scalars: hyperpriors, input distributions, scale priors.

Each has `log_prob`, `sample(key, shape)`, `cdf`, `mean` and `variance`, so it can serve as a
hyperprior of a prior, as the distribution of a prior's inputs, or as a scale prior.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import erfc, gammainc, gammaincc, gammaln
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


def _log1pmx(u):
    """log1p(u) − u for u > −1, within 2.5 ulps in float32 and float64; gradients stay finite.

    For −½ < u < 1 by the series log1p(u) = 2·atanh(t), t = u/(2 + u), which gives
    log1p(u) − u = −u·t + 2t³·(1/3 + t²/5 + …) (|t| ≤ 1/3: 7 terms in float32, 16 in float64);
    there the plain difference cancels (8 ulps at u = 0.4 in float32), and XLA's float64 log1p
    is itself off by 115 ulps on (−0.5, −0.3).
    """
    u = jnp.asarray(u)
    small = (u > -0.5) & (u < 1.0)
    su = jnp.where(small, u, 0.0)
    t = su / (2.0 + su)
    t2 = t * t
    odd = 0.0
    last = 33 if jnp.result_type(u) == jnp.float64 else 15
    for k in range(last, 1, -2):  # Horner: 1/3 + t²/5 + … + t^(last−3)/last
        odd = odd * t2 + 1.0 / k
    lu = jnp.where(small, 1.0, u)  # harmless where unused (no NaN gradients)
    return jnp.where(small, 2.0 * t * t2 * odd - su * t, jnp.log1p(lu) - lu)


def _standard_gamma_log_prob(a, w, log_w=None):
    """log density of Gamma(a, rate 1) at w > 0 (`log_w`, if given, is log w: a caller on the
    log scale passes it so that w may underflow). For large a, Stirling's form
    ½ log(a/2π) − stirlerr(a) + a·log1pmx(u) − log w with u = w/a − 1: the plain
    a·log w − w − lgamma(a) cancels terms of order a (0.04 to 0.09 nats lost at a = 1e5 in
    float32, depending on the rate)."""
    log_w = jnp.log(w) if log_w is None else log_w
    plain = (a - 1) * log_w - w - gammaln(a)
    large = _large(a, jnp.result_type(a, w))
    big_a = jnp.where(large, a, 1e3)
    u = w / big_a - 1.0
    # Stirling's form only above w = a/2: below, u rounds to −1 as w/a underflows (−inf), and
    # the plain form is accurate relative to its value there (≤ −0.19a)
    near = large & (u > -0.5)
    u = jnp.where(near, u, 0.0)  # harmless where unused (no NaN gradients)
    inv = 1.0 / big_a
    stirlerr = inv * (1 / 12 - inv**2 * (1 / 360 - inv**2 / 1260))
    safe_log_w = jnp.where(near, log_w, 0.0)
    stirling = 0.5 * jnp.log(big_a / (2 * jnp.pi)) - stirlerr + big_a * _log1pmx(u) - safe_log_w
    return jnp.where(near, stirling, plain)


# Temme's uniform expansion of the incomplete gamma function for large a (Temme 1979; DLMF
# 8.12.3-8.12.10, as used by DiDonato & Morris 1986): with λ = x/a, μ = λ − 1 and
# η = sign(μ)·√(2(μ − log λ)),
#   P(a, x) = ½ erfc(−η√(a/2)) − R,   Q(a, x) = ½ erfc(η√(a/2)) + R,
#   R = exp(−aη²/2)/√(2πa) · Σ_k c_k(η) a^(−k),
# c_0 = 1/μ − 1/η, c_k = (1/η)·dc_{k−1}/dη + (−1)^k g_k/μ (g_k: Stirling's coefficients of Γ,
# DLMF 5.11.3; dμ/dη = ηλ/μ). Four terms: the next, c_4/a⁴, is below 1e-9 relative at a = 30.
# _TEMME_CLOSED[k] lists c_k as (p, q, r, coefficient) for coefficient·η^p·μ^q·λ^r, used for
# |η| ≥ ½; nearer η = 0 those terms cancel, and _TEMME_TAYLOR[k] is c_k's Maclaurin series in η
# (through λ − 1 = η + η²/3 + η³/36 + …, DLMF 8.12.13; radius 2√π, so at |η| < ½ the first 10
# terms reach float32 and 20 float64). Both tables were derived from the recursion in exact
# rational arithmetic (tests/test_distributions.py repeats the derivation and checks them).
_TEMME_CLOSED = (
    ((-1, 0, 0, -1), (0, -1, 0, 1)),
    ((-3, 0, 0, 1), (0, -3, 1, -1), (0, -1, 0, -1 / 12)),
    ((-5, 0, 0, -3), (0, -5, 2, 3), (0, -4, 1, -1), (0, -3, 1, 1 / 12), (0, -1, 0, 1 / 288)),
    (
        (-7, 0, 0, 15),
        (0, -7, 3, -15),
        (0, -6, 2, 10),
        (0, -5, 1, -1),
        (0, -5, 2, -1 / 4),
        (0, -4, 1, 1 / 12),
        (0, -3, 1, -1 / 288),
        (0, -1, 0, 139 / 51840),
    ),
)
# fmt: off
_TEMME_TAYLOR = (
    (
        -0.3333333333333333, 0.08333333333333333, -0.014814814814814815,
        0.0011574074074074073, 0.0003527336860670194, -0.0001787551440329218,
        3.919263178522438e-05, -2.185448510679992e-06, -1.85406221071516e-06,
        8.296711340953087e-07, -1.7665952736826078e-07, 6.707853543401498e-09,
        1.0261809784240309e-08, -4.382036018453353e-09, 9.14769958223679e-10,
        -2.5514193994946248e-11, -5.830772132550426e-11, 2.4361948020667415e-11,
        -5.0276692801141755e-12, 1.1004392031956135e-13,
    ),
    (
        -0.001851851851851852, -0.003472222222222222, 0.0026455026455026454,
        -0.0009902263374485596, 0.00020576131687242798, -4.018775720164609e-07,
        -1.8098550334489977e-05, 7.64916091608111e-06, -1.6120900894563446e-06,
        4.647127802807434e-09, 1.378633446915721e-07, -5.752545603517705e-08,
        1.1951628599778148e-08, -1.7543241719747647e-11, -1.0091543710600413e-09,
        4.162792991842583e-10, -8.56390702649298e-11, 6.067215101604758e-14,
        7.1624989648114856e-12, -2.933186643771437e-12,
    ),
    (
        0.004133597883597883, -0.0026813271604938273, 0.0007716049382716049,
        2.0093878600823047e-06, -0.0001073665322636516, 5.2923448829120125e-05,
        -1.2760635188618728e-05, 3.423578734096138e-08, 1.3721957309062934e-06,
        -6.298992138380055e-07, 1.4280614206064242e-07, -2.0477098421990866e-10,
        -1.409252991086752e-08, 6.228974084922022e-09, -1.3670488396617114e-09,
        9.428356159014678e-13, 1.2872252400089318e-10, -5.5645956134363323e-11,
        1.197593554636698e-11, -4.1689782251838634e-15,
    ),
    (
        0.0006494341563786008, 0.00022947209362139917, -0.0004691894943952557,
        0.00026772063206283885, -7.561801671883977e-05, -2.396505113867297e-07,
        1.1082654115347302e-05, -5.6749528269915965e-06, 1.4230900732435883e-06,
        -2.7861080291528143e-11, -1.6958404091930278e-07, 8.099464905388083e-08,
        -1.9111168485973655e-08, 2.3928620439808118e-12, 2.0620131815488797e-09,
        -9.460496661855133e-10, 2.1541049775774907e-10, -1.388823336813903e-14,
        -2.1894761681963938e-11, 9.790998951171684e-12,
    ),
)
# fmt: on


def _temme_series(eta, mu, a):
    """Σ_{k<4} c_k(η)/a^k of Temme's expansion (above), for η, μ = λ − 1 of one point."""
    num_taylor = 20 if jnp.result_type(eta) == jnp.float64 else 10
    near = jnp.abs(eta) < 0.5
    eta_near = jnp.where(near, eta, 0.0)
    # the closed forms where |η| ≥ ½ (harmless 1.0 elsewhere: no NaN gradients); λ^r·μ^q as
    # (λ/μ)^r·μ^(q+r), q + r < 0, so that a huge λ cannot overflow
    inv_eta = 1.0 / jnp.where(near, 1.0, eta)
    inv_mu = 1.0 / jnp.where(near, 1.0, mu)
    lam_over_mu = jnp.where(near, 1.0, 1.0 + inv_mu)
    total = 0.0
    for taylor_coeffs, closed_terms in zip(_TEMME_TAYLOR[::-1], _TEMME_CLOSED[::-1], strict=True):
        taylor = 0.0
        for d in taylor_coeffs[num_taylor - 1 :: -1]:
            taylor = taylor * eta_near + d
        closed = sum(
            coeff * inv_eta ** (-p) * lam_over_mu**r * inv_mu ** (-q - r)
            for p, q, r, coeff in closed_terms
        )
        total = jnp.where(near, taylor, closed) + total / a
    return total


def _regularized_gamma(a, x):
    """(P(a, x), Q(a, x)): the regularised lower and upper incomplete gamma functions, each
    with small relative error in its own tail. From `_large` concentrations on by Temme's
    expansion (above): JAX's gammainc loses digits as a grows (float32: 6e-4 relative at
    a = 1e3, 0.6 at 1e6, values beyond [0, 1] at 1e7; float64: 3e-10 at 1e5, 3.5e-8 at 1e7)."""
    a, x = jnp.asarray(a), jnp.asarray(x)
    large = _large(a, jnp.result_type(a, x))
    # each branch gets harmless inputs where unused (gammainc(1, x) has a NaN gradient at 0)
    small_a = jnp.where(large, 2.0, a)
    plain = gammainc(small_a, x), gammaincc(small_a, x)
    a = jnp.where(large, a, 1e6)
    inside = (x > 0) & (x < jnp.inf)
    # λ − 1, exact up to the division's rounding; kept off −1 (x < a·eps), where η would be −inf
    # and P(a, x) is 0 to any precision
    mu = (jnp.where(inside, x, a) - a) / a
    mu = jnp.maximum(mu, -1.0 + 4 * jnp.finfo(mu.dtype).eps)
    # η = μ·√(−2 log1pmx(μ)/μ²) near μ = 0, smooth through it (the ratio is 1 − 2μ/3 + …)
    mid, tiny = jnp.abs(mu) < 1.0, jnp.abs(mu) < 1e-8
    mu_mid = jnp.where(mid & ~tiny, mu, 0.5)
    ratio = jnp.where(tiny, 1.0 - 2.0 * mu / 3.0, -2.0 * _log1pmx(mu_mid) / mu_mid**2)
    mu_out = jnp.where(mid, 2.0, mu)
    eta_out = jnp.sign(mu_out) * jnp.sqrt(-2.0 * _log1pmx(mu_out))
    eta = jnp.where(mid, mu * jnp.sqrt(ratio), eta_out)
    y = eta * jnp.sqrt(0.5 * a)
    r = jnp.exp(-(y**2)) / jnp.sqrt(2 * jnp.pi * a) * _temme_series(eta, mu, a)
    lower = jnp.where(inside, 0.5 * erfc(-y) - r, jnp.where(x > 0, 1.0, 0.0))
    upper = jnp.where(inside, 0.5 * erfc(y) + r, jnp.where(x > 0, 0.0, 1.0))
    lower, upper = (jnp.where(jnp.isnan(x), jnp.nan, v) for v in (lower, upper))
    return jnp.where(large, lower, plain[0]), jnp.where(large, upper, plain[1])


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
        return _regularized_gamma(self.concentration, self.rate * jnp.maximum(value, 0.0))[0]

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
        upper = _regularized_gamma(self.concentration, self.scale / safe)[1]
        return jnp.where(value > 0, upper, 0.0)

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
