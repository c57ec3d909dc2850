"""GMM distribution: exact linear-Gaussian conditioning (dense grid in 1-D, importance sampling in
2-D), sequential = batch updates, masks, dynamics, moments, marginals, KL, EM fit, validation;
and the GMM task priors (meta-prior, observation models, grid posterior)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from probnet.distributions.gmm import GMM, fit_gmm, gmm_kl_divergence
from probnet.priors.gmm import (
    GMMMetaPrior,
    GMMPosteriorTasks,
    GridPosterior,
    LinearGaussianDynamics,
    LinearGaussianObservations,
    NormalVarianceObservations,
)


def prior_1d():
    return GMM(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-1.5], [0.3], [2.0]]),
        jnp.array([[[0.3]], [[1.2]], [[0.5]]]),
    )


def prior_2d():
    covs = jnp.array(
        [[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.5]], [[2.0, 0.0], [0.0, 0.2]]]
    )
    return GMM.from_covariances(
        jnp.array([0.5, 0.3, 0.2]), jnp.array([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]), covs
    )


H2 = jnp.array([[1.0, 0.5], [-0.3, 1.2]])
R2 = jnp.array([[0.8, 0.2], [0.2, 0.5]])


def gaussian_loglik(x, H, R, y):
    """Σ_i log N(y_i; Hx, R) for points x `[P, d]`, in numpy float64."""
    x, H, R, y = (np.asarray(a, float) for a in (x, H, R, y))
    diff = y[None, :, :] - (x @ H.T)[:, None, :]
    prec = np.linalg.inv(R)
    quad = np.einsum("pni,ij,pnj->p", diff, prec, diff)
    return -0.5 * quad - 0.5 * len(y) * np.log(np.linalg.det(2 * np.pi * R))


def test_condition_matches_dense_grid_1d(x64):
    prior, H, R = prior_1d(), jnp.array([[1.5]]), jnp.array([[0.7]])
    y = jnp.array([[0.9], [1.6], [0.4]])
    grid = np.linspace(-12, 12, 240_001)

    @jax.jit
    def compute(prior, x):
        post = prior.condition_linear_gaussian(H, R, y)
        comp = prior.log_weights + prior.component_log_prob(x)
        return post, jax.nn.logsumexp(comp, -1), comp, post.log_prob(x)

    post, log_prior, comp, ours = compute(prior, jnp.asarray(grid[:, None]))
    log_post = np.asarray(log_prior) + gaussian_loglik(grid[:, None], H, R, y)
    dens = np.exp(log_post - log_post.max())
    dens /= np.trapezoid(dens, grid)
    ours = np.exp(np.asarray(ours))
    assert np.max(np.abs(ours - dens)) < 1e-8 * dens.max()
    mean = np.trapezoid(grid * dens, grid)
    var = np.trapezoid((grid - mean) ** 2 * dens, grid)
    np.testing.assert_allclose(post.mean[0], mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(post.covariance[0, 0], var, rtol=1e-8)
    # posterior weights = posterior mass of each component's term
    comp = np.exp(
        np.asarray(comp) + gaussian_loglik(grid[:, None], H, R, y)[:, None] - log_post.max()
    )
    mass = np.trapezoid(comp, grid, axis=0)
    np.testing.assert_allclose(post.weights, mass / mass.sum(), rtol=1e-8)


def test_condition_on_many_points_in_float32():
    """Component weights after n = 1e5 observations: p(k | y) ∝ w_k N(ȳ; Hμ_k, H²σ_k² + R/n).
    The evidence's quadratic form was a difference of two terms of order n (0.03 nats off)."""
    prior, H, R = prior_1d(), jnp.array([[1.5]]), jnp.array([[0.7]])
    y = 0.45 + np.sqrt(0.7) * np.random.default_rng(0).normal(size=(100_000, 1))
    y = y.astype(np.float32)
    post = prior.condition_linear_gaussian(H, R, jnp.asarray(y))
    assert post.log_weights.dtype == jnp.float32
    mean, var = np.array([-1.5, 0.3, 2.0]), np.array([0.3, 1.2, 0.5]) ** 2  # chol: std
    total = 1.5**2 * var + 0.7 / len(y)
    ybar = y.astype(np.float64).mean()
    expected = np.log([0.2, 0.5, 0.3]) - 0.5 * (ybar - 1.5 * mean) ** 2 / total
    expected = expected - 0.5 * np.log(total)
    expected -= scipy.special.logsumexp(expected)
    got = np.asarray(post.log_weights, np.float64)
    np.testing.assert_allclose(got - scipy.special.logsumexp(got), expected, atol=2e-3)


