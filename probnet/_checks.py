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


def check_inputs_shape(name: str, x, num_features: int | None = None):
    """Return `x` as a finite array, raising unless it is `[N, D]` (`D = num_features` if
    given)."""
    x = jnp.asarray(x)
    if x.ndim != 2 or (num_features is not None and x.shape[1] != num_features):
        features = "D" if num_features is None else f"D={num_features}"
        raise ValueError(f"{name} must have shape [N, {features}], got shape {x.shape}")
    return check_finite(name, x)


def check_data(x, y, x_name="x", y_name="y", num_features: int | None = None, y_ndims=(1,)):
    """Return `(x, y)` as finite arrays, raising unless x is `[N, D]` (`D = num_features` if
    given) and y is `[N]` (or `[N, C]` where 2 is in `y_ndims`) with the same N."""
    x = check_inputs_shape(x_name, x, num_features)
    y = jnp.asarray(y)
    if y.ndim not in y_ndims:
        shapes = " or ".join({1: "[N]", 2: "[N, C]"}[d] for d in y_ndims)
        raise ValueError(f"{y_name} must have shape {shapes}, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of points N, got {x_name} "
            f"{x.shape} and {y_name} {y.shape}"
        )
    return x, check_finite(y_name, y)
