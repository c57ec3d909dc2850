"""Scale mixtures of NNGPs: kernels against independent NumPy recursions and finite networks,
the Student-t process against the multivariate t, importance sampling and NUTS against the
closed form, classification probabilities, fitting, and input validation."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from probnet import gp
from probnet.distributions import InverseGamma, Normal
from probnet.distributions.scale import BurrXII, LogNormal, StudentT
from probnet.kernels import RBF, AbstractKernel
from probnet.nngp import (
    Conv,
    Dense,
    Erf,
    Flatten,
    ReLU,
    ScaleMixtureNNGP,
    class_probabilities,
    finite_network,
    serial,
)

# ----------------------------------------------------------------------------------------------
# Independent NumPy references: the whole Gram matrix of the stacked inputs, layer by layer.


def _np_relu(k):
    d = np.sqrt(np.diag(k))
    norm = np.outer(d, d)
    theta = np.arccos(np.clip(k / norm, -1.0, 1.0))
    return norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)


def _np_erf(k):
    d = 1 + 2 * np.diag(k)
    return 2 / np.pi * np.arcsin(2 * k / np.sqrt(np.outer(d, d)))


def _np_mlp_kernel(x, stds, act):
    """`stds` [(W_std, b_std)] for each Dense layer; `act` between them."""
    k = x @ x.T / x.shape[1]
    for i, (w, b) in enumerate(stds):
        k = w**2 * k + b**2
        if i < len(stds) - 1:
            k = act(k)
    return k


def _np_conv_kernel(images, convs, readout, act):
    """images [N, H, W, C]; `convs` [(W_std, b_std)] of 3x3 'same' convolutions, each followed
    by `act`; then flatten and a Dense readout. Covariances of every pair of images at every pair
    of equal positions, computed with explicit loops over window offsets (no padding)."""
    n, h, w, c = images.shape
    k = np.einsum("ahwc,bhwc->hwab", images, images) / c  # [H, W, N, N]
    for ws, bs in convs:
        new = np.zeros_like(k)
        for i in range(h):
            for j in range(w):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            new[i, j] += k[i + di, j + dj]
        k = ws**2 * new / 9 + bs**2
        k = np.stack([np.stack([act(k[i, j]) for j in range(w)]) for i in range(h)])
    return readout[0] ** 2 * k.mean(axis=(0, 1)) + readout[1] ** 2


def _mlp(act_layer, depth, stds):
    layers = []
    for w, b in stds[:depth]:
        layers += [Dense(w, b), act_layer()]
    return serial(*layers, Dense(*stds[-1]))


STDS = [(1.3, 0.2), (1.6, 0.1), (0.9, 0.3), (1.1, 0.25)]


@pytest.mark.parametrize("name", ["relu", "erf"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_kernels_equal_numpy_recursion(x64, name, depth, record_property):
    rng = np.random.default_rng(depth)
    x1, x2 = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    x2[0] = 2.0 * x1[1]  # parallel inputs: θ = 0 in the arc-cosine kernel
    act_layer, np_act = (ReLU, _np_relu) if name == "relu" else (Erf, _np_erf)
    stds = STDS[:depth] + [STDS[-1]]
    kernel = _mlp(act_layer, depth, stds)
    full = _np_mlp_kernel(np.concatenate([x1, x2]), stds, np_act)
    np.testing.assert_allclose(kernel(x1, x2), full[:5, 5:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(kernel.diag(x1), np.diag(full)[:5], rtol=0, atol=1e-10)
    np.testing.assert_allclose(kernel(x1, x1), full[:5, :5], rtol=0, atol=1e-10)
    err = np.max(np.abs(np.asarray(kernel(x1, x2)) - full[:5, 5:]))
    record_property("max_abs_error_vs_numpy", float(err))


def _conv_kernel(input_shape=(8, 8, 1)):
    return serial(
        Conv(1.4, 0.1), ReLU(), Conv(1.2, 0.2), ReLU(), Flatten(), Dense(1.1, 0.1),
        input_shape=input_shape,
    )  # fmt: skip


def test_conv_kernel_equals_numpy_recursion(x64):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 6, 5, 2))
    kernel = _conv_kernel((6, 5, 2))
    flat = images.reshape(4, -1)
    ref = _np_conv_kernel(images, [(1.4, 0.1), (1.2, 0.2)], (1.1, 0.1), _np_relu)
    np.testing.assert_allclose(kernel(flat[:3], flat[1:]), ref[:3, 1:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(kernel.diag(flat), np.diag(ref), rtol=0, atol=1e-10)
    blocked = serial(kernel, block_size=2)
    np.testing.assert_allclose(blocked(flat[:3], flat), ref[:3], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Finite networks: empirical covariances and heavy tails.


def _z_scores(outputs, kernel_matrix):
    """outputs [nets, points, units]; per-network mean of f fᵀ over units, z = (mean − K)/SE."""
    per_net = np.einsum("rnj,rmj->rnm", outputs, outputs) / outputs.shape[-1]
    se = per_net.std(0, ddof=1) / np.sqrt(per_net.shape[0])
    return np.abs(per_net.mean(0) - kernel_matrix) / se


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_finite_mlps_match_kernels_for_1_to_3_hidden_layers(name, record_property):
    """200 networks of width 512 with 3 hidden layers; a 16-unit readout after hidden layer 1, 2
    and 3 (readout weights drawn here) gives the networks of depth 1, 2 and 3 at once."""
    num_nets, width, units, depth = 200, 512, 16, 3
    act_layer = ReLU if name == "relu" else Erf
    stds = STDS[:depth] + [STDS[-1]]
    kernel = _mlp(act_layer, depth, stds)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    w_out, b_out = stds[-1]

    def outputs(key):
        net = finite_network(kernel, key, num_features=3, width=width)
        k_read = jax.random.fold_in(key, 1)
        noise = jax.random.normal(k_read, (depth, width + 1, units))
        h, outs = x, []
        for i in range(depth):
            h = net.layers[2 * i + 1](net.layers[2 * i](h))
            w = noise[i, :width] * w_out / np.sqrt(width)
            outs.append(h @ w + noise[i, width] * b_out)
        return jnp.stack(outs)  # [depth, points, units]

    keys = jax.random.split(jax.random.key(0), num_nets)
    out = np.asarray(jax.jit(lambda k: jax.lax.map(outputs, k, batch_size=25))(keys))
    for d in range(1, depth + 1):
        sub = _mlp(act_layer, d, stds[:d] + [STDS[-1]])
        z = _z_scores(out[:, d - 1], np.asarray(sub(x, x)))
        record_property(f"max_z_depth{d}", float(z.max()))
        assert z.max() < 4.5, (name, d, z.max())


def test_finite_cnns_match_conv_kernel(record_property):
    kernel = _conv_kernel()
    images = np.random.default_rng(2).uniform(0, 1, size=(3, 64)).astype(np.float32)

    def outputs(key):
        return jax.vmap(finite_network(kernel, key, width=96, num_outputs=16))(images)

    keys = jax.random.split(jax.random.key(1), 200)
    out = np.asarray(jax.jit(lambda k: jax.lax.map(outputs, k, batch_size=20))(keys))
    z = _z_scores(out, np.asarray(kernel(images, images)))
    record_property("max_z", float(z.max()))
    assert z.max() < 4.5, z.max()


def test_inverse_gamma_last_layer_variance_gives_student_t_marginals(record_property):
    """f(x) of width-512 networks whose last-layer variance σ² ~ IG(α, β): f(x) ~ t_{2α}(0,
    (β/α)·K(x, x)) (KS test), and clearly not the Normal of the same variance."""
    alpha, beta = 1.5, 1.5
    kernel = serial(Dense(1.5, 0.1), ReLU(), Dense(1.2, 0.2))
    x = np.array([0.3, -1.0, 0.5], np.float32)
    prior = InverseGamma(alpha, beta)

    def output(key):
        return finite_network(kernel, key, 3, width=512, scale_prior=prior)(x)[0]

    keys = jax.random.split(jax.random.key(3), 2000)
    f = np.asarray(jax.jit(jax.vmap(output))(keys))
    kxx = float(kernel(x[None], x[None])[0, 0])
    scale = np.sqrt(beta / alpha * kxx)
    p_t = scipy.stats.kstest(f, scipy.stats.t(2 * alpha, 0, scale).cdf).pvalue
    std = scale * np.sqrt(2 * alpha / (2 * alpha - 2))
    p_normal = scipy.stats.kstest(f, scipy.stats.norm(0, std).cdf).pvalue
    record_property("ks_pvalue_student_t", float(p_t))
    record_property("ks_pvalue_normal", float(p_normal))
    assert p_t > 0.01
    assert p_normal < 1e-4


# ----------------------------------------------------------------------------------------------
# Student-t process, importance sampling, NUTS.


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 3))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.normal(size=25)
    xs = rng.normal(size=(6, 3))
    ys = np.sin(2 * xs[:, 0]) + 0.5 * xs[:, 1]
    ys[0] += 3.0  # an outlier
    return x, y, xs, ys


KERNEL = serial(Dense(1.5, 0.2), ReLU(), Dense(1.2, 0.1), ReLU(), Dense(1.1, 0.1))


def test_student_t_process_equals_conditional_of_joint_multivariate_t(
    x64, regression_data, record_property
):
    x, y, xs, ys = regression_data
    alpha, beta, eps = 2.5, 1.7, 0.05
    model = ScaleMixtureNNGP(KERNEL, InverseGamma(alpha, beta), eps)
    pred = model.predict(x, y, xs)
    assert isinstance(pred, StudentT)

    # Joint multivariate t of (y, y*): dof ν = 2α, scale (β/α)(K + εI); its conditional.
    xa = np.concatenate([x, xs])
    joint = (beta / alpha) * (np.asarray(KERNEL(xa, xa)) + eps * np.eye(len(xa)))
    nu, n = 2 * alpha, len(x)
    s11, s21, s22 = joint[:n, :n], joint[n:, :n], joint[n:, n:]
    sol = np.linalg.solve(s11, y)
    loc = s21 @ sol
    d = y @ sol
    cond = (nu + d) / (nu + n) * (s22 - s21 @ np.linalg.solve(s11, s21.T))
    np.testing.assert_allclose(pred.df, nu + n, rtol=1e-12)
    np.testing.assert_allclose(pred.loc, loc, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pred.scale**2, np.diag(cond), rtol=0, atol=1e-8)
    record_property("max_abs_error_loc", float(np.max(np.abs(pred.loc - loc))))
    record_property("max_abs_error_scale2", float(np.max(np.abs(pred.scale**2 - np.diag(cond)))))

    # log p(y*_j | y) = log t(y, y*_j) − log t(y), with SciPy's multivariate t
    marg = scipy.stats.multivariate_t(np.zeros(n), s11, df=nu).logpdf(y)
    for j in range(len(xs)):
        idx = list(range(n)) + [n + j]
        both = scipy.stats.multivariate_t(np.zeros(n + 1), joint[np.ix_(idx, idx)], df=nu)
        expected = both.logpdf(np.append(y, ys[j])) - marg
        assert float(pred.log_prob(ys[j])[j]) == pytest.approx(expected, abs=1e-8)
    assert float(model.log_marginal_likelihood(x, y)) == pytest.approx(marg, abs=1e-8)

    # the NNGP (σ² = 1) is the Gaussian conditional of N(0, K + εI); its mean is the t mean
    nngp_model = ScaleMixtureNNGP(KERNEL, None, eps)
    nngp = nngp_model.predict(x, y, xs)
    assert isinstance(nngp, Normal)
    np.testing.assert_allclose(pred.mean, nngp.mean, rtol=0, atol=1e-10)
    record_property("max_abs_t_mean_minus_nngp_mean", float(np.max(np.abs(pred.mean - nngp.mean))))
    gauss_var = (alpha / beta) * np.diag(s22 - s21 @ np.linalg.solve(s11, s21.T))
    np.testing.assert_allclose(nngp.variance, gauss_var, rtol=0, atol=1e-8)
    gauss = scipy.stats.multivariate_normal(np.zeros(n), (alpha / beta) * s11).logpdf(y)
    assert float(nngp_model.log_marginal_likelihood(x, y)) == pytest.approx(gauss, abs=1e-8)

    # masked context = the Student-t process conditioned on the first 15 points only
    mask = np.arange(n) < 15
    masked = model.predict(x, np.where(mask, y, 1e3), xs, context_mask=mask)
    s11m, s21m = s11[:15, :15], s21[:, :15]
    solm = np.linalg.solve(s11m, y[:15])
    condm = (nu + y[:15] @ solm) / (nu + 15) * (s22 - s21m @ np.linalg.solve(s11m, s21m.T))
    np.testing.assert_allclose(masked.df, nu + 15, rtol=1e-12)
    np.testing.assert_allclose(masked.loc, s21m @ solm, rtol=0, atol=1e-8)
    np.testing.assert_allclose(masked.scale**2, np.diag(condm), rtol=0, atol=1e-8)


def test_importance_sampling_and_nuts_reproduce_closed_form(x64, regression_data, record_property):
    x, y, xs, ys = regression_data
    prior = InverseGamma(2.5, 1.7)
    exact_model = ScaleMixtureNNGP(KERNEL, prior, 0.05)
    exact = exact_model.predict(x, y, xs)
    is_model = ScaleMixtureNNGP(KERNEL, prior, 0.05, inference="importance", num_samples=1000)
    mix = is_model.predict(x, y, xs, key=jax.random.key(0))
    err = np.abs(np.asarray(mix.log_prob(ys) - exact.log_prob(ys)))
    record_property("is_mean_abs_logprob_error_nats", float(err.mean()))
    assert err.mean() <= 0.005, err
    lml_is = is_model.log_marginal_likelihood(x, y, key=jax.random.key(1))
    lml = exact_model.log_marginal_likelihood(x, y)
    record_property("is_abs_lml_error_nats", abs(float(lml_is) - float(lml)))
    assert float(lml_is) == pytest.approx(float(lml), abs=0.005)
    np.testing.assert_allclose(mix.mean, exact.mean, atol=1e-10)
    q = np.array([0.05, 0.5, 0.9])[:, None]
    np.testing.assert_allclose(mix.quantile(q), exact.quantile(q), rtol=0.01, atol=0.01)
    np.testing.assert_allclose(mix.variance, exact.variance, rtol=0.01)

    # NUTS over log σ²: the draws follow the inverse-gamma posterior, and the predictive
    # matches at the clean test points (the outlier ys[0] sits where only the far upper tail
    # of σ² matters, which 1000 correlated draws resolve poorly; importance sampling does)
    nuts_model = ScaleMixtureNNGP(
        KERNEL, prior, 0.05, inference="nuts", num_samples=1000, num_warmup=200, num_chains=2
    )
    post = nuts_model.condition(x, y, key=jax.random.key(2))
    exact_post = exact_model.condition(x, y).scale_posterior
    log_s2 = np.log(np.asarray(exact_post.sample(jax.random.key(3), (100_000,))))
    assert float(post.log_scale_draws.mean()) == pytest.approx(log_s2.mean(), abs=0.03)
    assert float(post.log_scale_draws.std()) == pytest.approx(log_s2.std(), rel=0.1)
    nuts = post.predictive(xs)
    err = np.abs(np.asarray(nuts.log_prob(ys) - exact.log_prob(ys)))[1:]
    record_property("nuts_mean_abs_logprob_error_nats", float(err.mean()))
    assert err.mean() <= 0.01, err


def test_multi_output_shares_sigma2_and_class_probabilities(x64):
    """C outputs share σ²: dof 2α + N·C; argmax probabilities match plain Monte Carlo."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 2))
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    y = np.eye(3)[labels]
    xs = rng.normal(size=(5, 2)) * 2.0
    prior = InverseGamma(2.0, 0.5)
    model = ScaleMixtureNNGP(serial(Dense(1.5, 0.3), Erf(), Dense(1.3, 0.1)), prior, 0.05)
    post = model.condition(x, y)
    pred = post.predictive(xs)
    assert pred.batch_shape == (5, 3)
    np.testing.assert_allclose(pred.df, 2 * 2.0 + 60)
    probs = np.asarray(class_probabilities(post, jax.random.key(0), xs, num_scale_draws=64))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    # plain Monte Carlo (NumPy): σ² from its posterior, outputs given σ², argmax frequencies
    rng = np.random.default_rng(5)
    a_n, b_n = float(post.scale_posterior.concentration), float(post.scale_posterior.scale)
    s2 = b_n / rng.gamma(a_n, size=(40000, 1, 1))
    var = np.asarray(post.gp_variance(xs, include_noise=False))[:, None]
    f = np.asarray(post.mean(xs)) + np.sqrt(s2 * var) * rng.normal(size=(40000, 5, 3))
    freq = (f.argmax(-1)[..., None] == np.arange(3)).mean(0)
    np.testing.assert_allclose(probs, freq, atol=0.015)