def test_condition_matches_importance_sampling_2d(x64):
    prior = prior_2d()
    y = jnp.array([[0.4, 1.0], [1.1, 0.2]])
    post, (x, comp) = jax.jit(
        lambda p: (
            p.condition_linear_gaussian(H2, R2, y),
            p.sample_with_components(jax.random.key(0), (400_000,)),
        )
    )(prior)
    logw = gaussian_loglik(x, H2, R2, y)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    ess = 1.0 / np.sum(w**2)
    assert ess > 20_000
    x = np.asarray(x)
    mean = w @ x
    cov = (w[:, None] * (x - mean)).T @ (x - mean)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(post.mean, mean, atol=5 * sd.max() / np.sqrt(ess))
    np.testing.assert_allclose(post.covariance, cov, atol=8 * sd.max() ** 2 / np.sqrt(ess))
    weights = np.array([w[np.asarray(comp) == k].sum() for k in range(3)])
    np.testing.assert_allclose(post.weights, weights, atol=5 / np.sqrt(ess))
    for k in range(3):  # each component's posterior mean
        sel = np.asarray(comp) == k
        if weights[k] > 0.05:
            comp_mean = w[sel] @ x[sel] / weights[k]
            np.testing.assert_allclose(post.means[k], comp_mean, atol=0.05)


def test_sequential_updates_equal_one_batch_update(x64):
    prior = prior_2d()
    y = jax.random.normal(jax.random.key(1), (5, 2)) + 0.5
    condition = jax.jit(lambda p, y, mask: p.condition_linear_gaussian(H2, R2, y, mask))
    batch = condition(prior, y, jnp.ones(5, bool))
    seq = prior
    for i in range(5):  # one observation at a time, through the same compiled function
        seq = condition(seq, y, jnp.arange(5) == i)
    for a, b in (
        (seq.log_weights, batch.log_weights),
        (seq.means, batch.means),
        (seq.chol, batch.chol),
    ):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)
    # a mask: padded (masked) observations are ignored, whatever their values
    padded = jnp.concatenate([y, 1e3 * jnp.ones((3, 2))])
    masked = prior.condition_linear_gaussian(H2, R2, padded, jnp.arange(8) < 5)  # unjitted
    np.testing.assert_allclose(masked.means, batch.means, atol=1e-12)
    np.testing.assert_allclose(masked.log_weights, batch.log_weights, atol=1e-12)
    none = condition(prior, y, jnp.zeros(5, bool))
    np.testing.assert_allclose(none.means, prior.means, atol=0)
    np.testing.assert_allclose(none.chol, prior.chol, atol=1e-15)
    np.testing.assert_allclose(none.log_weights, prior.log_weights, atol=1e-15)


