import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from probnet import gp
from probnet.distributions import Discrete, Gamma, LogUniform, Uniform
from probnet.kernels import RBF, Linear, Matern32
from probnet.priors import BNNPrior, GPPrior, LinearPrior, MixturePrior, Task


def gp_prior(**kw):
    return GPPrior(RBF(1.0, 0.2), 0.01, num_features=1, inputs=Uniform(0.0, 1.0), **kw)


def test_batch_shapes_and_same_key_same_batch():
    prior = gp_prior()
    a = prior.sample(jax.random.key(0), 5, 12)
    b = prior.sample(jax.random.key(0), 5, 12)
    c = prior.sample(jax.random.key(1), 5, 12)
    assert a.x.shape == (5, 12, 1) and a.y.shape == (5, 12)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.y, c.y)
    # task i is the task drawn from split(key)[i]
    one = prior.sample_task(jax.random.split(jax.random.key(0), 5)[3], 12)
    np.testing.assert_allclose(one.y, a.y[3], atol=1e-6)


def test_repeated_sampling_traces_once(monkeypatch):
    traces = []
    original = GPPrior.sample_batch

    def counting(self, keys, num_points):
        traces.append(num_points)
        return original(self, keys, num_points)

    monkeypatch.setattr(GPPrior, "sample_batch", counting)
    prior = gp_prior()
    for i in range(5):
        prior.sample(jax.random.key(i), 4, 7)
    # a new prior object with the same structure but other values reuses the compiled function
    GPPrior(RBF(2.0, 0.5), 0.1, 1).sample(jax.random.key(9), 4, 7)
    assert traces == [7]


def test_gp_prior_samples_have_kernel_covariance():
    # Whitening each task by the Cholesky factor of its own K(x, x) + σ²I gives i.i.d. N(0, 1)
    # values exactly when y has that covariance; KS test at level 0.001 on 4000 values, and the
    # sample variance within 5 standard errors (sd of s² is sqrt(2/n) = 0.022).
    prior = GPPrior(Matern32(1.5, 0.3), 0.05, num_features=2, inputs=Uniform(-1.0, 1.0))
    batch = prior.sample(jax.random.key(2), 200, 20)

    def whiten(x, y):
        cov = prior.kernel(x, x) + 0.05 * jnp.eye(20)
        return jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(cov), y, lower=True)

    z = np.asarray(jax.vmap(whiten)(batch.x, batch.y)).ravel()
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    assert np.all((batch.x >= -1) & (batch.x <= 1))


def test_hyperprior_draws_follow_their_distributions():
    prior = gp_prior(
        lengthscale_prior=Gamma(2.0, 8.0),
        variance_prior=LogUniform(0.1, 10.0),
        noise_prior=Uniform(0.001, 0.1),
    )
    keys = jax.random.split(jax.random.key(0), 3000)
    kernels, noises = jax.vmap(prior.sample_hyperparameters)(keys)
    # KS tests against SciPy's own distributions, level 0.001
    ls = np.asarray(kernels.lengthscale)
    assert scipy.stats.kstest(ls, scipy.stats.gamma(2.0, scale=1 / 8.0).cdf).pvalue > 1e-3
    var = np.asarray(kernels.variance)
    assert scipy.stats.kstest(var, scipy.stats.loguniform(0.1, 10.0).cdf).pvalue > 1e-3
    noise = np.asarray(noises)
    assert scipy.stats.kstest(noise, scipy.stats.uniform(0.001, 0.099).cdf).pvalue > 1e-3
    # the distributions' own cdf agrees with SciPy's
    grid = np.linspace(0.01, 1, 7)
    np.testing.assert_allclose(
        Gamma(2.0, 8.0).cdf(grid), scipy.stats.gamma(2, scale=1 / 8).cdf(grid), atol=1e-5
    )


def test_discrete_hyperprior_frequencies():
    prior = gp_prior(lengthscale_prior=Discrete([0.1, 0.3, 1.0], [0.2, 0.3, 0.5]))
    kernels, _ = jax.vmap(prior.sample_hyperparameters)(jax.random.split(jax.random.key(1), 4000))
    counts = [np.sum(np.isclose(kernels.lengthscale, v)) for v in (0.1, 0.3, 1.0)]
    assert sum(counts) == 4000
    assert scipy.stats.chisquare(counts, [800, 1200, 2000]).pvalue > 1e-3


def test_exact_predictive_fixed_hyperparameters(x64):
    prior = GPPrior(RBF(1.0, 0.2), 0.01, 1)
    task = prior.sample(jax.random.key(0), 1, 10)
    x, y = task.x[0], task.y[0]
    pred = prior.predictive(x[:6], y[:6], x[6:])
    mean, var = gp.predict(RBF(1.0, 0.2), 0.01, x[:6], y[:6], x[6:])
    np.testing.assert_allclose(pred.mean, mean, atol=1e-12)
    np.testing.assert_allclose(pred.variance, var, atol=1e-12)


