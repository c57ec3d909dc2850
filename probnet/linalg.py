"""Stable linear algebra shared by the GP, the priors and the references.

The public functions are jitted: called eagerly (a notebook, a test), their loops were traced
and compiled anew on every call (1-3 s per GP prediction or GMM update, now about 10 ms after
the first call); inside an outer `jit` or `vmap` this changes nothing.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

# Below these sizes probnet factors and solves with its own batched loops instead of LAPACK:
# faster there on CPU (measured: 32x32 Cholesky of 64 matrices 0.59 vs 0.74 ms; triangular
# solves of 32 64x64 systems 0.55 vs 87 ms), and free of a deadlock seen on a 2-core machine
# when two batched LAPACK calls wait for each other's work in XLA's shared thread pool.
SMALL_CHOLESKY = 32
SMALL_SOLVE = 128


def _small_cholesky(a):
    """Left-looking Cholesky, one column per step, vectorised over the batch; NaN if a pivot
    is not positive (as LAPACK's result in JAX)."""
    n = a.shape[-1]
    index = jnp.arange(n)

    def column(j, chol):
        row = jax.lax.dynamic_index_in_dim(chol, j, axis=-2, keepdims=False)
        rest = jax.lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False)
        rest = rest - jnp.einsum("...ik,...k->...i", chol, row)
        pivot = jnp.sqrt(jax.lax.dynamic_index_in_dim(rest, j, axis=-1, keepdims=False))
        pivot = pivot[..., None]
        col = jnp.where(index > j, rest / pivot, jnp.where(index == j, pivot, 0.0))
        return jax.lax.dynamic_update_index_in_dim(chol, col[..., None], j, axis=-1)

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


def _factor(a, loop_up_to):
    if a.shape[-1] <= loop_up_to:
        return _small_cholesky(a)
    return jnp.linalg.cholesky(a)


def _small_solve_lower(chol, b):
    """Forward substitution L x = b, one row per step; b is `[..., N, M]`."""
    if chol.shape[-1] == 0:
        return jnp.zeros_like(b)

    def row(i, x):
        l_i = jax.lax.dynamic_index_in_dim(chol, i, axis=-2, keepdims=False)
        b_i = jax.lax.dynamic_index_in_dim(b, i, axis=-2, keepdims=False)
        diag = jax.lax.dynamic_index_in_dim(l_i, i, axis=-1, keepdims=False)
        x_i = (b_i - jnp.einsum("...k,...km->...m", l_i, x)) / diag[..., None]
        return jax.lax.dynamic_update_index_in_dim(x, x_i[..., None, :], i, axis=-2)

    return jax.lax.fori_loop(0, chol.shape[-1], row, jnp.zeros_like(b))