def test_per_output_scales_are_independent_t_processes(x64):
    """per_output: each column is its own Student-t process (independent σ_c²): predictive and
    evidence equal C single-output models; importance sampling reproduces the closed form;
    argmax probabilities with per-class scales match plain Monte Carlo; gradients are finite."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 2))
    y = rng.normal(size=(30, 3)) * np.array([0.3, 1.0, 2.5])  # very different column scales
    xs = rng.normal(size=(5, 2))
    kernel, prior = serial(Dense(1.4, 0.2), ReLU(), Dense(1.2, 0.1)), InverseGamma(2.0, 1.0)
    model = ScaleMixtureNNGP(kernel, prior, 0.1, per_output=True)
    post = model.condition(x, y)
    pred = post.predictive(xs)
    assert pred.batch_shape == (5, 3)
    single = [ScaleMixtureNNGP(kernel, prior, 0.1).predict(x, y[:, c], xs) for c in range(3)]
    expected = np.stack([s.log_prob(y[:5, c]) for c, s in enumerate(single)], -1)
    np.testing.assert_allclose(pred.log_prob(y[:5]), expected, atol=1e-10)
    np.testing.assert_allclose(pred.df, 2 * 2.0 + 30)
    evidence = sum(
        float(ScaleMixtureNNGP(kernel, prior, 0.1).log_marginal_likelihood(x, y[:, c]))
        for c in range(3)
    )
    assert float(model.log_marginal_likelihood(x, y)) == pytest.approx(evidence, abs=1e-9)
    # a shared σ² fits these columns far worse than one σ_c² each
    shared = ScaleMixtureNNGP(kernel, prior, 0.1).log_marginal_likelihood(x, y)
    assert float(shared) < evidence - 10.0
    key = jax.random.key(0)
    sampled = ScaleMixtureNNGP(kernel, prior, 0.1, inference="importance", per_output=True)
    assert float(sampled.log_marginal_likelihood(x, y, key)) == pytest.approx(evidence, abs=0.01)
    err = np.abs(np.asarray(sampled.predict(x, y, xs, key).log_prob(y[:5])) - expected)
    assert err.mean() <= 0.005, err
    probs = np.asarray(class_probabilities(post, key, xs, num_scale_draws=2000, num_nodes=48))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    rng = np.random.default_rng(7)
    a_n = np.asarray(post.scale_posterior.concentration)
    b_n = np.asarray(post.scale_posterior.scale)
    s2 = b_n / rng.gamma(a_n, size=(100000, 1, 3))
    var = np.asarray(post.gp_variance(xs, include_noise=False))[:, None]
    f = np.asarray(post.mean(xs)) + np.sqrt(s2 * var) * rng.normal(size=(100000, 5, 3))
    freq = (f.argmax(-1)[..., None] == np.arange(3)).mean(0)
    np.testing.assert_allclose(probs, freq, atol=0.006)
    grad = jax.grad(lambda m: m.log_marginal_likelihood(x, y))(model)
    assert np.isfinite(float(grad.noise)) and float(grad.noise) != 0.0


# ----------------------------------------------------------------------------------------------
# Fitting, distributions, composition, validation.


def test_student_t_evidence_in_float32_as_the_prior_tightens(regression_data):
    """A tight inverse-gamma prior (α → ∞, β/α = 0.8) tends to the NNGP with σ² = 0.8; in
    float32 the closed-form log-evidence must follow (the plain log-gamma differences were off
    by 0.6 nats at α = 1e6 and 204 nats at α = 1e8)."""
    x, y = (np.asarray(a, np.float32) for a in regression_data[:2])
    gram = np.asarray(KERNEL(x.astype(np.float64), x.astype(np.float64))) + 0.05 * np.eye(len(x))
    for alpha in (2.0, 1e6, 1e8):
        model = ScaleMixtureNNGP(KERNEL, InverseGamma(alpha, 0.8 * alpha), 0.05)
        got = model.log_marginal_likelihood(jnp.asarray(x), jnp.asarray(y))
        assert got.dtype == jnp.float32
        t = scipy.stats.multivariate_t(np.zeros(len(x)), 0.8 * gram, df=2 * alpha)
        assert float(got) == pytest.approx(t.logpdf(y.astype(np.float64)), abs=2e-3)


def test_importance_sampling_where_the_prior_sets_the_scale():
    """With y ≈ 0 or no context the data say nothing about σ²: importance sampling and NUTS
    must still find the posterior (a start at log(Q/n) alone sat 50 nats away and gave a
    variance of 1e-20), and with an empty context the log-evidence is 0."""
    kernel = serial(Dense(1.5, 0.1), ReLU(), Dense(1.5, 0.1))
    x, xt = jnp.array([[0.3, -0.2]]), jnp.array([[1.0, 0.5]])
    key = jax.random.key(0)
    for y in (jnp.array([0.0]), jnp.array([1e-9])):
        exact = ScaleMixtureNNGP(kernel, InverseGamma(3.0, 2.0), 0.1).predict(x, y, xt)
        for inference in ("importance", "nuts"):
            model = ScaleMixtureNNGP(kernel, InverseGamma(3.0, 2.0), 0.1, inference=inference)
            got = model.predict(x, y, xt, key=key)
            np.testing.assert_allclose(got.variance, exact.variance, rtol=0.05)
    burr = ScaleMixtureNNGP(kernel, BurrXII(2.0, 1.0, 1.0), 0.1)
    empty = jnp.array([False])
    lml = burr.log_marginal_likelihood(x, jnp.array([1.0]), key=key, context_mask=empty)
    assert abs(float(lml)) < 1e-3
    prior_draws = BurrXII(2.0, 1.0, 1.0).sample(jax.random.key(1), (200_000,))
    latent = burr.predict(x, jnp.array([1.0]), xt, key=key, context_mask=empty, include_noise=False)
    prior_var = float(jnp.mean(prior_draws)) * float(kernel(xt, xt)[0, 0])
    np.testing.assert_allclose(latent.variance, prior_var, rtol=0.05)
    # draws from the prior, far from a posterior at scale 1e8: a warning and the weights'
    # effective sample size say so; the Laplace proposal keeps most draws
    xs = jax.random.normal(key, (40, 2))
    ys = 1e4 * jnp.sin(xs[:, 0])
    for proposal in ("prior", "laplace"):
        model = ScaleMixtureNNGP(
            kernel, InverseGamma(3.0, 2.0), 0.1, inference="importance", proposal=proposal
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ess = float(model.condition(xs, ys, key=key).effective_sample_size)
        warned = any("effective draws" in str(w.message) for w in caught)
        assert (ess < 10 and warned) if proposal == "prior" else (ess > 500 and not warned)


def test_importance_log_weights_in_float32_at_large_n():
    """At n·C = 5e4 and 2e5 observed values the float32 log weights of the σ² draws equal a
    float64 evaluation at the same draws to 1e-3 nats (the plain sum of terms of order n·C
    lost 0.009 and 0.03 nats), and so does the log-evidence estimate, to within 2 float32 ulps
    of n. The scale prior, a log-normal as narrow as the posterior, is the proposal."""
    from scipy.special import logsumexp

    from probnet.nngp.model import _importance

    run = jax.jit(_importance, static_argnums=(5, 6))
    for size in (5e4, 2e5):
        quad, num_obs, logdet_c = (jnp.float32(v * size) for v in (1.3, 1.0, -0.8))
        prior = LogNormal(jnp.log(quad / num_obs), 2.0 / np.sqrt(size))
        log_s, log_w, log_ev = run(prior, quad, num_obs, logdet_c, jax.random.key(0), 1000, "prior")
        assert log_w.dtype == jnp.float32
        t = np.asarray(log_s, np.float64)
        q, n, ld = float(quad), float(num_obs), float(logdet_c)
        ref = -0.5 * n * (np.log(2 * np.pi) + t) - 0.5 * ld - 0.5 * q * np.exp(-t)
        ref_w = ref - logsumexp(ref)
        seen = ref_w > np.log(1e-6)
        assert seen.sum() > 500
        err = np.max(np.abs(np.asarray(log_w, np.float64) - ref_w)[seen])
        assert err < 1e-3, (size, err)
        ref_ev = logsumexp(ref) - np.log(len(t))
        assert abs(float(log_ev) - ref_ev) <= 2 * np.spacing(np.float32(size)), size


def test_mixture_predictive_samples_match_its_moments():
    """`sample` of the importance-sampling predictive (one σ², or one per output for vector
    and matrix targets) agrees with its `mean` and `variance`, and per-output predictives
    of vector targets have batch [M]."""
    kernel = serial(Dense(1.5, 0.1), ReLU(), Dense(1.5, 0.1))
    x = jax.random.normal(jax.random.key(0), (20, 2))
    xt = jax.random.normal(jax.random.key(1), (3, 2))
    y = jnp.sin(x[:, 0])
    for targets, per_output in ((y, False), (y, True), (jnp.stack([y, 2 * y], 1), True)):
        model = ScaleMixtureNNGP(kernel, BurrXII(2.0, 1.0, 1.0), 0.1, per_output=per_output)
        pred = model.predict(x, targets, xt, key=jax.random.key(2))
        assert pred.batch_shape == (3,) + targets.shape[1:]
        assert pred.log_prob(jnp.zeros((3,) + targets.shape[1:])).shape == (3,) + targets.shape[1:]
        draws = pred.sample(jax.random.key(3), (40_000,))
        assert draws.shape == (40_000, 3) + targets.shape[1:]
        se = jnp.sqrt(pred.variance / 40_000)
        assert np.all(np.abs(np.asarray(draws.mean(0) - pred.mean)) < 4 * se)
        np.testing.assert_allclose(draws.var(0), pred.variance, rtol=0.05)


def test_class_probabilities_at_context_points_with_tiny_noise():
    """With noise 1e-6 (fit's floor) the float32 latent variance at context points rounds to 0;
    it is floored at round-off, so class probabilities stay finite (they were NaN)."""
    x = jax.random.normal(jax.random.key(0), (200, 5))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], axis=1), 3)
    kernel = serial(Dense(1.5, 0.1), ReLU(), Dense(1.5, 0.1))
    for prior in (None, InverseGamma(2.0, 2.0)):
        posterior = ScaleMixtureNNGP(kernel, prior, 1e-6).condition(x, y)
        assert float(jnp.min(posterior.gp_variance(x, include_noise=False))) > 0
        probs = posterior.class_probabilities(jax.random.key(1), x)
        assert np.all(np.isfinite(probs))
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_fit_raises_marginal_likelihood(x64, regression_data):
    x, y, _, _ = regression_data
    kernel = serial(Dense(1.0, 0.5), ReLU(), Dense(1.0, 0.5))
    model = ScaleMixtureNNGP(kernel, InverseGamma(2.0, 2.0), 0.5)
    fitted = model.fit(x, y, num_steps=60, learning_rate=0.1, fit_prior=False, fit_noise=False)
    before, after = model.log_marginal_likelihood(x, y), fitted.log_marginal_likelihood(x, y)
    assert float(after) > float(before) + 0.2
    assert float(fitted.kernel.layers[0].W_std) != 1.0 and float(fitted.kernel.layers[0].W_std) > 0
    assert float(fitted.scale_prior.concentration) == 2.0 and float(fitted.noise) == 0.5
    tiny = ScaleMixtureNNGP(kernel, None, 1e-6).fit(x, y, num_steps=2, fit_noise=False)
    assert float(tiny.noise) == 1e-6  # a noise that is not fitted is held exactly
    # a Burr XII prior by importance sampling (fixed key: deterministic objective), learning
    # the kernel, the noise and the prior's parameters
    burr = ScaleMixtureNNGP(kernel, BurrXII(2.0, 1.0), 0.5, num_samples=200)
    key = jax.random.key(0)
    fitted = burr.fit(x, y, key=key, num_steps=60, learning_rate=0.1)
    assert (
        float(fitted.log_marginal_likelihood(x, y, key))
        > float(burr.log_marginal_likelihood(x, y, key)) + 1.0
    )
    assert float(fitted.scale_prior.c) != 2.0 and float(fitted.noise) != 0.5


def test_fitting_objective_gradient_equals_autodiff(x64):
    """The fit's objective differentiates yᵀK̃⁻¹y and log|K̃| in closed form (`_quad_logdet`);
    its gradient, forward-mode derivative and second directional derivatives (forward over
    forward and forward over reverse) must equal autodiff of an independent solve/slogdet
    implementation."""
    from probnet.nngp.model import _quad_logdet

    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    gram = jnp.asarray(a @ a.T + 6 * np.eye(6))
    y2 = jnp.asarray(rng.normal(size=(6, 2)))

    weights = jnp.asarray([0.7, -0.4])  # per-column quadratic forms

    def fast(g, y):
        quad, logdet = _quad_logdet(g, y)
        return jnp.sum(weights * quad) + 1.3 * logdet

    def reference(g, y):
        quad = jnp.sum(y * jnp.linalg.solve(g, y), axis=0)
        return jnp.sum(weights * quad) + 1.3 * jnp.linalg.slogdet(g)[1]

    assert float(fast(gram, y2)) == pytest.approx(float(reference(gram, y2)), abs=1e-10)
    got = jax.jit(jax.grad(fast, argnums=(0, 1)))(gram, y2)
    expected = jax.jit(jax.grad(reference, argnums=(0, 1)))(gram, y2)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-10)

    def symmetric_directions():  # K̃ stays symmetric (the factorisation reads one triangle)
        d = rng.normal(size=(6, 6))
        return jnp.asarray(d + d.T), jnp.asarray(rng.normal(size=(6, 2)))

    first, second = symmetric_directions(), symmetric_directions()

    def along_first(f):
        return lambda g, y: jax.jvp(f, (g, y), first)[1]

    def along_first_reverse(f):  # ⟨∇f, first⟩, so the second derivative is forward over reverse
        grads = jax.grad(f, argnums=(0, 1))
        return lambda g, y: sum(jnp.sum(a * b) for a, b in zip(grads(g, y), first, strict=True))

    assert float(along_first(fast)(gram, y2)) == pytest.approx(
        float(along_first(reference)(gram, y2)), rel=1e-9
    )
    expected = jax.jvp(along_first(reference), (gram, y2), second)[1]
    for got in (
        jax.jvp(along_first(fast), (gram, y2), second)[1],
        jax.jvp(along_first_reverse(fast), (gram, y2), second)[1],
    ):
        assert float(got) == pytest.approx(float(expected), rel=1e-8)


def test_nngp_kernel_is_a_composable_kernel(x64, regression_data):
    x, y, xs, _ = regression_data
    kernel = serial(Dense(1.5, 0.2), ReLU(), Dense(1.2, 0.1))
    summed = kernel + RBF(0.5, 1.0)
    mean, var = jax.jit(lambda a, b, c: gp.predict(summed, 0.1, a, b, c))(x, y, xs)
    assert mean.shape == (6,) and np.all(np.asarray(var) > 0)
    np.testing.assert_allclose((2.0 * kernel)(x, xs), 2.0 * np.asarray(kernel(x, xs)))
    nested = serial(serial(Dense(1.5, 0.2), ReLU()), Dense(1.2, 0.1))
    np.testing.assert_allclose(nested(x, xs), kernel(x, xs), atol=1e-14)
    # gradients through the arc-cosine kernel stay finite on the diagonal (θ = 0)
    grad = jax.jit(jax.grad(lambda w: serial(Dense(w, 0.1), ReLU(), Dense(1.0))(x, x).sum()))(1.3)
    assert np.isfinite(float(grad))


TRACES = {"gram": 0}


class _CountingKernel(AbstractKernel):
    inner: AbstractKernel

    def gram(self, x1, x2):
        TRACES["gram"] += 1  # Python side effect: runs once per trace
        return self.inner.gram(x1, x2)


def test_new_data_of_the_same_shape_does_not_retrace():
    model = ScaleMixtureNNGP(_CountingKernel(KERNEL), InverseGamma(2.0, 1.0), 0.1)
    rng = np.random.default_rng(7)
    pred = model.predict(rng.normal(size=(12, 3)), rng.normal(size=12), rng.normal(size=(4, 3)))
    traces = TRACES["gram"]
    assert traces > 0
    for _ in range(2):
        again = model.predict(
            rng.normal(size=(12, 3)), rng.normal(size=12), rng.normal(size=(4, 3))
        )
        assert again.batch_shape == pred.batch_shape
    assert TRACES["gram"] == traces, "new data of the same shape retraced the model"


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="W_std must be finite and > 0"):
        Dense(-1.0, 0.1)
    with pytest.raises(ValueError, match="W_std must be finite and > 0"):
        Conv(0.0, 0.1)
    with pytest.raises(ValueError, match="b_std must be finite and >= 0"):
        Dense(1.0, -0.1)
    with pytest.raises(ValueError, match="size must be an integer"):
        Conv(1.0, 0.0, size=0)
    with pytest.raises(ValueError, match="input_shape"):
        serial(Conv(1.0), ReLU(), Flatten(), Dense(1.0))
    with pytest.raises(ValueError, match="add Flatten"):
        serial(Conv(1.0), ReLU(), input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="serial takes NNGP layers"):
        serial(Dense(1.0), "relu")
    conv = _conv_kernel()
    with pytest.raises(ValueError, match="D = 64"):
        conv(np.ones((2, 10)), np.ones((2, 10)))
    with pytest.raises(ValueError, match="noise must be finite and > 0"):
        ScaleMixtureNNGP(KERNEL, None, 0.0)
    with pytest.raises(ValueError, match="closed_form"):
        ScaleMixtureNNGP(KERNEL, BurrXII(1.0, 1.0), 0.1, inference="closed_form")
    with pytest.raises(ValueError, match="inference must be one of"):
        ScaleMixtureNNGP(KERNEL, None, 0.1, inference="vi")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        ScaleMixtureNNGP(KERNEL, BurrXII(1.0, 1.0), 0.1).condition(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="W_std must be finite and > 0"):
        Dense(float("nan"), 0.1)
    with pytest.raises(ValueError, match="y must be finite"):
        ScaleMixtureNNGP(KERNEL, None, 0.1).condition(np.ones((3, 2)), np.array([1.0, np.nan, 0]))
    with pytest.raises(ValueError, match="x must have shape"):
        ScaleMixtureNNGP(KERNEL, None, 0.1).condition(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="same number of points"):
        ScaleMixtureNNGP(KERNEL, None, 0.1).condition(np.ones((3, 2)), np.ones(4))
    post = ScaleMixtureNNGP(KERNEL, None, 0.1).condition(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"x_target must have shape \[N, D=2\]"):
        post.predictive(np.ones((4, 3)))
    with pytest.raises(ValueError, match="num_draws"):
        post.sample_scale(jax.random.key(0), -1)
    with pytest.raises(ValueError, match="df must be finite and > 0"):
        StudentT(-1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="c must be finite and > 0"):
        BurrXII(-2.0, 1.0)
    with pytest.raises(ValueError, match="num_features"):
        finite_network(KERNEL, jax.random.key(0), width=8)
    with pytest.raises(ValueError, match="width must be an integer"):
        finite_network(KERNEL, jax.random.key(0), 3, width=0)
