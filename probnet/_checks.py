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


def check_positive(name: str, x, allow_zero: bool = False):
    """Return `x`, raising unless every entry is finite and > 0 (>= 0 with `allow_zero`)."""
    x = jnp.asarray(x)
    bound = ">= 0" if allow_zero else "> 0"
    in_range = (lambda v: v >= 0) if allow_zero else (lambda v: v > 0)
    if is_traced(x):
        return eqx.error_if(x, ~jnp.all(in_range(x)), f"{name} must be {bound}")
    value = np.asarray(x)
    if not np.all(in_range(value)) or not np.all(np.isfinite(value)):
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return x


def check_covariance(name: str, x, definite: bool = True):
    """Return `x`, raising unless the (concrete) matrices `[..., d, d]` are finite, symmetric and
    positive definite (semi-definite with `definite=False`), to float rounding."""
    x = as_float_array(x)
    if is_traced(x):
        return x
    value = np.asarray(x, np.float64)
    kind = "symmetric positive " + ("definite" if definite else "semi-definite")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} must be {kind}, but it contains NaN or inf")
    tol = 100 * np.finfo(x.dtype).eps * max(np.max(np.abs(value), initial=0.0), 1e-300)
    if np.any(np.abs(value - np.swapaxes(value, -1, -2)) > tol):
        raise ValueError(f"{name} must be {kind}, but it is not symmetric")
    lowest = np.min(np.linalg.eigvalsh(value), initial=np.inf)
    if lowest <= 0 if definite else lowest < -tol:
        raise ValueError(f"{name} must be {kind}, but has an eigenvalue {lowest:.3g}")
    return x


def check_ndim(name: str, x, ndim: int, shape_doc: str):
    """Raise unless `x` has `ndim` dimensions; `shape_doc` names them, e.g. `[N, D]`."""
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {jnp.shape(x)}")


def check_mask(name: str, mask, n: int):
    """Return `mask` (None stays None), raising unless it is a boolean array of shape `[n]`."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (n,) or mask.dtype != jnp.bool_:
        raise ValueError(
            f"{name} must be a boolean array of shape [{n}], got {mask.dtype}{mask.shape}"
        )
    return mask


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
