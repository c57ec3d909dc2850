"""Validation at the public boundary: clear errors that name the argument.

Concrete values raise `ValueError` at once. Positivity of traced values (inside `jit`/`vmap`) is
checked with `eqx.error_if`; finiteness of traced data is not (such checks made vmapped GP
predictions ~30x slower on CPU): a NaN that reaches a Cholesky factorisation still raises there.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    """Whether `x` is a JAX tracer (inside `jit`, `vmap`, `grad`, ...)."""
    return isinstance(x, jax.core.Tracer)


def check_finite(name: str, x):
    """Return `x`, raising if it holds NaN or inf (concrete values only, see above)."""
    x = jnp.asarray(x)
    if not is_traced(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")
    return x


def check_positive(name: str, x):
    """Return `x`, raising unless every entry is finite and > 0."""
    x = jnp.asarray(x)
    if is_traced(x):
        return eqx.error_if(x, ~jnp.all(x > 0), f"{name} must be > 0")
    value = np.asarray(x)
    if not np.all(value > 0) or not np.all(np.isfinite(value)):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return x


def check_ndim(name: str, x, ndim: int, shape_doc: str):
    """Raise unless `x` has `ndim` dimensions; `shape_doc` names them, e.g. `[N, D]`."""
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {jnp.shape(x)}")


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """Raise unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def as_float_array(x):
    """Convert to a JAX array of the default float dtype (float32, or float64 under x64)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))
