"""Stable linear algebra shared by the GP, the priors and the references."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def default_jitter(dtype) -> float:
    """Relative diagonal jitter tried first: none in float64, a little in float32."""
    return 0.0 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def cholesky(
    matrix: Float[Array, "N N"], jitter: float | None = None, max_tries: int = 6
) -> Float[Array, "N N"]:
    """Lower Cholesky factor of a symmetric positive (semi-)definite matrix.

    Adds `jitter · mean(diag)` to the diagonal, and when the factorisation fails raises the
    jitter tenfold (starting from 1e-8 relative if it was zero), up to `max_tries` times; raises
    an error if it still fails. Works under jit, vmap and grad (the jitter is held constant).
    """
    if matrix.shape[-1] == 0:
        return matrix
    start = default_jitter(matrix.dtype) if jitter is None else float(jitter)
    chol = _jittered_cholesky(matrix, start, max_tries)
    return eqx.error_if(
        chol,
        ~jnp.all(jnp.isfinite(chol)),
        "Cholesky factorisation failed even after raising the jitter; the matrix is not "
        "positive definite (check the kernel hyperparameters and noise_variance)",
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _jittered_cholesky(matrix, start, max_tries):
    n = matrix.shape[-1]
    scale = jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(matrix))), jnp.finfo(matrix.dtype).tiny)
    eye = jnp.eye(n, dtype=matrix.dtype)

    def factor(rel):
        return jnp.linalg.cholesky(matrix + rel * scale * eye)

    def failed(chol):
        return ~jnp.all(jnp.isfinite(chol))

    def cond(state):
        chol, _, tries = state
        return failed(chol) & (tries < max_tries)

    def body(state):
        _, rel, tries = state
        rel = jnp.where(rel > 0, rel * 10.0, 1e-8)
        return factor(rel), rel, tries + 1

    rel0 = jnp.asarray(start, matrix.dtype)
    chol, _, _ = jax.lax.while_loop(cond, body, (factor(rel0), rel0, jnp.array(0)))
    return chol


@_jittered_cholesky.defjvp
def _jittered_cholesky_jvp(start, max_tries, primals, tangents):
    # dL = L Φ(L⁻¹ dA L⁻ᵀ), Φ = lower triangle with the diagonal halved; jitter held constant.
    (matrix,), (dmatrix,) = primals, tangents
    chol = _jittered_cholesky(matrix, start, max_tries)
    dmatrix = 0.5 * (dmatrix + dmatrix.T)
    inner = solve_lower(chol, solve_lower(chol, dmatrix).T)
    phi = jnp.tril(inner) - 0.5 * jnp.diag(jnp.diagonal(inner))
    return chol, chol @ phi


def solve_lower(chol: Float[Array, "N N"], b: Float[Array, "N ..."]) -> Float[Array, "N ..."]:
    """L⁻¹ b for lower-triangular L."""
    return jax.scipy.linalg.solve_triangular(chol, b, lower=True)


def cho_solve(chol: Float[Array, "N N"], b: Float[Array, "N ..."]) -> Float[Array, "N ..."]:
    """(LLᵀ)⁻¹ b."""
    return jax.scipy.linalg.cho_solve((chol, True), b)