def test_exact_predictive_discrete_hyperprior_is_weighted_mixture(x64):
    lengths, probs = [0.1, 0.3, 1.0], [0.5, 0.3, 0.2]
    prior = gp_prior(lengthscale_prior=Discrete(lengths, probs))
    assert prior.has_exact_predictive
    task = prior.sample(jax.random.key(3), 1, 12)
    x, y = np.asarray(task.x[0]), np.asarray(task.y[0])
    mix = prior.predictive(x[:8], y[:8], x[8:])
    # independent: Bayes' rule over the three lengthscales with SciPy densities
    log_w, dens = [], []
    for ls, p in zip(lengths, probs, strict=True):
        K = np.exp(-0.5 * (x[:8] - x[:8].T) ** 2 / ls**2) + 0.01 * np.eye(8)
        log_w.append(np.log(p) + scipy.stats.multivariate_normal(np.zeros(8), K).logpdf(y[:8]))
        m, v = gp.predict(RBF(1.0, ls), 0.01, x[:8], y[:8], x[8:])
        dens.append(scipy.stats.norm(m, np.sqrt(v)).pdf(y[8:]))
    w = np.exp(np.array(log_w) - scipy.special.logsumexp(log_w))
    expected = np.log(np.sum(w[:, None] * np.array(dens), axis=0))
    np.testing.assert_allclose(mix.log_prob(y[8:]), expected, atol=1e-8)
    # with a continuous hyperprior there is no exact predictive
    assert not gp_prior(lengthscale_prior=Gamma(2.0, 8.0)).has_exact_predictive
    with pytest.raises(NotImplementedError):
        gp_prior(lengthscale_prior=Gamma(2.0, 8.0)).predictive(x[:8], y[:8], x[8:])


def test_linear_prior_predictive_equals_gp_with_linear_kernel(x64):
    # Bayesian linear regression with φ(x) = [1, x] is a GP with kernel σ_w²(1 + x·x')
    prior = LinearPrior(num_features=2, weight_variance=0.7, noise_variance=0.2)
    task = prior.sample(jax.random.key(4), 1, 15)
    x, y = task.x[0], task.y[0]
    mask = jnp.arange(10) < 6
    pred = prior.predictive(x[:10], y[:10], x[10:], context_mask=mask)
    kernel = Linear(0.7, 1.0) + RBF(0.7, 1e6)  # the RBF with a huge lengthscale is the constant
    mean, var = gp.predict(kernel, 0.2, x[:6], y[:6], x[10:])
    np.testing.assert_allclose(pred.mean, mean, atol=1e-6)
    np.testing.assert_allclose(pred.variance, var, atol=1e-6)


def test_linear_prior_weights_are_gaussian():
    # y at x = 0 (bias only, no noise in the limit) has variance weight_variance + noise_variance
    prior = LinearPrior(
        num_features=1, weight_variance=2.0, noise_variance=0.5, inputs=Uniform(0.0, 1e-6)
    )
    y = np.asarray(prior.sample(jax.random.key(0), 4000, 1).y[:, 0])
    assert scipy.stats.kstest(y / np.sqrt(2.5), "norm").pvalue > 1e-3


def test_bnn_prior_draws_varied_finite_functions():
    prior = BNNPrior(num_features=2, max_depth=3, max_width=32)
    batch = prior.sample(jax.random.key(0), 64, 50)
    assert batch.x.shape == (64, 50, 2) and np.all(np.isfinite(batch.y))
    stds = np.asarray(batch.y.std(axis=1))
    assert stds.min() > 0 and stds.max() / stds.min() > 3  # random scales and shapes
    # with zero inputs spread, fixed noise: the within-task variance is noise² only
    flat = BNNPrior(num_features=1, weight_std=1.0, noise_std=0.1, inputs=Uniform(0.0, 1e-7))
    y = np.asarray(flat.sample(jax.random.key(1), 200, 40).y)
    resid = (y - y.mean(axis=1, keepdims=True)).ravel()
    assert resid.std() == pytest.approx(0.1, rel=0.05)


