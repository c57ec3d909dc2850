import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.stats

from probnet.distributions import BarDistribution, bar_borders


@pytest.fixture
def bar(x64):
    borders = jnp.array([-2.0, -1.0, -0.3, 0.0, 0.5, 1.5, 3.0])
    logits = jnp.array([0.3, -0.2, 1.0, 0.1, -1.0, 0.5])
    return BarDistribution(borders, logits)


def _density(bar):
    log_prob = jax.jit(lambda y: bar.log_prob(y))
    return lambda y: float(jnp.exp(log_prob(y)))


def test_density_integrates_to_one_over_the_real_line(bar):
    f = _density(bar)
    points = [float(b) for b in bar.borders]
    total = scipy.integrate.quad(f, -np.inf, np.inf, points=None, limit=200)[0]
    inner = scipy.integrate.quad(f, points[0], points[-1], points=points[1:-1], limit=200)[0]
    left = scipy.integrate.quad(f, -np.inf, points[0])[0]
    right = scipy.integrate.quad(f, points[-1], np.inf)[0]
    assert inner + left + right == pytest.approx(1.0, abs=1e-8)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_cdf_is_the_integral_of_the_density_tails_included(bar):
    f = _density(bar)
    ys = [-6.0, -2.5, -1.5, -0.1, 0.7, 2.0, 3.5, 7.0]
    cdf = bar.cdf(jnp.array(ys))
    for y, c in zip(ys, cdf, strict=True):
        integral = scipy.integrate.quad(f, -np.inf, y, limit=200)[0]
        assert float(c) == pytest.approx(integral, abs=1e-7), y


def test_quantile_inverts_cdf_tails_included(bar):
    q = jnp.array([1e-4, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 1 - 1e-4])
    np.testing.assert_allclose(bar.cdf(bar.quantile(q)), q, atol=1e-10)
    y = jnp.array([-5.0, -1.7, 0.2, 2.9, 4.0])
    np.testing.assert_allclose(bar.quantile(bar.cdf(y)), y, atol=1e-8)


def test_mean_and_variance_are_moments_of_the_density(bar):
    density = _density(bar)
    f = lambda y, p: density(y) * y**p
    mean = scipy.integrate.quad(f, -np.inf, np.inf, args=(1,), limit=200)[0]
    second = scipy.integrate.quad(f, -np.inf, np.inf, args=(2,), limit=200)[0]
    assert float(bar.mean) == pytest.approx(mean, abs=1e-6)
    assert float(bar.variance) == pytest.approx(second - mean**2, abs=1e-6)


def test_variance_is_shift_invariant_in_float32():
    """Borders far from 0 relative to their spread: E[y²] − E[y]² in float32 gave 0; moments
    about the mean give the variance of the unshifted bars (batched logits)."""
    borders = np.array([-2.0, -1.0, -0.3, 0.0, 0.5, 1.5, 3.0], np.float32)
    logits = jnp.array([[0.3, -0.2, 1.0, 0.1, -1.0, 0.5], [2.0, 0.0, 0.0, 0.0, 0.0, -3.0]])
    near = BarDistribution(jnp.asarray(borders), logits).variance
    far = BarDistribution(jnp.asarray(borders + 1000.0), logits).variance
    assert far.shape == (2,) and far.dtype == jnp.float32
    np.testing.assert_allclose(far, near, rtol=1e-3)


def test_samples_follow_the_cdf_tails_included(bar):
    # KS test at level 0.001 on 20000 draws; the tail buckets hold 28% of the mass here
    draws = np.asarray(bar.sample(jax.random.key(0), (20000,)))
    cdf = jax.jit(lambda y: bar.cdf(y))
    assert scipy.stats.kstest(draws, lambda y: np.asarray(cdf(jnp.asarray(y)))).pvalue > 1e-3
    tails = np.mean((draws < -1.0) | (draws > 1.5))
    p = np.asarray(jax.nn.softmax(bar.logits))
    assert tails == pytest.approx(p[0] + p[-1], abs=0.015)
    assert draws.min() < -2.0 and draws.max() > 3.0  # beyond the outer borders


def test_batched_logits():
    borders = jnp.linspace(-1, 1, 11)
    logits = jax.random.normal(jax.random.key(0), (3, 4, 10))
    bar = BarDistribution(borders, logits)
    assert bar.batch_shape == (3, 4)
    assert bar.log_prob(jnp.zeros((3, 4))).shape == (3, 4)
    assert bar.sample(jax.random.key(1), (5,)).shape == (5, 3, 4)
    assert bar.quantile(jnp.full((3, 4), 0.3)).shape == (3, 4)


def test_100_bar_fit_of_standard_normal_is_within_001_nats():
    # Borders from N(0, 1) samples, logits fitted by maximum likelihood; the expected NLL under
    # N(0, 1) (by quadrature) is within 0.01 nats of the entropy of N(0, 1).
    samples = jax.random.normal(jax.random.key(0), (100_000,))
    borders = bar_borders(samples, 100)
    train = jax.random.normal(jax.random.key(1), (100_000,))
    opt = optax.adam(0.05)

    def nll(logits):
        return -jnp.mean(BarDistribution(borders, logits).log_prob(train))

    @jax.jit
    def fit(logits):
        def step(carry, _):
            logits, state = carry
            updates, state = opt.update(jax.grad(nll)(logits), state)
            return (optax.apply_updates(logits, updates), state), None

        return jax.lax.scan(step, (logits, opt.init(logits)), None, length=300)[0][0]

    bar = BarDistribution(borders, fit(jnp.zeros(100)))
    grid = np.linspace(-8, 8, 40001)
    density = scipy.stats.norm.pdf(grid)
    cross_entropy = -np.trapezoid(density * np.asarray(bar.log_prob(jnp.asarray(grid))), grid)
    assert cross_entropy - scipy.stats.norm.entropy() < 0.01


def test_bad_input():
    with pytest.raises(ValueError, match="logits"):
        BarDistribution(jnp.linspace(0, 1, 5), jnp.zeros(5))
    with pytest.raises(ValueError, match="num_bars"):
        bar_borders(jnp.arange(10.0), 1)
    with pytest.raises(ValueError, match="samples"):
        bar_borders(jnp.array([1.0, jnp.nan, 2.0]), 2)