def test_push_moments_marginals_and_kl(x64):
    prior = prior_2d()
    A, Q = jnp.array([[0.9, 0.2], [0.0, 1.1]]), jnp.array([[0.1, 0.02], [0.02, 0.2]])
    g0 = np.linspace(-10, 10, 4001)
    values = jnp.array([-1.0, 0.5, 2.5])
    p = GMM(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
    q = GMM(jnp.ones(1), jnp.array([[0.5, -0.5]]), 1.5 * jnp.eye(2)[None])

    @jax.jit
    def compute(prior, p, q):
        grid = jnp.stack(jnp.broadcast_arrays(g0[None, :], values[:, None]), -1)  # [3, G, 2]
        return dict(
            pushed=LinearGaussianDynamics(A, Q).push(prior),
            draws=prior.sample(jax.random.key(2), (200_000,)),
            joint=jnp.exp(prior.log_prob(grid)),
            marginal=jnp.exp(prior.marginal(1).log_prob(values)),
            sub=jnp.exp(prior.marginal([1]).log_prob(values[:, None])),
            self_kl=prior.kl_divergence(prior, jax.random.key(3)),
            kl=gmm_kl_divergence(p, q, jax.random.key(4), 100_000),
            moment_matched=prior.moment_match(),
        )

    out = compute(prior, p, q)
    pushed = out["pushed"]
    np.testing.assert_allclose(pushed.means, prior.means @ A.T, atol=1e-14)
    np.testing.assert_allclose(pushed.covariances, A @ prior.covariances @ A.T + Q, atol=1e-13)
    assert np.all(np.triu(np.asarray(pushed.chol), 1) == 0)
    # moments vs draws
    x = np.asarray(out["draws"])
    np.testing.assert_allclose(x.mean(0), prior.mean, atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), prior.covariance, atol=0.03)
    np.testing.assert_allclose(prior.variance, jnp.diag(prior.covariance), rtol=1e-12)
    # the marginal of coordinate 1 integrates the joint over coordinate 0
    integral = np.trapezoid(np.asarray(out["joint"]), g0, axis=1)
    np.testing.assert_allclose(out["marginal"], integral, rtol=1e-6)
    np.testing.assert_allclose(out["sub"], out["marginal"], rtol=1e-12)
    # KL: zero to itself; closed form between two Gaussians
    assert float(out["self_kl"]) == 0.0
    exact = 0.5 * (2 / 2.25 + 0.5 / 2.25 - 2 + 2 * np.log(2.25))
    est, se = out["kl"]
    assert abs(float(est) - exact) < 5 * float(se)
    # moment matching keeps mean and covariance
    np.testing.assert_allclose(out["moment_matched"].covariance, prior.covariance, atol=1e-12)


def test_fit_gmm_recovers_mixture(x64):
    truth = prior_1d()

    @jax.jit
    def compute(truth):
        fitted = fit_gmm(truth.sample(jax.random.key(5), (5_000,)), 3, jax.random.key(6))
        return fitted, truth.kl_divergence(fitted, jax.random.key(7))

    fitted, kl = compute(truth)
    order = jnp.argsort(fitted.means[:, 0])
    np.testing.assert_allclose(fitted.means[order, 0], truth.means[:, 0], atol=0.1)
    np.testing.assert_allclose(fitted.weights[order], truth.weights, atol=0.03)
    assert float(kl) < 0.01