def test_mixture_prior_draws_each_component_at_its_weight():
    # component 0 puts x in [0, 1], component 1 in [-1, 0): the sign tells them apart
    a = GPPrior(RBF(), 0.1, 1, inputs=Uniform(0.0, 1.0))
    b = LinearPrior(1, inputs=Uniform(-1.0, -0.001))
    mix = MixturePrior([a, b], weights=[0.3, 0.7])
    batch = mix.sample(jax.random.key(0), 2000, 3)
    from_a = np.asarray(batch.x[:, 0, 0] > 0)
    assert np.all((batch.x[..., 0] > 0) == from_a[:, None])  # a task is from one component
    assert scipy.stats.binomtest(int(from_a.sum()), 2000, 0.3).pvalue > 1e-3


def test_context_mask():
    task = Task(jnp.zeros((3, 5, 1)), jnp.zeros((3, 5)))
    mask = task.context_mask(jnp.array([0, 2, 5]))
    np.testing.assert_array_equal(mask.sum(1), [0, 2, 5])
    assert task.context_mask(3).shape == (3, 5)


def test_bad_input_names_the_argument():
    prior = gp_prior()
    with pytest.raises(ValueError, match="num_points"):
        prior.sample(jax.random.key(0), 4, 0)
    with pytest.raises(ValueError, match="num_tasks"):
        prior.sample(jax.random.key(0), 0, 4)
    with pytest.raises(ValueError, match="noise_variance"):
        GPPrior(RBF(), -1.0, 1)
    with pytest.raises(ValueError, match="lengthscale"):
        GPPrior(RBF(1.0, jnp.ones(3)), 0.1, num_features=2)
    with pytest.raises(ValueError, match="lengthscale_prior"):
        GPPrior(RBF() + RBF(), 0.1, 1, lengthscale_prior=Gamma(1.0, 1.0))
    with pytest.raises(ValueError, match="inputs"):
        GPPrior(RBF(), 0.1, 2, inputs=Uniform(jnp.zeros(3), jnp.ones(3)))
    with pytest.raises(ValueError, match="activations"):
        BNNPrior(1, activations=("swish",))
    with pytest.raises(ValueError, match="num_features"):
        MixturePrior([gp_prior(), LinearPrior(2)])
    for weights in ([-1.0, 2.0], [jnp.nan, 1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="weights"):
            MixturePrior([gp_prior(), gp_prior()], weights=jnp.array(weights))
    for noise_prior in (Uniform(-1.0, -0.5), Discrete([-0.1, 0.3])):
        with pytest.raises(ValueError, match="noise_prior must put no mass on values <= 0"):
            GPPrior(RBF(), 0.1, 1, noise_prior=noise_prior)
    with pytest.raises(ValueError, match="values must be finite"):
        Discrete([float("nan"), 1.0])
    with pytest.raises(ValueError, match="noise_std"):
        BNNPrior(1, noise_std=float("nan"))
    with pytest.raises(ValueError, match="weight_std"):
        BNNPrior(1, weight_std=-1.0)
    assert np.all(np.isfinite(BNNPrior(1, noise_std=0.0).sample(jax.random.key(0), 2, 4).y))
    with pytest.raises(ValueError, match=r"context_mask must be a boolean array of shape \[3\]"):
        LinearPrior(1).predictive(
            jnp.ones((3, 1)), jnp.ones(3), jnp.ones((2, 1)), jnp.ones(1, bool)
        )
    with pytest.raises(ValueError, match="x_context"):
        LinearPrior(2).predictive(jnp.ones((3, 1)), jnp.ones(3), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="y_context"):
        gp_prior().predictive(jnp.ones((3, 1)), jnp.array([1.0, jnp.nan, 0.0]), jnp.ones((2, 1)))


SHARDED = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from jax.sharding import Mesh
    from probnet.distributions import Discrete
    from probnet.kernels import RBF
    from probnet.priors import BNNPrior, GPPrior, MixturePrior
    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    gp = GPPrior(RBF(1.0, 0.2), 0.01, 1, lengthscale_prior=Discrete([0.1, 0.3, 1.0]))
    for prior in (gp, MixturePrior([gp, BNNPrior(1)])):
        plain = prior.sample(jax.random.key(7), 16, 24)
        sharded = prior.sample(jax.random.key(7), 16, 24, mesh=mesh)
        assert len(sharded.y.sharding.device_set) == 4, sharded.y.sharding
        shards = sharded.y.addressable_shards
        assert sorted(s.data.shape[0] for s in shards) == [4, 4, 4, 4]
        np.testing.assert_allclose(np.asarray(sharded.y), np.asarray(plain.y), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(sharded.x), np.asarray(plain.x))
    try:
        gp.sample(jax.random.key(0), 6, 4, mesh=mesh)
    except ValueError as e:
        assert "divisible" in str(e)
    else:
        raise AssertionError("expected an error for 6 tasks on 4 devices")
    print("OK")
    """
)


def test_sharded_sampling_equals_unsharded_on_4_fake_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
