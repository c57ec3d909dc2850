"""probnet.samplers: NUTS/HMC against exact posteriors, compile once, reproducibility, errors.

Tolerances come from Monte Carlo standard errors (MCSE, from the ESS): an estimate must lie
within 4 MCSE of the exact value. Seeds are fixed.
"""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.diagnostics as numpyro_diagnostics
import numpyro.distributions as dist
import pytest
import scipy.special
import scipy.stats

from probnet.samplers import (
    SamplerResult,
    diagnostics,
    hmc,
    nuts,
    posterior_predictive_log_prob,
)
from probnet.samplers.adaptation import warmup_schedule, window_adaptation

# One xdist worker per file (`make test` runs `-n 2 --dist loadgroup`): the module-scoped
# fixtures then compile their sampler once, not once per worker.
pytestmark = pytest.mark.xdist_group("samplers")

# ----------------------------------------------------------------------------- targets


def gaussian_logdensity(x, mean, precision):
    """log N(x; mean, precision⁻¹) up to a constant; x `[D]`."""
    r = x - mean
    return -0.5 * r @ precision @ r


TRACES = {"linreg": 0, "eight_schools": 0}
SIGMA_W, SIGMA_NOISE = 1.0, 0.5
LINREG_SETTINGS = {"num_warmup": 400, "num_samples": 1000, "dense_mass": True}


def linreg_logdensity(w, x, y):
    """Bayesian linear regression: w ~ N(0, SIGMA_W² I), y ~ N(x w, SIGMA_NOISE²)."""
    TRACES["linreg"] += 1  # Python side effect: runs once per trace
    log_prior = -0.5 * jnp.sum(w**2) / SIGMA_W**2
    return log_prior - 0.5 * jnp.sum((y - x @ w) ** 2) / SIGMA_NOISE**2


def linreg_exact(x, y):
    """Exact posterior mean and covariance (DESIGN.md, Bayesian linear regression)."""
    a = x.T @ x / SIGMA_NOISE**2 + np.eye(x.shape[1]) / SIGMA_W**2
    cov = np.linalg.inv(a)
    return cov @ x.T @ y / SIGMA_NOISE**2, cov


def eight_schools(sigma, y=None):
    """Non-centred eight schools."""
    TRACES["eight_schools"] += 1
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


EIGHT_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
EIGHT_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def assert_moments(draws, mean, sd, k=4.0):
    """Posterior means and sds within k MCSE of the exact values, per coordinate."""
    draws = np.asarray(draws, np.float64)
    flat = draws.reshape(-1, *draws.shape[2:])
    mean_err = np.abs(flat.mean(0) - mean) / diagnostics.mcse_mean(draws)
    sd_err = np.abs(flat.std(0, ddof=1) - sd) / diagnostics.mcse_sd(draws)
    assert np.max(mean_err) < k, f"mean off by {np.max(mean_err):.2f} MCSE"
    assert np.max(sd_err) < k, f"sd off by {np.max(sd_err):.2f} MCSE"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gaussian_50d():
    rng = np.random.default_rng(0)
    dim = 50
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.05 * np.eye(dim)  # strongly correlated, condition number ~1e3
    scales = np.geomspace(0.3, 3.0, dim)
    cov = (scales[:, None] * cov * scales[None, :]).astype(np.float32)
    mean = rng.normal(size=dim).astype(np.float32)
    precision = np.linalg.inv(cov.astype(np.float64)).astype(np.float32)
    init = rng.uniform(-2, 2, size=(4, dim)).astype(np.float32)
    kwargs = dict(data=(mean, precision), num_warmup=500, num_samples=500)
    result = nuts(gaussian_logdensity, init, jax.random.key(1), **kwargs)
    return result, mean, cov, init, kwargs


@pytest.fixture(scope="module")
def linreg_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    w = np.array([1.0, -0.5, 0.25], np.float32)
    y = (x @ w + SIGMA_NOISE * rng.normal(size=40)).astype(np.float32)
    init = rng.normal(size=(4, 3)).astype(np.float32)
    return x, y, init


@pytest.fixture(scope="module")
def eight_schools_result():
    before = TRACES["eight_schools"]
    result = nuts(
        model=eight_schools,
        model_args=(EIGHT_SIGMA,),
        model_kwargs={"y": EIGHT_Y},
        key=jax.random.key(0),
        target_acceptance_rate=0.9,
    )
    return result, TRACES["eight_schools"] - before


