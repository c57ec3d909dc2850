"""Distribution Transformer: valid output for extreme inputs, permutation properties, padding,
one compilation for every number of observations, loss, filtering, evaluation, configs."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probnet.distributions.gmm import GMM
from probnet.dt import DistributionTransformer, dt_loss, exact_filter, filter
from probnet.dt.evaluation import evaluate_posteriors
from probnet.priors.gmm import (
    GMMMetaPrior,
    GMMPosteriorTasks,
    LinearGaussianDynamics,
    LinearGaussianObservations,
)

ROOT = Path(__file__).resolve().parents[1]


def randomised(model, key, scale=0.5):
    """The model with a random (non-zero) head, so that tests see a non-trivial update."""
    head = model.head
    k1, k2 = jax.random.split(key)
    return eqx.tree_at(
        lambda m: (m.head.weight, m.head.bias),
        model,
        (
            scale * jax.random.normal(k1, head.weight.shape),
            scale * jax.random.normal(k2, head.bias.shape),
        ),
    )


@pytest.fixture(scope="module")
def model2d():
    model = DistributionTransformer(2, width=16, depth=1, num_heads=2, key=jax.random.key(0))
    return randomised(model, jax.random.key(1))


@pytest.fixture(scope="module")
def call():
    return eqx.filter_jit(lambda m, p, y, mask: m(p, y, mask))


def prior2d(key, k=3):
    return GMMMetaPrior(k, 2, correlation_df=3.0).sample(key)


def assert_valid(gmm: GMM):
    w = np.asarray(gmm.weights, np.float64)
    assert np.all(np.isfinite(np.asarray(gmm.log_weights)[w > 0]))
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
    chol = np.asarray(gmm.chol)
    assert np.all(np.isfinite(chol)) and np.all(np.isfinite(np.asarray(gmm.means)))
    assert np.all(np.triu(chol, 1) == 0)
    assert np.all(np.diagonal(chol, axis1=1, axis2=2) > 0)
    cov = np.asarray(gmm.covariances, np.float64)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2))
    assert np.all(np.isfinite(np.linalg.cholesky(cov)))  # the covariances factorise


def test_extreme_inputs_give_valid_gmms(model2d, call):
    cases = [
        GMM(  # huge and tiny scales, far-away means, near-degenerate weights, correlations
            jnp.array([1 - 2e-9, 1e-9, 1e-9]),
            jnp.array([[1e4, -1e4], [0.0, 0.0], [3.0, 1e3]]),
            jnp.array(
                [[[1e-4, 0.0], [0.9e-4, 1e-6]], [[1e3, 0.0], [-5e2, 1e2]], [[1.0, 0], [0, 1.0]]]
            ),
        ),
        GMM(jnp.array([0.5, 0.5, 0.0]), jnp.zeros((3, 2)), jnp.broadcast_to(jnp.eye(2), (3, 2, 2))),
    ]
    for prior in cases:
        for y in (jnp.array([[1e5, -1e5], [0.0, 0.0]] * 2 + [[1e-5, 1.0]]), jnp.zeros((5, 2))):
            assert_valid(call(model2d, prior, y, jnp.ones(5, bool)))
            assert_valid(call(model2d, prior, y, jnp.zeros(5, bool)))


def test_permutation_properties_and_padding(model2d, call):
    prior = prior2d(jax.random.key(2))
    y = jax.random.normal(jax.random.key(3), (5, 2))
    mask = jnp.ones(5, bool)
    out = call(model2d, prior, y, mask)
    assert_valid(out)
    assert float(jnp.max(jnp.abs(out.means - prior.means))) > 1e-3  # a real update
    # permuting the components permutes the output components
    perm = jnp.array([2, 0, 1])
    permuted = jax.tree.map(lambda x: x[perm], prior)
    out_p = call(model2d, permuted, y, mask)
    for a, b in zip(jax.tree.leaves(out_p), jax.tree.leaves(out), strict=True):
        np.testing.assert_allclose(a, b[perm], atol=2e-5, rtol=2e-5)
    # permuting the observations changes nothing
    out_o = call(model2d, prior, y[::-1], mask)
    for a, b in zip(jax.tree.leaves(out_o), jax.tree.leaves(out), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # padding: 3 real observations padded to 5 with garbage (masked) = the 3 alone
    pad_mask = jnp.array([True, True, True, False, False])
    garbage = y.at[3:].set(1e6)
    alone = call(model2d, prior, y[:3], jnp.ones(3, bool))
    padded = call(model2d, prior, garbage, pad_mask)
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(padded), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # zero observations (all masked) = no observations at all
    none = call(model2d, prior, garbage, jnp.zeros(5, bool))
    recon = eqx.filter_jit(lambda m, p: m.reconstruct(p))(model2d, prior)
    for a, b in zip(jax.tree.leaves(none), jax.tree.leaves(recon), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_zero_head_is_identity_and_compiles_once():
    model = DistributionTransformer(1, width=16, depth=1, num_heads=2, key=jax.random.key(4))
    prior = GMMMetaPrior(3, 1).sample(jax.random.key(5))
    traces = []

    @eqx.filter_jit
    def run(m, p, y, mask):
        traces.append(1)
        return m(p, y, mask)

    y = jnp.arange(4.0)[:, None]
    for n in range(5):
        out = run(model, prior, y, jnp.arange(4) < n)
        np.testing.assert_allclose(out.means, prior.means, atol=1e-6)
        np.testing.assert_allclose(out.chol, prior.chol, rtol=1e-6)
        np.testing.assert_allclose(out.log_weights, prior.log_weights, atol=1e-6)
    assert len(traces) == 1
    with pytest.raises(ValueError, match=r"y must have shape \[N, obs_dim=1\]"):
        model(prior, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="y must be finite"):
        model(prior, jnp.array([[jnp.nan], [1.0]]))
    model(prior, jnp.array([[jnp.nan], [1.0]]), jnp.array([False, True]))  # masked out: fine
    with pytest.raises(ValueError, match="width \\(10\\) must be a multiple of num_heads"):
        DistributionTransformer(1, width=10, num_heads=4, key=jax.random.key(0))


def test_loss_filter_and_evaluation(x64):
    tasks = GMMPosteriorTasks(
        GMMMetaPrior(3, 1), LinearGaussianObservations([[1.0]], [[1.0]]), 1, 2
    )
    model = DistributionTransformer(1, width=16, depth=1, num_heads=2, key=jax.random.key(6))
    batch = tasks.sample(jax.random.key(7), 16, 2)
    (loss, metrics), grads = eqx.filter_jit(eqx.filter_value_and_grad(dt_loss, has_aux=True))(
        model, batch, None
    )
    assert np.isfinite(float(loss)) and set(metrics) == {"posterior_nll", "prior_nll"}
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(eqx.filter(grads, eqx.is_array)))

    # exact filter: with a one-component prior it is the Kalman filter
    dyn = LinearGaussianDynamics([[0.9]], [[0.3]])
    obs = LinearGaussianObservations([[1.0]], [[0.5]])
    prior = GMM(jnp.ones(1), jnp.array([[0.2]]), jnp.array([[[1.3]]]))
    ys = jnp.array([0.5, -0.2, 1.4, 0.9])
    post = exact_filter(prior, ys, dyn, obs)
    m, p = 0.2, 1.3**2
    for t, y in enumerate(np.asarray(ys)):
        gain = p / (p + 0.5)
        m, p = m + gain * (y - m), (1 - gain) * p
        np.testing.assert_allclose(post.means[t, 0, 0], m, rtol=1e-12)
        np.testing.assert_allclose(post.covariances[t, 0, 0, 0], p, rtol=1e-12)
        m, p = 0.9 * m, 0.81 * p + 0.3
    # the DT filter with a zero head: the prior pushed through the dynamics only
    dt = filter(model, prior, ys, dyn)
    assert dt.means.shape == (4, 1, 1)
    np.testing.assert_allclose(dt.means[:, 0, 0], 0.2 * 0.9 ** np.arange(4), rtol=1e-6)

    # evaluation: an untrained (prior-returning) model scores exactly the prior's KL
    out = evaluate_posteriors(
        model,
        tasks,
        jax.random.key(8),
        num_problems=16,
        batch_size=16,
        num_samples=200,
        timing_repeats=0,
    )
    np.testing.assert_allclose(out["kl_dt_mean"], out["kl_prior_mean"], rtol=1e-6)
    assert out["kl_gaussian_mean"] < out["kl_prior_mean"]
    assert abs(out["kl_dt_reconstructed_prior_mean"]) < 1e-9
    with pytest.raises(ValueError, match="nuts_problems"):
        evaluate_posteriors(model, tasks, jax.random.key(8), num_problems=4, nuts_problems=5)


@pytest.mark.parametrize(
    "experiment", ["dt_linear_1d", "dt_linear_2d", "dt_variance", "dt_sequential"]
)
def test_experiment_configs_build(experiment):
    from hydra import compose, initialize_config_dir

    from probnet.training import build_loss, build_model, build_prior, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    prior = build_prior(cfg.prior)
    assert isinstance(prior, GMMPosteriorTasks) and callable(build_loss(cfg.loss))
    model = eqx.filter_eval_shape(lambda k: build_model(cfg.model, k), jax.random.key(0))
    assert model.dim == prior.num_features == prior.meta.dim
    assert model.obs_dim == prior.observation.obs_dim
    assert cfg.trainer.num_points >= (prior.max_observations or 0)
    assert cfg.trainer.eval_every == 0  # the evaluators (with NUTS) are for evaluate.py only
