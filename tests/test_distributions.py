"""Scalar distributions against SciPy and high-precision references: the scale priors and
predictives of the scale-mixture NNGP (Student-t, Burr XII, half-Cauchy, log-normal, Gamma,
inverse-gamma), their float32 numerics at large shape parameters, and the Gamma hyperprior of
the fully Bayesian GP."""

import decimal
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

from probnet.distributions import Gamma, InverseGamma
from probnet.distributions.scalar import _TEMME_CLOSED, _TEMME_TAYLOR, _log1pmx
from probnet.distributions.scale import BurrXII, HalfCauchy, LogNormal, StudentT
from probnet.samplers.gp import GammaPrior


def test_scale_distributions_match_scipy(x64):
    v = np.array([0.05, 0.7, 3.0, 40.0])
    q = np.array([0.01, 0.3, 0.5, 0.99])
    cases = [
        (StudentT(3.5, 0.2, 1.3), scipy.stats.t(3.5, 0.2, 1.3), np.array([-30, -1.0, 0.2, 5])),
        (StudentT(1e6, 0.2, 1.3), scipy.stats.t(1e6, 0.2, 1.3), np.array([-9, -1.0, 0.2, 5])),
        (BurrXII(2.0, 1.5, 0.7), scipy.stats.burr12(2.0, 1.5, scale=0.7), v),
        (HalfCauchy(1.5), scipy.stats.halfcauchy(scale=1.5), v),
        (LogNormal(0.3, 0.8), scipy.stats.lognorm(0.8, scale=np.exp(0.3)), v),
    ]
    for dist, ref, x in cases:
        np.testing.assert_allclose(dist.log_prob(x), ref.logpdf(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dist.cdf(x), ref.cdf(x), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dist.quantile(q), ref.ppf(q), rtol=1e-7)
        if np.isfinite(ref.var()):
            np.testing.assert_allclose(dist.mean, ref.mean(), rtol=1e-10)
            np.testing.assert_allclose(dist.variance, ref.var(), rtol=1e-10)
        draws = np.asarray(dist.sample(jax.random.key(0), (2000,)))
        assert scipy.stats.kstest(draws, ref.cdf).pvalue > 0.01
    assert np.isinf(StudentT(2.0, 0.0, 1.0).variance) and np.isnan(StudentT(1.0, 0, 1).mean)


def test_student_t_cdf_in_float32():
    """ν/(ν+z²) rounds to 1 near z = 0 in float32; the cdf must still rise through 0.5 there
    (it was flat, and off by 4e-4 at ν = 358). The incomplete beta loses digits as ν grows
    (3.5e-4 at ν = 1e4, 2.7e-2 at ν = 1e6): large ν go through Hill's normal transform."""
    z = np.array([-6.0, -0.1, -1e-3, 0.0, 1e-4, 1e-2, 0.5, 1.0, 4.0], np.float32)
    ends = np.array([-np.inf, -1e20, 1e20, np.inf], np.float32)
    q = np.array([0.01, 0.3, 0.5, 0.9], np.float32)
    standard = lambda df: StudentT(df, 0.0, 1.0)
    cdf = jax.jit(lambda df, x: standard(df).cdf(x))  # df traced: one compilation for all
    quantile = jax.jit(lambda df, p: standard(df).quantile(p))
    density = jax.jit(lambda df, x: jax.vmap(jax.grad(standard(df).cdf))(x))
    for df in (4.0, 358.0, 1e4, 1e6):
        df32 = np.float32(df)
        assert cdf(df32, z).dtype == jnp.float32
        np.testing.assert_allclose(cdf(df32, z), scipy.stats.t.cdf(z, df), rtol=1e-5, atol=5e-7)
        np.testing.assert_array_equal(cdf(df32, ends), [0.0, 0.0, 1.0, 1.0])  # not NaN
        got = quantile(df32, q)
        assert abs(float(got[2])) < 1e-5
        np.testing.assert_allclose(got, scipy.stats.t.ppf(q, df), rtol=1e-5, atol=1e-6)
        # no branch leaks a NaN into the gradient, which is the density (also at z = 0)
        np.testing.assert_allclose(density(df32, z), scipy.stats.t.pdf(z, df), rtol=1e-4, atol=1e-9)
    assert np.isinf(BurrXII(1.0, 0.5).mean)


def test_gamma_log_densities_at_large_concentration_in_float32():
    """Gamma and inverse-gamma (the σ² posterior IG(α + n/2, ·)) at large α: the plain
    a·log(bx) − bx − lgamma(a) lost 0.035 nats at α = 1e5 and 6.7 at 1e7 in float32."""
    for a in (2.0, 1e3, 1e5, 1e7):
        b = 0.7 * a
        mode, sd = a / b, np.sqrt(a) / b
        x = np.linspace(max(mode - 5 * sd, 1e-3), mode + 5 * sd, 11).astype(np.float32)
        got = Gamma(a, b).log_prob(x)
        assert got.dtype == jnp.float32
        expected = scipy.stats.gamma.logpdf(x.astype(np.float64), a, scale=1 / b)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 if a > 1e6 else 2e-4)
        inv = (1 / x).astype(np.float32)
        expected = scipy.stats.invgamma.logpdf(inv.astype(np.float64), a, scale=b)
        np.testing.assert_allclose(
            InverseGamma(a, b).log_prob(inv), expected, rtol=0, atol=2e-3 if a > 1e6 else 2e-4
        )
    # the form not taken leaks no NaN into gradients (importance sampling's Laplace step needs
    # them far in the tails: a σ² of 1e13 under IG(3, 2) broke it)
    for dist, x in (
        (InverseGamma(3.0, 2.0), 1e13),
        (Gamma(3.0, 2.0), 1e-13),
        (Gamma(1e4, 1.0), 1e3),
    ):
        assert np.isfinite(float(jax.grad(dist.log_prob)(jnp.float32(x))))


