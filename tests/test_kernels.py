import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probnet.kernels import RBF, Linear, Matern12, Matern32, Matern52, Periodic

X1 = np.array([[0.0, 1.0], [0.5, -1.0]])
X2 = np.array([[1.0, 1.0], [0.0, 0.0], [0.3, 0.2]])


def _r(x1, x2, ls):
    return np.sqrt((((x1[:, None, :] - x2[None, :, :]) / ls) ** 2).sum(-1))


@pytest.mark.parametrize(
    "cls, hand",
    [
        (RBF, lambda r: 2.0 * np.exp(-0.5 * r**2)),
        (Matern12, lambda r: 2.0 * np.exp(-r)),
        (Matern32, lambda r: 2.0 * (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)),
        (
            Matern52,
            lambda r: 2.0 * (1 + np.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-np.sqrt(5) * r),
        ),
    ],
)
def test_stationary_kernels_equal_hand_computed(x64, cls, hand):
    kernel = cls(2.0, 0.7)
    np.testing.assert_allclose(kernel(jnp.array(X1), jnp.array(X2)), hand(_r(X1, X2, 0.7)), 1e-12)


def test_ard_lengthscales(x64):
    ls = np.array([0.5, 2.0])
    k = RBF(1.5, ls)
    np.testing.assert_allclose(k(X1, X2), 1.5 * np.exp(-0.5 * _r(X1, X2, ls) ** 2), 1e-12)
    # hand value of one entry: x=(0,1), x'=(0,0): r² = (1/2)² = 0.25
    assert float(k(X1[:1], X2[1:2])[0, 0]) == pytest.approx(1.5 * np.exp(-0.125), rel=1e-12)


def test_periodic_and_linear(x64):
    k = Periodic(1.3, 0.8, 0.5)
    d = X1[:, None, :] - X2[None, :, :]
    expect = 1.3 * np.exp(-2 * (np.sin(np.pi * d / 0.5) ** 2).sum(-1) / 0.8**2)
    np.testing.assert_allclose(k(X1, X2), expect, 1e-12)
    lin = Linear(2.0, np.array([1.0, 2.0]))
    np.testing.assert_allclose(lin(X1, X2), 2.0 * (X1 / [1, 2]) @ (X2 / [1, 2]).T, 1e-12)
    np.testing.assert_allclose(lin.diag(jnp.array(X1)), np.diag(lin(X1, X1)), 1e-12)


def test_composition(x64):
    a, b = RBF(1.0, 0.3), Matern32(0.5, 1.0)
    np.testing.assert_allclose((a + b)(X1, X2), a(X1, X2) + b(X1, X2), 1e-12)
    np.testing.assert_allclose((a * b)(X1, X2), a(X1, X2) * b(X1, X2), 1e-12)
    np.testing.assert_allclose((3.0 * a)(X1, X2), 3.0 * a(X1, X2), 1e-12)
    np.testing.assert_allclose((a * 3.0).diag(jnp.array(X1)), [3.0, 3.0], 1e-12)


def test_jit_vmap_grad_work():
    k = Matern52(1.0, 0.5)
    x = jnp.linspace(0, 1, 5)[:, None]
    np.testing.assert_allclose(jax.jit(lambda a, b: k(a, b))(x, x), k(x, x), 1e-6)
    batched = jax.vmap(k, in_axes=(0, 0))(jnp.stack([x, x + 1]), jnp.stack([x, x]))
    assert batched.shape == (2, 5, 5)
    grad = jax.grad(lambda ls: Matern52(1.0, ls)(x, x).sum())(0.5)
    assert np.isfinite(grad) and grad > 0  # larger lengthscale, larger correlations
    # Matérn gradients stay finite on the diagonal, where r = 0
    g = jax.grad(lambda x: Matern12(1.0, 1.0)(x, x).sum())(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("cls", [RBF, Matern12, Matern32, Matern52, Periodic, Linear])
def test_non_positive_parameters_rejected(cls):
    with pytest.raises(ValueError, match="lengthscale"):
        cls(1.0, -0.1)
    with pytest.raises(ValueError, match="variance"):
        cls(0.0, 1.0)
    with pytest.raises(ValueError, match="lengthscale"):
        cls(1.0, np.nan)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="scale must be a scalar"):
        RBF() * jnp.array([1.0, 3.0])
    k = RBF(1.0, jnp.ones(3))
    with pytest.raises(ValueError, match="x1 and x2"):
        k(jnp.ones((2, 3)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="lengthscale"):
        k(jnp.ones((2, 2)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"x1 must have shape \[N1, D\]"):
        k(jnp.ones(3), jnp.ones((2, 3)))