# ----------------------------------------------------------------------------- correctness


def test_correlated_gaussian_50d_moments(gaussian_50d):
    result, mean, cov, _, _ = gaussian_50d
    assert isinstance(result, SamplerResult)
    assert result.draws.shape == (4, 500, 50)
    assert result.inverse_mass_matrix.shape == (4, 50)
    # pooled adaptation (the default): one step size and mass matrix for all chains
    assert np.all(np.asarray(result.step_size) == result.step_size[0])
    assert np.all(np.asarray(result.inverse_mass_matrix) == result.inverse_mass_matrix[0])
    assert result.num_divergences == 0
    assert_moments(result.draws, mean, np.sqrt(np.diag(cov)))
    assert result.max_rhat < 1.01
    assert result.min_ess_bulk > 400


def test_linear_regression_matches_exact_posterior(linreg_data):
    x, y, init = linreg_data
    result = nuts(linreg_logdensity, init, jax.random.key(2), data=(x, y), **LINREG_SETTINGS)
    assert result.inverse_mass_matrix.shape == (4, 3, 3)
    mean, cov = linreg_exact(x.astype(np.float64), y.astype(np.float64))
    assert_moments(result.draws, mean, np.sqrt(np.diag(cov)))
    # Covariance entries: E[(w_i - m_i)(w_j - m_j)] within 4 MCSE of the product draws.
    w = np.asarray(result.draws, np.float64)
    centred = w - w.reshape(-1, 3).mean(0)
    products = centred[..., :, None] * centred[..., None, :]  # [chains, samples, 3, 3]
    error = np.abs(products.reshape(-1, 3, 3).mean(0) - cov) / diagnostics.mcse_mean(products)
    assert np.max(error) < 4.0


def test_new_data_same_shape_does_not_retrace(linreg_data):
    x, y, init = linreg_data
    nuts(linreg_logdensity, init, jax.random.key(3), data=(x, y), **LINREG_SETTINGS)
    traces = TRACES["linreg"]
    rng = np.random.default_rng(5)
    x2 = rng.normal(size=x.shape).astype(np.float32)
    y2 = (x2 @ np.array([-1.0, 2.0, 0.5], np.float32) + 0.5 * rng.normal(size=40)).astype(
        np.float32
    )
    result = nuts(linreg_logdensity, init, jax.random.key(3), data=(x2, y2), **LINREG_SETTINGS)
    assert TRACES["linreg"] == traces, "new data of the same shape retraced the log density"
    assert result.compile_time == 0.0
    mean, cov = linreg_exact(x2.astype(np.float64), y2.astype(np.float64))
    assert_moments(result.draws, mean, np.sqrt(np.diag(cov)))


def test_same_key_same_draws(gaussian_50d):
    result, _, _, init, kwargs = gaussian_50d
    again = nuts(gaussian_logdensity, init, jax.random.key(1), **kwargs)
    assert again.compile_time == 0.0
    np.testing.assert_array_equal(np.asarray(again.draws), np.asarray(result.draws))
    np.testing.assert_array_equal(np.asarray(again.step_size), np.asarray(result.step_size))
    other = nuts(gaussian_logdensity, init, jax.random.key(2), **kwargs)
    assert not np.array_equal(np.asarray(other.draws), np.asarray(result.draws))


def test_eight_schools_numpyro_model(eight_schools_result):
    result, _ = eight_schools_result
    draws = result.draws
    assert set(draws) == {"mu", "tau", "theta_raw", "theta"}  # constrained + deterministic
    assert draws["theta"].shape == (4, 1000, 8)
    assert float(jnp.min(draws["tau"])) > 0.0  # HalfCauchy: constrained space
    assert result.num_divergences == 0
    mu, tau = np.asarray(draws["mu"]), np.asarray(draws["tau"])
    # Reference (non-centred eight schools, mu ~ N(0, 5), tau ~ HalfCauchy(5); Stan/NumPyro/
    # PyMC): E[mu] ≈ 4.4, E[tau] ≈ 3.6, sd[mu] ≈ 3.3. Tolerance ±0.5 (about 8 MCSE here,
    # which also covers the rounding of the published values).
    assert abs(mu.mean() - 4.4) < 0.5
    assert abs(tau.mean() - 3.6) < 0.5
    assert abs(mu.std() - 3.3) < 0.5
    assert result.max_rhat < 1.01
    assert "mu" in result.summary()