def test_log1pmx_within_three_ulps(x64):
    """log1p(u) − u (Gamma densities, Temme's η of the Gamma cdfs, Hill's Student-t transform):
    within 3 ulps of a 50-digit reference in float32 and float64 (the plain difference loses
    8 ulps at u = 0.4 in float32; XLA's float64 log1p alone is off by 115 ulps near u = −0.4),
    with gradient −u/(1 + u) through the switch between its two forms."""
    u = np.concatenate(
        [-np.logspace(-12, np.log10(0.99), 80), [0.0], np.logspace(-12, 2, 80), [-0.5, 0.5, 1.0]]
    )
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(_log1pmx)))
    for dtype in (np.float32, np.float64):
        x = u.astype(dtype)
        with decimal.localcontext(prec=50):
            ref = [(decimal.Decimal(float(v)) + 1).ln() - decimal.Decimal(float(v)) for v in x]
        ref = np.array([float(r) for r in ref])
        got, grad = value_and_grad(x)
        assert got.dtype == dtype
        got, grad = np.asarray(got, np.float64), np.asarray(grad, np.float64)
        keep = np.abs(ref) > np.finfo(dtype).tiny  # −u²/2 underflows below that
        np.testing.assert_allclose(got[keep], ref[keep], rtol=3 * np.finfo(dtype).eps, atol=0)
        np.testing.assert_allclose(grad, -x / (1.0 + x), rtol=10 * np.finfo(dtype).eps, atol=1e-37)
    # Hill's log1p(u)/u = 1 + log1pmx(u)/u keeps finite gradients where u = z²/ν underflows
    z = np.array([0.0, 1e-20, 1e-9, 1e-4, 0.5], np.float32)
    standard = StudentT(np.float32(1e6), np.float32(0.0), np.float32(1.0))
    density = jax.jit(jax.vmap(jax.grad(standard.cdf)))(z)
    assert density.dtype == jnp.float32
    np.testing.assert_allclose(density, scipy.stats.t.pdf(z.astype(np.float64), 1e6), rtol=1e-5)


