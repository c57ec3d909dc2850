import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from probnet.linalg import (
    SMALL_CHOLESKY,
    SMALL_SOLVE,
    cho_solve,
    cholesky,
    solve_lower,
    solve_lower_transpose,
)


def _spd(key, batch, n, dtype):
    a = jax.random.normal(key, (*batch, n, n), dtype)
    return a @ jnp.swapaxes(a, -1, -2) / n + 0.1 * jnp.eye(n, dtype=dtype)


@pytest.mark.parametrize(
    "n, loop_up_to",
    [(5, SMALL_CHOLESKY), (SMALL_CHOLESKY, SMALL_CHOLESKY), (SMALL_CHOLESKY + 3, SMALL_CHOLESKY)]
    + [(SMALL_CHOLESKY + 3, 2 * SMALL_CHOLESKY)],  # the loop above the default size
)
def test_cholesky_equals_lapack_in_float64(x64, n, loop_up_to):
    """Both the vectorised loop (n <= loop_up_to) and LAPACK equal SciPy to 1e-10."""
    matrix = _spd(jax.random.key(n), (3, 2), n, jnp.float64)
    chol = np.asarray(
        jax.jit(cholesky, static_argnames="loop_up_to")(matrix, loop_up_to=loop_up_to)
    )
    for index in np.ndindex(3, 2):
        expected = scipy.linalg.cholesky(np.asarray(matrix[index]), lower=True)
        np.testing.assert_allclose(chol[index], expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n", [SMALL_SOLVE, SMALL_SOLVE + 2])
def test_triangular_solves_equal_scipy_in_float64(x64, n):
    matrix = _spd(jax.random.key(n), (), n, jnp.float64)
    chol = cholesky(matrix)
    b = jax.random.normal(jax.random.key(1), (n, 3), jnp.float64)
    expected = scipy.linalg.solve_triangular(np.asarray(chol), np.asarray(b), lower=True)
    np.testing.assert_allclose(solve_lower(chol, b), expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(solve_lower(chol, b[:, 0]), expected[:, 0], rtol=1e-9, atol=1e-10)
    expected = scipy.linalg.solve_triangular(np.asarray(chol).T, np.asarray(b), lower=False)
    np.testing.assert_allclose(solve_lower_transpose(chol, b), expected, rtol=1e-9, atol=1e-10)
    expected = scipy.linalg.cho_solve((np.asarray(chol), True), np.asarray(b))
    np.testing.assert_allclose(cho_solve(chol, b), expected, rtol=1e-8, atol=1e-10)
    # under vmap (a batch of systems) too
    batched = jax.vmap(solve_lower, (None, 1), 1)(chol, b)
    np.testing.assert_allclose(batched, solve_lower(chol, b), rtol=1e-12, atol=1e-12)


def test_small_cholesky_raises_the_jitter_of_the_failing_matrix_only():
    """A rank-deficient matrix fails without jitter (a NaN pivot), so only its jitter is raised;
    the well-conditioned one in the same batch is factored exactly as alone."""
    x = jnp.linspace(0.0, 1.0, 8)[:, None]
    singular = jnp.exp(-0.5 * (x - x.T) ** 2 / 4.0)  # numerically rank-deficient in float32
    good = _spd(jax.random.key(0), (), 8, jnp.float32)
    chol = cholesky(jnp.stack([singular, good]), jitter=0.0)
    assert np.all(np.isfinite(np.asarray(chol)))
    np.testing.assert_allclose(chol[1], cholesky(good, jitter=0.0), rtol=1e-6)
    np.testing.assert_allclose(chol[0] @ chol[0].T, singular, atol=1e-3)
    # the same under vmap, where the retry loop runs over the batch
    mapped = jax.jit(jax.vmap(lambda m: cholesky(m, jitter=0.0)))(jnp.stack([singular, good]))
    np.testing.assert_allclose(mapped, chol, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [2, 200])
def test_indefinite_matrix_raises_instead_of_a_large_jitter(n):
    """An eigenvalue of -0.5 would need jitter of half the diagonal: that is an error, not a
    factor of a different matrix (both the loop and the LAPACK paths)."""
    matrix = jnp.eye(n).at[0, 1].set(1.5).at[1, 0].set(1.5)
    with pytest.raises(Exception, match="not positive definite"):
        jax.block_until_ready(cholesky(matrix))


def test_gradients_through_the_small_path_match_finite_differences(x64):
    matrix = _spd(jax.random.key(3), (), 6, jnp.float64)
    direction = _spd(jax.random.key(4), (), 6, jnp.float64)

    def f(t):
        return jnp.sum(jnp.log(jnp.diagonal(cholesky(matrix + t * direction))))

    eps = 1e-6
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(f)(0.0), numeric, rtol=1e-6)


def test_float32_factor_has_no_jitter_when_it_succeeds():
    """A float32 matrix that factors is factored as it is (a first jitter of 1e-6 of the mean
    diagonal biased the log determinant of GP kernel matrices)."""
    matrix = _spd(jax.random.key(5), (), SMALL_CHOLESKY + 8, jnp.float32)
    np.testing.assert_array_equal(cholesky(matrix), jnp.linalg.cholesky(matrix))


def test_masked_rows_neither_set_nor_receive_the_jitter():
    """A matrix needing jitter, embedded among identity rows, gets the jitter it gets alone (the
    scale is the mean of the real rows' diagonal, 1e-3 here, not 0.33 with the identity rows)
    and the identity rows stay exact. Compared through L Lᵀ: the factor itself is ill-conditioned
    (pivots ~3e-5) and differs by float32 round-off amplified ~100x."""
    x = jnp.linspace(0.0, 1.0, 8)[:, None]
    singular = 1e-3 * jnp.exp(-0.5 * (x - x.T) ** 2 / 4.0)  # fails without jitter in float32
    real = np.array([1, 2, 4, 5, 7, 8, 10, 11])
    mask = np.zeros(12, bool)
    mask[real] = True
    embedded = jnp.eye(12).at[np.ix_(real, real)].set(singular)
    chol = np.asarray(cholesky(embedded, mask=mask))
    alone = np.asarray(cholesky(singular))
    block = chol[np.ix_(real, real)]
    np.testing.assert_allclose(block @ block.T, alone @ alone.T, rtol=0, atol=1e-9)
    assert np.all(chol[np.ix_(real, ~mask)] == 0) and np.all(chol[np.ix_(~mask, real)] == 0)
    np.testing.assert_array_equal(chol[~mask][:, ~mask], np.eye(4))