def retry_jitter(dtype) -> float:
    """Relative diagonal jitter of the first retry after a failed factorisation: 1e-8 in
    float64, 1e-6 in float32 (about ten ulps of the diagonal; much less rounds away)."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-6


@eqx.filter_jit  # (not jax.jit: Equinox then reports a failed factorisation cleanly)
def cholesky(
    matrix: Float[Array, "*batch N N"],
    jitter: float = 0.0,
    max_jitter: float = 1e-2,
    loop_up_to: int = SMALL_CHOLESKY,
    mask: Bool[Array, "*batch N"] | None = None,
) -> Float[Array, "*batch N N"]:
    """Lower Cholesky factors of symmetric positive (semi-)definite matrices `[*batch, N, N]`.

    Factors `matrix + jitter · s · I`, s the mean |diagonal|, with no jitter by default (in
    float32 a first jitter of 1e-6 biased a GP's log marginal likelihood by 0.9 nats at noise
    1e-4). Only when some factorisation fails (the common case costs one batched factorisation,
    also under `vmap`) is the jitter of the failed matrices raised, to `retry_jitter(dtype)`
    if it was zero, then tenfold, up to `max_jitter · s`; an error is raised if it still fails,
    so an indefinite matrix is never silently replaced by a different one. `mask` `[*batch, N]`
    marks the rows that take part: s is their mean and only they get jitter (the others must be
    identity rows and columns, as in a masked GP context), so a masked matrix is factored as the
    matrix of its real rows alone. Matrices up to `loop_up_to` rows are factored by probnet's
    vectorised loop, larger ones by LAPACK. Works under jit, vmap and grad (the jitter is held
    constant).
    """
    if matrix.shape[-1] == 0:
        return matrix
    if mask is None:
        mask = jnp.ones(matrix.shape[:-1], bool)
    mask = jnp.broadcast_to(mask, matrix.shape[:-1])
    chol = _jittered_cholesky(matrix, mask, float(jitter), float(max_jitter), loop_up_to)
    return eqx.error_if(
        chol,
        ~jnp.all(jnp.isfinite(chol)),
        "Cholesky factorisation failed even after raising the jitter; the matrix is not "
        "positive definite (check the kernel hyperparameters and noise_variance)",
    )


def _add_jitter(matrix, mask, rel):
    diag = jnp.where(mask, jnp.abs(jnp.diagonal(matrix, axis1=-2, axis2=-1)), 0.0)
    count = jnp.maximum(jnp.sum(mask, -1), 1).astype(matrix.dtype)
    scale = jnp.maximum(jnp.sum(diag, -1) / count, jnp.finfo(matrix.dtype).tiny)
    added = jnp.where(mask, (rel * scale)[..., None], 0.0)
    return matrix + added[..., None] * jnp.eye(matrix.shape[-1], dtype=matrix.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _jittered_cholesky(matrix, mask, start, max_jitter, loop_up_to):
    """A `while_loop` that runs only while some factor is NaN and re-factors the batch with the
    failed matrices' jitter raised (a `cond` here became a select under `vmap` and always ran
    the retries)."""
    first = retry_jitter(matrix.dtype)

    def failed(chol):
        return ~jnp.all(jnp.isfinite(chol), axis=(-2, -1))

    def retry(state):
        chol, rel = state
        bad = failed(chol) & (rel < max_jitter)
        rel = jnp.where(bad, jnp.minimum(jnp.where(rel > 0, rel * 10.0, first), max_jitter), rel)
        again = _factor(_add_jitter(matrix, mask, rel), loop_up_to)
        return jnp.where(bad[..., None, None], again, chol), rel

    def retrying(state):
        chol, rel = state
        return jnp.any(failed(chol) & (rel < max_jitter))

    rel = jnp.full(matrix.shape[:-2], start, matrix.dtype)
    chol = _factor(matrix if start == 0 else _add_jitter(matrix, mask, rel), loop_up_to)
    return jax.lax.while_loop(retrying, retry, (chol, rel))[0]


@_jittered_cholesky.defjvp
def _jittered_cholesky_jvp(start, max_jitter, loop_up_to, primals, tangents):
    # dL = L Φ(L⁻¹ dA L⁻ᵀ), Φ = lower triangle with the diagonal halved; jitter held constant.
    (matrix, mask), (dmatrix, _) = primals, tangents
    chol = _jittered_cholesky(matrix, mask, start, max_jitter, loop_up_to)
    dmatrix = 0.5 * (dmatrix + jnp.swapaxes(dmatrix, -1, -2))
    inner = solve_lower(chol, jnp.swapaxes(solve_lower(chol, dmatrix), -1, -2))
    phi = jnp.tril(inner) - 0.5 * jnp.diagonal(inner, axis1=-2, axis2=-1)[..., None] * jnp.eye(
        inner.shape[-1], dtype=inner.dtype
    )
    return chol, chol @ phi


@jax.jit
def solve_lower(chol: Float[Array, "N N"], b: Float[Array, "N ..."]) -> Float[Array, "N ..."]:
    """L⁻¹ b for lower-triangular L `[N, N]` and b `[N]` or `[N, M]`."""
    if chol.ndim != 2 or b.ndim not in (1, 2) or chol.shape[-1] > SMALL_SOLVE:
        return jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    out = _small_solve_lower(chol, b if b.ndim == 2 else b[:, None])
    return out if b.ndim == 2 else out[:, 0]


@jax.jit
def solve_lower_transpose(
    chol: Float[Array, "N N"], b: Float[Array, "N ..."]
) -> Float[Array, "N ..."]:
    """L⁻ᵀ b for lower-triangular L `[N, N]` and b `[N]` or `[N, M]`."""
    if chol.ndim != 2 or b.ndim not in (1, 2) or chol.shape[-1] > SMALL_SOLVE:
        return jax.scipy.linalg.solve_triangular(chol, b, lower=True, trans=1)
    # Lᵀ x = b is lower-triangular after reversing the order of rows and columns
    return jnp.flip(solve_lower(jnp.flip(chol.T, (0, 1)), jnp.flip(b, 0)), 0)


@jax.jit
def cho_solve(chol: Float[Array, "N N"], b: Float[Array, "N ..."]) -> Float[Array, "N ..."]:
    """(LLᵀ)⁻¹ b for b `[N]` or `[N, M]`: a forward then a backward substitution."""
    if chol.ndim != 2 or b.ndim not in (1, 2) or chol.shape[-1] > SMALL_SOLVE:
        return jax.scipy.linalg.cho_solve((chol, True), b)
    return solve_lower_transpose(chol, solve_lower(chol, b))