def test_gamma_hyperprior_log_density_at_large_concentration_in_float32():
    """GammaPrior (NUTS over log θ) by the Gamma distribution's log-density: the plain
    a·log b − lgamma(a) + a·log θ − bθ lost 0.035 nats at a = 1e5 and 6.9 at 1e7 in float32.
    The log-θ Jacobian is kept, and θ = exp(log θ) may underflow (log θ = −200)."""
    log_prob = jax.jit(
        jax.vmap(lambda lt, a, b: GammaPrior(a, b).log_prob_log(lt), (0, None, None))
    )
    for a in (2.0, 1e3, 1e5, 1e7):
        b = 0.7 * a
        mode, sd = a / b, np.sqrt(a) / b
        log_theta = np.log(np.linspace(max(mode - 5 * sd, 1e-3), mode + 5 * sd, 11))
        log_theta = log_theta.astype(np.float32)
        got = log_prob(log_theta, np.float32(a), np.float32(b))
        assert got.dtype == jnp.float32
        lt = log_theta.astype(np.float64)
        expected = scipy.stats.gamma.logpdf(np.exp(lt), a, scale=1 / np.float64(np.float32(b))) + lt
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 if a > 1e6 else 3e-4)
    prior = GammaPrior(0.01, 2.0)
    expected = 0.01 * np.log(2.0) - scipy.special.gammaln(0.01) + 0.01 * -200.0  # e^(−2e^−200) = 1
    assert float(prior.log_prob_log(jnp.float32(-200.0))) == pytest.approx(expected, rel=1e-6)


def test_gamma_hyperprior_log_density_in_float64(x64):
    log_prob = jax.jit(
        jax.vmap(lambda lt, a, b: GammaPrior(a, b).log_prob_log(lt), (0, None, None))
    )
    for a, b in ((0.5, 2.0), (3.0, 0.5), (1e5, 1e5), (1e7, 3e6)):
        lt = np.linspace(-3.0, 3.0, 13) / np.sqrt(a) + np.log(a / b)  # ±3 sd around the mean
        expected = scipy.stats.gamma.logpdf(np.exp(lt), a, scale=1 / b) + lt
        got = log_prob(lt, a, b)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)  # SciPy: 7e-8 at a = 1e7