def test_eight_schools_new_data_does_not_retrace(eight_schools_result):
    _, traces_first = eight_schools_result
    assert traces_first > 0
    before = TRACES["eight_schools"]
    result = nuts(
        model=eight_schools,
        model_args=(EIGHT_SIGMA * 2.0,),
        model_kwargs={"y": EIGHT_Y - 1.0},
        key=jax.random.key(4),
        target_acceptance_rate=0.9,
        warn=False,
    )
    assert TRACES["eight_schools"] == before, "new data of the same shape retraced the model"
    assert result.compile_time == 0.0


def test_result_statistics(gaussian_50d):
    result = gaussian_50d[0]
    assert result.num_chains == 4 and result.num_samples == 500
    assert 0.6 < result.mean_acceptance <= 1.0
    assert result.step_size.shape == (4,)
    assert result.tree_depth.shape == (4, 500)
    assert result.num_grad_evals == int(
        np.sum(result.num_integration_steps) + np.sum(result.num_warmup_grad_evals)
    )
    assert result.sampling_time > 0.0 and result.compile_time > 0.0
    assert np.shape(result.rhat) == (50,) and np.shape(result.ess_tail) == (50,)
    text = result.summary(max_rows=3)
    assert "ess_bulk" in text and "x[2]" in text and "..." in text


# ----------------------------------------------------------------------------- HMC


def scaled_gaussian_logdensity(x, scale):
    return -0.5 * jnp.sum((x["a"] / scale) ** 2) - 0.5 * jnp.sum(x["b"] ** 2)


def test_hmc_pytree_position_moments():
    scale = np.array([0.5, 1.0, 2.0], np.float32)
    init = {"a": np.zeros((4, 3), np.float32), "b": np.ones((4,), np.float32)}
    result = hmc(
        scaled_gaussian_logdensity,
        init,
        jax.random.key(5),
        data=(scale,),
        num_integration_steps=3,
        num_warmup=300,
        num_samples=500,
        warn=False,  # fixed-length HMC on a Gaussian can resonate; the MCSE check covers it
    )
    assert result.draws["a"].shape == (4, 500, 3) and result.draws["b"].shape == (4, 500)
    assert_moments(result.draws["a"], np.zeros(3), scale)
    assert_moments(result.draws["b"], 0.0, 1.0)
    assert result.num_grad_evals == 4 * 800 * 3


def one_dim_logdensity(x, scale):
    return -0.5 * jnp.sum((x / scale) ** 2)


def test_adaptation_matches_blackjax_window_adaptation():
    """One chain adapted here equals `blackjax.window_adaptation(...).run` with the same key.

    One dimension, so that no reduction can be reordered between the vmapped program and
    BlackJAX's own loop: per-chain adaptation is then bitwise identical (in more dimensions,
    1-ulp differences get amplified by the chaotic early warmup).
    """
    scale = np.array([0.5], np.float32)
    init = np.full((1, 1), 0.3, np.float32)
    key = jax.random.key(6)
    result = hmc(
        one_dim_logdensity,
        init,
        key,
        data=(scale,),
        num_chains=1,
        num_integration_steps=8,
        num_warmup=200,
        num_samples=5,
        adaptation="per_chain",
        warn=False,
    )
    warmup_key = jax.random.split(jax.random.split(key, 1)[0], 3)[1]
    warmup = blackjax.window_adaptation(
        blackjax.hmc, lambda x: one_dim_logdensity(x, scale), num_integration_steps=8
    )
    (_, params), _ = warmup.run(warmup_key, init[0], num_steps=200)
    np.testing.assert_allclose(result.step_size[0], params["step_size"], rtol=1e-6)
    np.testing.assert_allclose(
        result.inverse_mass_matrix[0], params["inverse_mass_matrix"], rtol=1e-6
    )


