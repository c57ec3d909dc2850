"""Reference models of probnet.samplers: the Bayesian MLP and the fully Bayesian GP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from probnet import gp
from probnet.kernels import RBF
from probnet.samplers import (
    BayesianGP,
    BayesianMLP,
    GammaPrior,
    LogNormalPrior,
    gp_logdensity,
    posterior_predictive_log_prob,
)

# One xdist worker per file (`make test` runs `-n 2 --dist loadgroup`): the module-scoped
# fixtures then compile their sampler once, not once per worker.
pytestmark = pytest.mark.xdist_group("samplers_models")

# ----------------------------------------------------------------------------- Bayesian MLP


def test_bnn_prior_matches_its_specification():
    bnn = BayesianMLP(num_features=2, hidden_widths=(16, 8), activation="relu", weight_std=1.5)
    assert bnn.num_params == (2 + 1) * 16 + (16 + 1) * 8 + (8 + 1) * 1
    draws = jax.jit(jax.vmap(bnn.init_params))(jax.random.split(jax.random.key(0), 4000))
    for (w, b), fan_in in zip(draws, (2, 16, 8), strict=True):
        np.testing.assert_allclose(np.std(w), 1.5 / np.sqrt(fan_in), rtol=0.05)
        np.testing.assert_allclose(np.std(b), 1.5, rtol=0.05)  # bias_std defaults to weight_std
    params = jax.tree.map(lambda v: v[0], draws)
    expected = sum(
        scipy.stats.norm.logpdf(np.asarray(w), scale=1.5 / np.sqrt(fan_in)).sum()
        + scipy.stats.norm.logpdf(np.asarray(b), scale=1.5).sum()
        for (w, b), fan_in in zip(params, (2, 16, 8), strict=True)
    )
    np.testing.assert_allclose(jax.jit(bnn.log_prior)(params), expected, rtol=1e-5)
    x = jnp.ones((5, 2))
    assert bnn.forward(params, x).shape == (5,)


def test_bnn_rejects_bad_configuration():
    with pytest.raises(ValueError, match="activation"):
        BayesianMLP(num_features=1, activation="swish")
    with pytest.raises(ValueError, match="noise_std"):
        BayesianMLP(num_features=1, noise_std=0.0)
    with pytest.raises(ValueError, match="hidden_widths"):
        BayesianMLP(num_features=1, hidden_widths=[8])


def test_gamma_hyperprior_log_draws_are_finite():
    """Small concentrations: log draws stay finite (the log of a float32 gamma draw
    underflowed to -inf for 42% of draws at concentration 0.01) and follow log Gamma."""
    draws = np.asarray(GammaPrior(0.01, 2.0).sample_log(jax.random.key(0), (4000,)))
    assert np.all(np.isfinite(draws))
    ref = scipy.stats.loggamma(0.01, loc=-np.log(2.0))  # log of a Gamma(0.01, rate 2) draw
    assert scipy.stats.kstest(draws.astype(np.float64), ref.cdf).pvalue > 0.01


def test_bnn_posterior_predictive():
    bnn = BayesianMLP(num_features=1, hidden_widths=(8,), activation="tanh", noise_std=0.1)
    key_true, key_x, key_noise, key_run = jax.random.split(jax.random.key(1), 4)
    truth = bnn.init_params(key_true)  # a well-specified task: y from the prior's own network
    x = jax.random.uniform(key_x, (24, 1), minval=-1.0, maxval=1.0)
    y = bnn.forward(truth, x) + 0.1 * jax.random.normal(key_noise, (24,))
    result = bnn.sample_posterior(
        key_run, x, y, num_chains=2, num_warmup=300, num_samples=300, warn=False
    )
    assert jax.tree.leaves(result.draws)[0].shape[:2] == (2, 300)
    x_test = jnp.linspace(-1.0, 1.0, 7)[:, None]
    y_test = bnn.forward(truth, x_test)
    predictive = bnn.predictive(result.draws, x_test)
    assert predictive.batch_shape == (7,)
    rmse = float(jnp.sqrt(jnp.mean((predictive.mean - y_test) ** 2)))
    assert rmse < 0.3, rmse
    log_prob = bnn.predictive_log_prob(result.draws, x_test, y_test)
    assert log_prob.shape == (7,) and bool(jnp.all(jnp.isfinite(log_prob)))
    np.testing.assert_allclose(log_prob, predictive.log_prob(y_test), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- Bayesian GP


@pytest.fixture(scope="module")
def gp_data():
    key_x, key_y = jax.random.split(jax.random.key(2))
    x = jax.random.uniform(key_x, (24, 1))
    y = gp.sample_prior(key_y, RBF(variance=1.0, lengthscale=0.2), x, 1, noise_variance=0.01)[0]
    return x, y


def test_gp_logdensity_is_prior_plus_marginal_likelihood(gp_data):
    x, y = gp_data
    model = BayesianGP(
        kernel=RBF(),
        lengthscale_prior=LogNormalPrior(-1.0, 0.5),
        variance_prior=GammaPrior(2.0, 2.0),
    )
    params = {
        "log_lengthscale": jnp.log(0.3),
        "log_variance": jnp.log(0.8),
        "log_noise_variance": jnp.log(0.02),
    }
    logdensity = jax.jit(gp_logdensity)
    lml = gp.log_marginal_likelihood(RBF(variance=0.8, lengthscale=0.3), 0.02, x, y)
    log_prior = (
        scipy.stats.norm.logpdf(np.log(0.3), -1.0, 0.5)
        + scipy.stats.gamma.logpdf(0.8, 2.0, scale=0.5)
        + np.log(0.8)  # density of log θ: Jacobian
        + scipy.stats.norm.logpdf(np.log(0.02), np.log(0.01), 1.0)
    )
    np.testing.assert_allclose(logdensity(params, model, x, y), lml + log_prior, rtol=1e-5)
    mask = jnp.arange(24) < 20
    masked = gp.log_marginal_likelihood(RBF(variance=0.8, lengthscale=0.3), 0.02, x[:20], y[:20])
    np.testing.assert_allclose(logdensity(params, model, x, y, mask), masked + log_prior, rtol=1e-5)
    far = dict(params, log_variance=jnp.asarray(50.0))
    assert logdensity(far, model, x, y) == -jnp.inf


def test_bayesian_gp_posterior_predictive(gp_data):
    x, y = gp_data
    model = BayesianGP(kernel=RBF())
    settings = dict(num_chains=2, num_warmup=300, num_samples=300, warn=False)
    result = model.sample_posterior(jax.random.key(3), x, y, **settings)
    assert set(result.draws) == {"log_lengthscale", "log_variance", "log_noise_variance"}
    assert result.max_rhat < 1.05
    x_test = jnp.linspace(0.0, 1.0, 9)[:, None]
    mixture = model.predictive(result.draws, x, y, x_test)
    exact_mean, exact_var = gp.predict(RBF(variance=1.0, lengthscale=0.2), 0.01, x, y, x_test)
    # The hyperparameter posterior is broad with 24 points; the predictive mean must still be
    # close to the one at the true hyperparameters (within two predictive sds).
    assert bool(jnp.all(jnp.abs(mixture.mean - exact_mean) < 2 * jnp.sqrt(exact_var)))
    y_test = exact_mean
    flat = posterior_predictive_log_prob(
        lambda p, xt, yt: _gp_point_log_prob(model, p, x, y, xt, yt), result.draws, x_test, y_test
    )
    np.testing.assert_allclose(mixture.log_prob(y_test), flat, rtol=1e-4, atol=1e-4)
    # New data of the same shape: the compiled sampler is reused.
    again = model.sample_posterior(jax.random.key(4), x, -y, **settings)
    assert again.compile_time == 0.0


def _gp_point_log_prob(model, params, x, y, x_test, y_test):
    kernel, noise = model.with_hyperparameters(params)
    post = gp.condition(kernel, noise, x, y)
    mean, var = post.mean(x_test), post.variance(x_test)
    return -0.5 * (y_test - mean) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)