def _temme_coefficients(num_k, num_taylor):
    """Temme's c_k(η) from DLMF 8.12.9-8.12.10 in exact rationals: closed forms as
    {(p, q, r): coeff} for coeff·η^p·μ^q·λ^r, and Maclaurin coefficients in η through
    μ(η) = η + η²/3 + … (from μ·dμ/dη = η(1 + μ), i.e. ½η² = μ − log(1 + μ))."""
    from fractions import Fraction as F

    m = num_taylor + 2 * num_k + 2

    def mul(x, y):
        return [sum(x[i] * y[k - i] for i in range(k + 1)) for k in range(m)]

    def power(x, e):
        if e < 0:  # 1/x, x[0] ≠ 0
            inv = [1 / x[0]]
            for k in range(1, m):
                inv.append(-sum(x[j] * inv[k - j] for j in range(1, k + 1)) / x[0])
            x, e = inv, -e
        out = [F(1)] + [F(0)] * (m - 1)
        for _ in range(e):
            out = mul(out, x)
        return out

    stirling = (F(1), F(1, 12), F(1, 288), F(-139, 51840), F(-571, 2488320))  # DLMF 5.11.4
    forms = [{(0, -1, 0): F(1), (-1, 0, 0): F(-1)}]
    for k in range(1, num_k):
        new = {}
        for (p, q, r), v in forms[-1].items():  # (1/η)·d/dη with dμ/dη = dλ/dη = ηλ/μ
            for key, factor in (((p - 2, q, r), p), ((p, q - 2, r + 1), q), ((p, q - 1, r), r)):
                new[key] = new.get(key, 0) + factor * v
        new[(0, -1, 0)] = new.get((0, -1, 0), 0) + (-1) ** k * stirling[k]
        forms.append({key: v for key, v in new.items() if v})
    alpha = [F(0), F(1)]  # μ = Σ alpha_j η^j: (j + 1)·alpha_j = alpha_{j−1} − Σ_{i=2}^{j−1} …
    for j in range(2, m + 2):
        cross = sum((j + 1 - i) * alpha[i] * alpha[j + 1 - i] for i in range(2, j))
        alpha.append((alpha[j - 1] - cross) / (j + 1))
    mu_over_eta, lam = alpha[1 : m + 1], [F(1)] + alpha[1:m]
    taylor = []
    for form in forms:
        coeffs = {}
        for (p, q, r), v in form.items():
            for i, c in enumerate(mul(power(mu_over_eta, q), power(lam, r))):
                coeffs[p + q + i] = coeffs.get(p + q + i, 0) + v * c
        assert not any(coeffs.get(e) for e in range(-2 * num_k - 1, 0))  # the poles cancel
        taylor.append([coeffs.get(i, F(0)) for i in range(num_taylor)])
    return forms, taylor


def test_temme_coefficients_follow_from_the_recursion():
    forms, taylor = _temme_coefficients(len(_TEMME_CLOSED), len(_TEMME_TAYLOR[0]))
    for form, table in zip(forms, _TEMME_CLOSED, strict=True):
        assert form == {(p, q, r): Fraction(c).limit_denominator(10**6) for p, q, r, c in table}
    np.testing.assert_allclose(np.array(taylor, float), np.array(_TEMME_TAYLOR), rtol=1e-15)
    assert taylor[0][:4] == [Fraction(-1, 3), Fraction(1, 12), Fraction(-2, 135), Fraction(1, 864)]


def _log_gamma_density(a, x):
    """float64 log density of Gamma(a, 1) by Stirling's form with u = x/a − 1 (SciPy's
    a·log x − x − lgamma(a) cancels: 7e-8 off at a = 1e7)."""
    u = (x - a) / a
    stirlerr = 1 / (12 * a) - 1 / (360 * a**3) + 1 / (1260 * a**5)
    return a * (np.log1p(u) - u) - 0.5 * np.log(2 * np.pi * a) - stirlerr + np.log(a / x)


def _lower_gamma_series(a, x, terms=60_000):
    """float64 P(a, x) for x < a: x^a e^(−x)/Γ(a + 1)·Σ_k x^k/((a + 1)…(a + k)) (DLMF 8.7.1)."""
    ratios = x[:, None] / (a + np.arange(1, terms + 1))
    series = 1 + np.cumprod(ratios, axis=1).sum(axis=1)
    return np.exp(_log_gamma_density(a, x)) * x / a * series


def _gamma_cdf_reference(a, x):
    """(P, Q)(a, x) in float64 from SciPy, except P (and so Q) for x < a at a ≥ 1e6, where
    SciPy's gammainc is off (mpmath: 1.2e-5 relative at a = 1e6, z = −4.5; 3% at 1e7, z = −5)."""
    p, q = scipy.special.gammainc(a, x), scipy.special.gammaincc(a, x)
    if a >= 1e6:
        left = x < a
        p[left] = _lower_gamma_series(a, x[left])
        q[left] = 1 - p[left]
    return p, q