def test_pooled_adaptation_engine():
    """Pooled adaptation fed one chain is the per-chain engine, step by step, over the whole
    Stan schedule; fed several chains, each enters the Welford estimate."""
    per_chain = window_adaptation(dense_mass=False, target_acceptance_rate=0.8)
    pooled = window_adaptation(dense_mass=False, target_acceptance_rate=0.8, pooled=True)
    rng = np.random.default_rng(0)
    positions = jnp.asarray(rng.normal(size=(150, 3, 2)), jnp.float32) * jnp.array([0.5, 2.0])
    accept = jnp.asarray(rng.uniform(size=(150, 3)), jnp.float32)
    schedule = warmup_schedule(150)

    @jax.jit
    def run(positions, accept):
        one = per_chain.init(positions[0, 0], jnp.float32(1.0))
        single = pooled.init(positions[0, 0], jnp.float32(1.0))
        many = pooled.init(positions[0, 0], jnp.float32(1.0))

        def body(carry, xs):
            one, single, many = carry
            p, a, stage = xs
            one = per_chain.update(one, stage, p[0], p[0], a[0])
            single = pooled.update(single, stage, p[:1], p[:1], a[:1].mean())
            many = pooled.update(many, stage, p, p, a.mean())
            return (one, single, many), (one.step_size, single.step_size)

        carry, steps = jax.lax.scan(body, (one, single, many), (positions, accept, schedule))
        return steps, per_chain.final(carry[0]), pooled.final(carry[2])

    (steps_one, steps_single), (_, imm_one), (_, imm_many) = run(positions, accept)
    np.testing.assert_array_equal(steps_one, steps_single)
    # the last slow window pools 3 chains: its variance estimate is near the true one
    np.testing.assert_allclose(imm_many, np.array([0.25, 4.0]), rtol=0.3)
    assert not np.allclose(imm_one, imm_many)


def test_warns_on_divergences_and_progress_bar(capsys):
    init = {"a": np.full((4, 3), 1.0, np.float32), "b": np.zeros((4,), np.float32)}
    scale = np.array([0.01, 1.0, 1.0], np.float32)
    with pytest.warns(UserWarning, match="divergent"):
        result = hmc(
            scaled_gaussian_logdensity,
            init,
            jax.random.key(7),
            data=(scale,),
            num_integration_steps=8,
            num_warmup=0,
            num_samples=40,
            initial_step_size=2.0,
            progress_bar=True,
        )
    assert result.num_divergences > 0
    assert "40/40" in capsys.readouterr().err  # the tqdm bar reached the end


# ----------------------------------------------------------------------------- errors


def nan_for_negative(x):
    return jnp.where(x[0] > 0, -0.5 * jnp.sum(x**2), jnp.nan)


def vector_logdensity(x):
    return -0.5 * x**2


def test_error_nan_logdensity_at_initial_position():
    init = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], np.float32)
    with pytest.raises(ValueError, match=r"logdensity.*initial_position.*\[1\]"):
        nuts(nan_for_negative, init, jax.random.key(0))


def test_error_non_scalar_logdensity():
    with pytest.raises(ValueError, match="scalar"):
        nuts(vector_logdensity, np.zeros((4, 2), np.float32), jax.random.key(0))


def test_error_initial_position_chain_axis():
    with pytest.raises(ValueError, match=r"initial_position.*num_chains=4"):
        nuts(gaussian_logdensity, np.zeros((3, 2), np.float32), jax.random.key(0))
    bad_tree = {"a": np.zeros((4, 2), np.float32), "b": np.zeros((3,), np.float32)}
    with pytest.raises(ValueError, match=r"initial_position\['b'\].*num_chains=4"):
        nuts(scaled_gaussian_logdensity, bad_tree, jax.random.key(0))
    with pytest.raises(ValueError, match="initial_position.*non-finite"):
        nuts(vector_logdensity, np.full((4, 2), np.nan, np.float32), jax.random.key(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 0}, "num_chains"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_warmup": -1}, "num_warmup"),
        ({"target_acceptance_rate": 1.5}, "target_acceptance_rate"),
        ({"divergence_threshold": float("nan")}, "divergence_threshold"),
        ({"divergence_threshold": -1.0}, "divergence_threshold"),
        ({"data": np.zeros(3)}, "data"),
        ({"num_devices": 3}, "num_devices"),
        ({"key": None}, "key"),
        ({"model": eight_schools}, "exactly one"),
    ],
)
def test_error_bad_arguments(kwargs, match):
    args = {"key": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        nuts(vector_logdensity, np.zeros((4, 2), np.float32), **args)


def test_program_caches_are_bounded():
    """Compiled programs (and the initial-position checks) are kept in LRU caches: a loop
    over new log densities does not grow memory without bound."""
    import collections

    from probnet.samplers.program import _MAX_CACHED_PROGRAMS, cached

    cache, built = collections.OrderedDict(), []
    for i in range(_MAX_CACHED_PROGRAMS + 6):
        assert cached(cache, i, lambda i=i: built.append(i) or i) == i
    assert len(cache) == _MAX_CACHED_PROGRAMS and 0 not in cache
    assert cached(cache, 6, lambda: -1) == 6 and len(built) == _MAX_CACHED_PROGRAMS + 6
    cached(cache, "new", lambda: 0)
    assert 6 in cache and 7 not in cache  # 6 was used last, so 7 went first


# ----------------------------------------------------------------------------- diagnostics


def ar1(rng, chains, n, dim, rho, shift=0.0):
    x = np.zeros((chains, n, dim))
    x[:, 0] = rng.normal(size=(chains, dim))
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=(chains, dim))
    return x + shift * np.arange(chains)[:, None, None]


