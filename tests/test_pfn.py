import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probnet.distributions import BarDistribution, Normal, bar_borders
from probnet.kernels import RBF
from probnet.pfn import PFN, pfn_loss
from probnet.priors import GPPrior

PRIOR = GPPrior(RBF(1.0, 0.2), 0.01, num_features=1)


def _pfn(num_border_tasks, num_bars):
    """A 2-layer PFN for the 1-D GP prior, bar borders from prior targets."""
    ys = PRIOR.sample(jax.random.key(0), num_border_tasks, 16).y
    return PFN(
        jax.random.key(1),
        bar_borders(ys, num_bars),
        emb_size=32,
        ff_size=64,
        num_layers=2,
        num_heads=4,
        x_loc=0.5,
        x_scale=0.3,
    )


@pytest.fixture(scope="module")
def small_pfn():
    return _pfn(256, 20)


def test_invariant_to_context_order_and_to_other_queries(small_pfn):
    task = PRIOR.sample(jax.random.key(2), 1, 20)
    x, y = task.x[0], task.y[0]
    xc, yc, xt = x[:12], y[:12], x[12:]
    # randomise the untrained decoder so the test is not trivially satisfied
    model = eqx.tree_at(
        lambda m: m.decoder[2],
        small_pfn,
        jax.random.normal(jax.random.key(3), small_pfn.decoder[2].shape),
    )
    base = model(xc, yc, xt).logits
    perm = jax.random.permutation(jax.random.key(4), 12)
    permuted = model(xc[perm], yc[perm], xt).logits
    np.testing.assert_allclose(permuted, base, atol=1e-5)
    alone = jax.vmap(lambda q: model(xc, yc, q[None]).logits[0])(xt)
    np.testing.assert_allclose(alone, base, atol=1e-5)
    # the context does change the prediction
    assert not np.allclose(model(xc[:3], yc[:3], xt).logits, base, atol=1e-3)


def test_forward_and_reverse_derivatives_agree_with_finite_differences(small_pfn, x64):
    """jvp / jacfwd / hessian work through the PFN (its custom rules are JVPs) and equal the
    reverse-mode derivatives and central differences, in float64."""
    model = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, small_pfn
    )
    model = eqx.tree_at(
        lambda m: m.decoder[2], model, jax.random.normal(jax.random.key(3), (64, 20))
    )
    task = PRIOR.sample(jax.random.key(5), 1, 10)
    args = (task.x[0, :6], task.y[0, :6], task.x[0, 6:])
    mean = jax.jit(lambda xc, yc, xt: model(xc, yc, xt).mean)
    fwd = jax.jit(jax.jacfwd(mean, argnums=(0, 1, 2)))(*args)
    rev = jax.jit(jax.jacrev(mean, argnums=(0, 1, 2)))(*args)
    for f, r in zip(fwd, rev, strict=True):
        assert np.abs(f).max() > 1e-3
        np.testing.assert_allclose(f, r, atol=1e-12)
    keys = jax.random.split(jax.random.key(6), 3)
    directions = [
        jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, args, strict=True)
    ]

    def along(t):
        return mean(*(a + t * d for a, d in zip(args, directions, strict=True)))

    _, tangent = jax.jit(lambda t: jax.jvp(along, (t,), (1.0,)))(0.0)
    central = (along(1e-6) - along(-1e-6)) / 2e-6
    np.testing.assert_allclose(tangent, central, rtol=1e-6, atol=1e-8)
    # second order (forward over reverse): the Hessian of a log density is symmetric
    hess = jax.jit(jax.hessian(lambda xt: jnp.sum(model(*args[:2], xt).log_prob(jnp.zeros(4)))))(
        args[2]
    )
    np.testing.assert_allclose(hess, jnp.swapaxes(jnp.swapaxes(hess, 0, 2), 1, 3), atol=1e-10)


def test_zero_context_gives_a_proper_prior_predictive(small_pfn):
    pred = small_pfn(jnp.zeros((0, 1)), jnp.zeros((0,)), jnp.linspace(0, 1, 5)[:, None])
    assert isinstance(pred, BarDistribution) and pred.batch_shape == (5,)
    assert np.all(np.isfinite(pred.log_prob(jnp.zeros(5))))


def test_tiny_pfn_beats_the_prior_predictive():
    # 400 Adam steps on 16-point GP datasets; evaluated with 10 context points on 256 fresh
    # datasets. The prior predictive N(0, 1.01) scores about 1.42 nats; the exact posterior
    # about -0.1. The trained PFN must beat the prior predictive by at least 0.5 nats.
    model = _pfn(512, 30)
    opt = optax.adam(3e-3)
    params, static = eqx.partition(model, eqx.is_array)

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, state = carry
            k1, k2 = jax.random.split(key)
            batch = PRIOR.sample_batch(jax.random.split(k1, 32), 16)
            loss = lambda p: pfn_loss(eqx.combine(p, static), batch, k2)[0]
            value, grad = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grad, state)
            return (optax.apply_updates(params, updates), state), value

        keys = jax.random.split(key, 400)
        return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

    trained = eqx.combine(train(params, jax.random.key(5)), static)
    test = PRIOR.sample(jax.random.key(6), 256, 16)
    mask = jnp.arange(16) < 10

    @jax.jit
    def nll(model, x, y):
        logits = model.logits(x, y, mask)
        return -jnp.mean(model.distribution(logits).log_prob(y)[10:])

    pfn_nll = float(jnp.mean(jax.vmap(nll, in_axes=(None, 0, 0))(trained, test.x, test.y)))
    prior_nll = float(-jnp.mean(Normal(0.0, jnp.sqrt(1.01)).log_prob(test.y[:, 10:])))
    assert pfn_nll < prior_nll - 0.5, (pfn_nll, prior_nll)


def test_bad_input_names_the_argument(small_pfn):
    with pytest.raises(ValueError, match="x_context"):
        small_pfn(jnp.ones((3, 2)), jnp.ones(3), jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="x_context and y_context"):
        small_pfn(jnp.ones((3, 1)), jnp.ones(4), jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="y_context must be finite"):
        small_pfn(jnp.ones((3, 1)), jnp.array([1.0, jnp.nan, 2.0]), jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="emb_size"):
        PFN(jax.random.key(0), jnp.linspace(-1, 1, 5), emb_size=30, num_heads=4)
    with pytest.raises(ValueError, match="borders must be strictly increasing"):
        PFN(jax.random.key(0), jnp.array([3.0, 2.0, 1.0, 0.0]), emb_size=8, num_heads=2)
    with pytest.raises(ValueError, match="borders must be strictly increasing"):
        BarDistribution(jnp.array([0.0, 2.0, 1.0]), jnp.zeros(2))
    with pytest.raises(ValueError, match="x_scale"):
        PFN(jax.random.key(0), jnp.linspace(-1, 1, 5), emb_size=8, num_heads=2, x_scale=0.0)
    batch = GPPrior(RBF(), 0.1, 1).sample(jax.random.key(0), 2, 6)
    for min_context in (6, -1):
        with pytest.raises(ValueError, match="min_context"):
            pfn_loss(small_pfn, batch, jax.random.key(1), min_context=min_context)