def _check_gamma_cdfs(dtype, rtol, density):
    """Gamma(a, 1).cdf = P(a, x) and InverseGamma(a, 1).cdf(1/x) = Q(a, x) at z-scores −8…8,
    both tails relative: |error| ≤ rtol·(1 + |log reference|) (an ulp of the exponent); with
    `density`, the gradient of P also (4 times the tolerance)."""

    def cdfs(a, x, v):
        lower = Gamma(a, 1.0).cdf
        p, dp = jax.vmap(jax.value_and_grad(lower))(x) if density else (lower(x), None)
        return p, InverseGamma(a, 1.0).cdf(v), dp

    cdfs = jax.jit(cdfs)
    z = np.linspace(-8, 8, 33)
    for a in (30.0, 1e3, 1e5, 1e6, 1e7):
        x = a + z * np.sqrt(a)
        x = x[x > 0].astype(dtype)
        v = (1 / x).astype(dtype)
        w = (dtype(1) / v).astype(np.float64)  # InverseGamma.cdf(v) is Q(a, 1/v), rounded
        ref_p = _gamma_cdf_reference(a, x.astype(np.float64))[0]
        ref_q = _gamma_cdf_reference(a, w)[1]
        ref_density = np.exp(_log_gamma_density(a, x.astype(np.float64)))
        got_p, got_q, got_density = cdfs(dtype(a), x, v)
        checks = [(got_p, ref_p, 1), (got_q, ref_q, 1)] + [(got_density, ref_density, 4)] * density
        for got, ref, scale in checks:
            got = np.asarray(got, np.float64)
            keep = ref > np.finfo(dtype).tiny
            tol = scale * rtol * (1 + np.abs(np.log(ref[keep])))
            assert np.all(np.abs(got[keep] - ref[keep]) <= tol * ref[keep]), (a, got, ref)


def test_gamma_cdfs_at_large_concentration_in_float32():
    """From a = 30 on, Temme's uniform expansion replaces JAX's gammainc, whose float32 error
    grew with a (6e-4 relative at a = 1e3, 0.6 at 1e6, values outside [0, 1] at 1e7). Measured:
    ≤ 2.4 ulps·(1 + |log P|), i.e. ≤ 8e-6 relative at |z| ≤ 8. The gradient is the density,
    also at x = a."""
    _check_gamma_cdfs(np.float32, rtol=4 * np.finfo(np.float32).eps, density=True)


def test_gamma_cdfs_at_large_concentration_in_float64(x64):
    """From a = 1e5 on (JAX's float64 gammainc: 3e-10 relative at a = 1e5, 3.5e-8 at 1e7)."""
    _check_gamma_cdfs(np.float64, rtol=1e-12, density=False)


def _burr_variance_by_quadrature(c, k, scale):
    """float64 BurrXII variance without m₂ − m₁²: Y = c·log(X/λ) has density
    k·e^Y/(1 + e^Y)^(k+1), and var X = λ²·E[(expm1(Y/c) − E expm1(Y/c))²] by SciPy's quad."""
    density = lambda y: np.exp(np.log(k) + y - (k + 1) * np.logaddexp(0.0, y))
    lo, hi = -60.0, 80.0 / (k - 2.0 / c)  # beyond, density·e^(2y/c) < e^−60
    quad = lambda f: scipy.integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
        shift = quad(lambda y: np.expm1(y / c) * density(y))
        return scale**2 * quad(lambda y: (np.expm1(y / c) - shift) ** 2 * density(y))


BURR_SHAPES = [
    (2.0, 1.5),
    (2.0, 4.0),
    (10.0, 0.5),
    (100.0, 0.05),
    (100.0, 1.0),
    (1e3, 1.0),
    (1e3, 4.0),
]