def test_diagnostics_match_vehtari_et_al_definitions():
    """Bulk/tail ESS and R-hat rebuilt from their definitions (Vehtari et al. 2021) on top of
    the reference ESS (below; NumPyro's runs the positive sequence to the last lag, which these
    chains reach), NumPyro's Gelman-Rubin and SciPy's average ranks."""
    x = ar1(np.random.default_rng(0), 4, 400, 3, 0.9, shift=0.3)
    split = np.concatenate([x[:, :200], x[:, 200:]], axis=0)

    def rank_normal(v):
        ranks = scipy.stats.rankdata(v.reshape(-1, 3), axis=0)
        return scipy.special.ndtri((ranks - 0.375) / (v[..., 0].size + 0.25)).reshape(v.shape)

    folded = np.abs(split - np.median(split.reshape(-1, 3), axis=0))
    rhat = np.maximum(
        numpyro_diagnostics.gelman_rubin(rank_normal(split)),
        numpyro_diagnostics.gelman_rubin(rank_normal(folded)),
    )
    np.testing.assert_allclose(diagnostics.rhat(x), rhat, rtol=1e-10)
    ess = lambda v: np.array([_reference_ess(v[..., i])[0] for i in range(v.shape[-1])])  # noqa: E731
    np.testing.assert_allclose(diagnostics.ess_bulk(x), ess(rank_normal(split)), rtol=1e-10)
    lo, hi = np.quantile(split.reshape(-1, 3), [0.05, 0.95], axis=0)
    tail = np.minimum(ess((split <= lo).astype(float)), ess((split <= hi).astype(float)))
    np.testing.assert_allclose(diagnostics.ess_tail(x), tail, rtol=1e-10)
    np.testing.assert_allclose(diagnostics.ess_mean(x), ess(split), rtol=1e-10)
    together = diagnostics.rhat_ess(x)
    np.testing.assert_allclose(together[0], rhat, rtol=1e-10)
    np.testing.assert_allclose(together[2], tail, rtol=1e-10)
    # ties get average ranks: a constant block does not create spurious rank structure
    tied = np.round(x, 1)
    ranks = diagnostics._average_ranks(tied.reshape(-1, 3).T.copy())
    np.testing.assert_allclose(ranks.T, scipy.stats.rankdata(tied.reshape(-1, 3), axis=0))


def _reference_ess(split):
    """ESS of one component, `split` `[chains, n]`, transcribed from the R package posterior's
    `ess` (loops, as written there; lags 0-based) -> `(ess, reached_bound)`."""
    m, n = split.shape
    if n < 3:
        return np.nan, False
    centred = split - split.mean(1, keepdims=True)
    acov = np.array([[np.dot(c[: n - t], c[t:]) / n for t in range(n)] for c in centred])
    w = acov[:, 0].mean() * n / (n - 1)
    var_plus = w * (n - 1) / n + split.mean(1).var(ddof=1)
    rho = np.zeros(n)
    t, even, odd = 0, 1.0, 1.0 - (w - acov[:, 1].mean()) / var_plus
    rho[0], rho[1] = even, odd
    while t < n - 5 and even + odd > 0:
        t += 2
        even = 1.0 - (w - acov[:, t].mean()) / var_plus
        odd = 1.0 - (w - acov[:, t + 1].mean()) / var_plus
        if even + odd >= 0:
            rho[t], rho[t + 1] = even, odd
    max_t, reached_bound = t, even + odd > 0
    if even > 0:
        rho[max_t] = even
    t = 0
    while t <= max_t - 4:
        t += 2
        if rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1]:
            rho[t] = rho[t + 1] = (rho[t - 2] + rho[t - 1]) / 2
    head = rho[:max_t].sum() if max_t > 0 else rho[0]  # R's rho_hat_t[1:0] is rho_hat_t[1]
    tau = -1 + 2 * head + rho[max_t]
    return m * n / max(tau, 1 / np.log10(m * n)), reached_bound