def test_validation_messages():
    with pytest.raises(ValueError, match="weights must be >= 0"):
        GMM(jnp.array([0.5, -0.1]), jnp.zeros((2, 1)), jnp.ones((2, 1, 1)))
    with pytest.raises(ValueError, match=r"chol must have shape \[K=2, d=2, d=2\]"):
        GMM(jnp.ones(2), jnp.zeros((2, 2)), jnp.ones((2, 1, 1)))
    with pytest.raises(ValueError, match="positive diagonal"):
        GMM(jnp.ones(1), jnp.zeros((1, 1)), -jnp.ones((1, 1, 1)))
    with pytest.raises(ValueError, match="lower triangular"):
        GMM(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="means must be finite"):
        GMM(jnp.ones(1), jnp.full((1, 1), jnp.nan), jnp.ones((1, 1, 1)))
    prior = prior_1d()
    with pytest.raises(ValueError, match=r"H must have shape \[m, d=1\]"):
        prior.condition_linear_gaussian(jnp.eye(2), jnp.eye(2), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="R must be symmetric positive definite"):
        prior.condition_linear_gaussian(jnp.eye(1), -jnp.eye(1), jnp.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"mask must have shape \[n=2\]"):
        prior.condition_linear_gaussian(jnp.eye(1), jnp.eye(1), jnp.zeros((2, 1)), jnp.ones(3))
    with pytest.raises(ValueError, match="covariances must be symmetric positive definite"):
        GMM.from_covariances(jnp.ones(1), jnp.zeros((1, 2)), jnp.array([[[1.0, 1.5], [1.5, 1.0]]]))
    with pytest.raises(ValueError, match="not symmetric"):
        GMM.from_covariances(jnp.ones(1), jnp.zeros((1, 2)), jnp.array([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="Q must be symmetric positive semi-definite"):
        LinearGaussianDynamics(np.eye(2), -np.eye(2))
    LinearGaussianDynamics(np.eye(2), np.diag([1.0, 0.0]))  # noise in one direction only
    with pytest.raises(ValueError, match="std_high must be >= std_low"):
        GMMMetaPrior(3, 1, std_low=1.0, std_high=0.5)
    with pytest.raises(ValueError, match="R must be symmetric positive definite"):
        LinearGaussianObservations([[1.0]], [[0.0]])
    with pytest.raises(ValueError, match="dimension 2 but the meta-prior draws dimension 1"):
        GMMPosteriorTasks(GMMMetaPrior(3, 1), LinearGaussianObservations(np.eye(2), np.eye(2)))


def test_task_priors_and_grid_posterior(x64):
    meta = GMMMetaPrior(3, 2, concentration=0.5, std_low=0.2, std_high=1.0, correlation_df=3.0)
    tasks = GMMPosteriorTasks(meta, LinearGaussianObservations(H2, R2), 1, 3)
    batch = tasks.sample(jax.random.key(9), 64, 4)
    assert batch.y.shape == (64, 4, 2) and batch.theta.shape == (64, 2)
    n = np.asarray(batch.num_observations)
    assert n.min() >= 1 and n.max() <= 3
    assert np.all(np.asarray(batch.y)[~np.asarray(batch.mask)] == 0)
    sd = np.sqrt(np.diagonal(np.asarray(batch.prior.covariances), axis1=-2, axis2=-1))
    assert np.all((sd >= 0.2 - 1e-12) & (sd <= 1.0 + 1e-12))
    assert np.all(np.triu(np.asarray(batch.prior.chol), 1) == 0)
    w = np.asarray(batch.prior.weights)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)

    # variance model: grid posterior vs brute-force quadrature on a uniform grid (numpy)
    obs = NormalVarianceObservations()
    prior = prior_1d()
    y = jnp.array([[0.3], [-1.2], [2.0], [0.0]])
    mask = jnp.array([True, True, True, False])
    post, ll = jax.jit(
        lambda p, t: (obs.exact_posterior(p, y, mask), obs.log_likelihood(t, y, mask))
    )(prior, jnp.array([0.4]))
    assert isinstance(post, GridPosterior)
    grid = np.linspace(-15, 15, 600_001)
    s = 0.3**2 + 1.2**2 + 2.0**2
    wk, mu, sdk = (np.asarray(a) for a in (prior.weights, prior.means[:, 0], prior.chol[:, 0, 0]))
    log_prior = np.log(
        np.sum(
            wk * np.exp(-0.5 * ((grid[:, None] - mu) / sdk) ** 2) / (sdk * np.sqrt(2 * np.pi)), 1
        )
    )
    log_post = log_prior - 1.5 * grid - 0.5 * s * np.exp(-grid)
    dens = np.exp(log_post - log_post.max())
    dens /= np.trapezoid(dens, grid)
    mean = np.trapezoid(grid * dens, grid)
    np.testing.assert_allclose(post.mean[0], mean, rtol=1e-9)
    var = np.trapezoid((grid - mean) ** 2 * dens, grid)
    np.testing.assert_allclose(post.covariance[0, 0], var, rtol=1e-8)
    expected = -1.5 * np.log(2 * np.pi) - 1.5 * 0.4 - 0.5 * s * np.exp(-0.4)
    np.testing.assert_allclose(ll, expected, rtol=1e-12)