def test_burr_variance_at_large_c_in_float32():
    """m₂ − m₁² cancels as c grows (var/m₁² ≈ π²/(6c²) at k = 1): float32 lost 7.4e-3 relative at
    c = 100 and 0.6 at 1e3; as m₁²·expm1(log(m₂/m₁²)) it is within 4e-6 (m₁'s own error, twice)."""
    variance = jax.jit(jax.value_and_grad(lambda c, k: BurrXII(c, k, np.float32(0.7)).variance))
    for c, k in BURR_SHAPES:
        got, slope = variance(np.float32(c), np.float32(k))
        assert got.dtype == jnp.float32
        expected = _burr_variance_by_quadrature(c, k, float(np.float32(0.7)))
        assert float(got) == pytest.approx(expected, rel=1e-5, abs=0), (c, k)
        assert np.isfinite(float(slope)) and float(slope) < 0  # sharper as c grows
    assert np.isinf(BurrXII(10.0, 0.2).variance)  # ck ≤ 2


def test_burr_variance_at_large_c_in_float64(x64):
    variance = jax.jit(lambda c, k: BurrXII(c, k, 0.7).variance)
    for c, k in BURR_SHAPES:  # m₂ − m₁² lost 1.3e-9 relative at c = 1e3
        expected = _burr_variance_by_quadrature(c, k, 0.7)
        assert float(variance(c, k)) == pytest.approx(expected, rel=5e-14, abs=0), (c, k)


def test_quantiles_at_the_ends_in_float32():
    """float32 π/2 exceeds π/2: the half-Cauchy quantile at 1 was −2.3e7; Student-t's bisection
    ended at ±1.3e7 instead of ±inf."""
    q = np.array([0.0, 0.3, 0.99, 1.0], np.float32)
    np.testing.assert_allclose(
        HalfCauchy(1.5).quantile(q), scipy.stats.halfcauchy.ppf(q, 0, 1.5), rtol=1e-5
    )
    np.testing.assert_allclose(
        StudentT(3.0, 0.0, 1.0).quantile(q), scipy.stats.t.ppf(q, 3.0), rtol=1e-5
    )


def test_large_shape_forms_at_edge_inputs_in_float32():
    """The large-shape branches far from the bulk (helper review): Stirling's Gamma density
    below w = a/2 (w/a underflowed to u = −1: −inf), the Temme cdf's gradient where x < a·eps
    or at 0 (NaN) and its NaN input, and the Burr XII variance where m₁² underflows (0, or
    NaN from 0·inf)."""
    log_theta = np.array([-5.0, -10.0, -20.0, -50.0], np.float32)
    prior = GammaPrior(50.0, 2.0)
    got = jax.vmap(jax.value_and_grad(prior.log_prob_log))(log_theta)
    lt = log_theta.astype(np.float64)
    expected = 50 * np.log(2.0) - scipy.special.gammaln(50.0) + 50 * lt - 2 * np.exp(lt)
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    np.testing.assert_allclose(got[1], 50 - 2 * np.exp(lt), rtol=1e-5)
    np.testing.assert_allclose(
        Gamma(50.0, 1.0).log_prob(np.float32(1e-7)),
        scipy.stats.gamma.logpdf(np.float64(np.float32(1e-7)), 50.0),
        rtol=1e-6,
    )
    x = np.array([-1.0, 0.0, 1e-30, 1.0, 50.0, 100.0, 1e30], np.float32)
    value, slope = jax.vmap(jax.value_and_grad(Gamma(100.0, 1.0).cdf))(x)
    at = np.maximum(x, 0).astype(np.float64)
    np.testing.assert_allclose(value, scipy.special.gammainc(100.0, at), atol=1e-7)
    np.testing.assert_allclose(slope, scipy.stats.gamma.pdf(at, 100.0), atol=1e-9)
    assert np.isnan(float(Gamma(100.0, 1.0).cdf(np.float32(np.nan))))
    tiny = BurrXII(np.float32(0.05), np.float32(100.0), np.float32(1.0)).variance
    assert float(tiny) == pytest.approx(1.2124533e-28, rel=1e-4)  # m₁² ≈ 1.4e-28·…: no underflow
    assert float(BurrXII(np.float32(1e-3), np.float32(5000.0)).variance) == 0.0  # not NaN