@pytest.mark.parametrize(
    ("chain_length", "rho", "bound"),
    [(1000, -0.5, False), (40, 0.999, True), (41, 0.999, True), (200, 0.999, True)],
)
def test_ess_matches_reference_implementation(chain_length, rho, bound):
    """Anti-correlated chains (common with NUTS): the first non-positive pair's even term is
    added once, unchanged by the monotone step (it was halved towards the previous pair sum,
    overstating the ESS by up to 12%). Random walks: the positive sequence stops four lags
    before the end, and the last pair adds its even term once (it used to run to the end)."""
    for seed in range(5):
        x = ar1(np.random.default_rng(seed), 4, chain_length, 1, rho)
        half = chain_length // 2
        split = np.concatenate([x[:, :half, 0], x[:, chain_length - half :, 0]], axis=0)
        reference, reached_bound = _reference_ess(split)
        assert reached_bound == bound
        assert diagnostics.ess_mean(x)[0] == pytest.approx(reference, rel=1e-10)


def test_ess_of_short_and_alternating_chains_matches_reference():
    """A single lag pair (2 to 5 draws per split chain) or an alternating chain (first pair
    sum ≤ 0): τ = 2 as in posterior (τ was clamped, giving ESS = S·log10 S, more than the
    S draws); under 3 draws per split chain, NaN."""
    rng = np.random.default_rng(0)
    chains = [ar1(rng, 4, length, 1, 0.999)[..., 0] for length in (6, 7, 8, 10, 11, 13)]
    chains.append(np.where(np.arange(24) % 2, 1.0, -1.0) + 1e-3 * rng.normal(size=(4, 24)))
    for x in chains:
        half = x.shape[1] // 2
        split = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
        reference, _ = _reference_ess(split)
        got = diagnostics.ess_mean(x[..., None])[0]
        assert got == pytest.approx(reference, rel=1e-10) and got <= x.size
    assert np.isnan(diagnostics.ess_mean(rng.normal(size=(4, 5, 1)))[0])


def test_diagnostics_behaviour():
    rng = np.random.default_rng(1)
    iid = rng.normal(size=(4, 1000, 2))
    assert np.all(np.abs(diagnostics.ess_bulk(iid) / 4000 - 1) < 0.15)
    assert np.all(diagnostics.rhat(iid) < 1.01)
    mixing = ar1(rng, 4, 1000, 2, 0.9)
    assert np.all(diagnostics.ess_bulk(mixing) < 0.15 * 4000)  # ≈ (1 - ρ)/(1 + ρ) · 4000
    stuck = ar1(rng, 4, 1000, 2, 0.5, shift=2.0)
    assert np.all(diagnostics.rhat(stuck) > 1.1)
    sd = diagnostics.mcse_mean(iid)
    np.testing.assert_allclose(sd, 1 / np.sqrt(4000), rtol=0.15)
    broken = iid.copy()
    broken[0, 5, 0] = np.nan  # one bad draw: every diagnostic of that component is NaN
    for values in diagnostics.rhat_ess(broken):
        assert np.isnan(values[0]) and np.isfinite(values[1])


def test_posterior_predictive_log_prob():
    draws = {"mu": jnp.array([[0.0, 1.0, 2.0], [0.5, -1.0, 3.0]])}

    def loglik(theta, y):
        return -0.5 * (y - theta["mu"]) ** 2 - 0.5 * np.log(2 * np.pi)

    y = jnp.array([0.0, 1.0, 4.0])
    got = posterior_predictive_log_prob(loglik, draws, y)
    mus = np.asarray(draws["mu"]).reshape(-1, 1)
    dens = np.exp(-0.5 * (np.asarray(y)[None] - mus) ** 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(got, np.log(dens.mean(0)), rtol=1e-5)
    flat = posterior_predictive_log_prob(loglik, {"mu": draws["mu"].reshape(-1)}, y, batch_ndim=1)
    np.testing.assert_allclose(flat, got, rtol=1e-6)
