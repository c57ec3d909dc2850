"""Public entry points: `nuts` and `hmc`, on a log density or on a NumPyro model.

    result = nuts(logdensity, initial_position, key, data=(x, y))

runs `num_chains` chains of BlackJAX NUTS after Stan-style window adaptation of the step size
and (diagonal or dense) mass matrix, warmup and sampling in one compiled program. By default
the adaptation is pooled: one step size (dual averaging on the chains' mean acceptance rate)
and one mass matrix (Welford over every chain's draws) for all chains, as in BlackJAX's
multi-chain warmup; `adaptation="per_chain"` adapts each chain on its own, as Stan and NumPyro
do (and is then exactly `blackjax.window_adaptation`).
`logdensity(position, *data)` must return a scalar; `initial_position` is a pytree whose
leaves carry a leading chain axis. The program is cached on (logdensity, pytree structure,
shapes and dtypes of the position and data, static settings): call again with new data of the
same shapes and nothing is retraced or recompiled. Pass data as `data=...`, not in a closure:
a new closure (e.g. a lambda built per call) is a new function and compiles again.
"""

from __future__ import annotations

import collections
import math
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from probnet.samplers import diagnostics
from probnet.samplers.kernels import AlgorithmSettings
from probnet.samplers.numpyro_models import numpyro_target
from probnet.samplers.program import FunctionKey, ProgramSettings, cached, get_program
from probnet.samplers.progress import progress_bar as open_progress_bar
from probnet.samplers.result import SamplerResult

__all__ = ["hmc", "nuts"]

_RHAT_WARNING = 1.01
_check_programs: collections.OrderedDict[Any, Callable] = collections.OrderedDict()


class LogDensityTarget(NamedTuple):
    """A user log density `logdensity(position, *data)`; positions given per chain."""

    logdensity: Callable
    cache_key: Any

    def build(self, init_keys, init_arg, data):
        """The given positions; `logdensity` with the traced data bound; no postprocessing."""
        del init_keys
        return init_arg, lambda p: self.logdensity(p, *data), lambda p: p


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_key(key: Any) -> PRNGKeyArray:
    if key is None:
        raise ValueError("key must be a JAX PRNG key (e.g. jax.random.key(0)), got None")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    raw = np.asarray(key)
    if raw.shape == (2,) and raw.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(raw))
    raise ValueError(
        "key must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
        f"got {type(key).__name__} with shape {getattr(raw, 'shape', None)}"
    )


def _check_position(initial_position: Any, num_chains: int) -> PyTree:
    if initial_position is None:
        raise ValueError(
            "initial_position is required with a logdensity: a pytree whose leaves are shaped "
            "[num_chains, ...]"
        )
    paths = jax.tree_util.tree_leaves_with_path(initial_position)
    if not paths:
        raise ValueError("initial_position must contain at least one array, got an empty pytree")
    converted = []
    for path, leaf in paths:
        where = "initial_position" + jax.tree_util.keystr(path)
        x = jnp.asarray(leaf)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{where} must be floating point, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[0] != num_chains:
            raise ValueError(
                f"{where} must have a leading chain axis of size num_chains={num_chains}, got "
                f"shape {x.shape}; stack one position per chain (e.g. with jnp.stack or "
                "jax.random.normal(key, (num_chains, dim)))"
            )
        if not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{where} contains non-finite values")
        converted.append(x)
    return jax.tree.unflatten(jax.tree.structure(initial_position), converted)


def _as_data(data: Any, name: str) -> tuple:
    if not isinstance(data, tuple | list):
        raise ValueError(
            f"{name} must be a tuple of extra arguments to logdensity (e.g. data=(x, y), or "
            f"data=(x,) for one), got {type(data).__name__}"
        )
    return tuple(jax.tree.map(jnp.asarray, tuple(data)))


def _check_logdensity_at(logdensity: Callable, key: Any, position: PyTree, data: tuple) -> None:
    """Evaluate the log density and its gradient at every chain's initial position."""

    def value(p, data):
        out = logdensity(p, *data)
        if jnp.shape(out) != ():
            raise ValueError(
                f"logdensity must return a scalar for one position, got shape {jnp.shape(out)}"
            )
        return out

    make = lambda: jax.jit(jax.vmap(jax.value_and_grad(value), in_axes=(0, None)))  # noqa: E731
    check = cached(_check_programs, key, make)
    values, grads = check(position, data)
    finite_grad = np.all(
        [
            np.isfinite(np.asarray(g).reshape(g.shape[0], -1)).all(axis=1)
            for g in jax.tree.leaves(grads)
        ],
        axis=0,
    )
    bad_value = np.flatnonzero(~np.isfinite(np.asarray(values)))
    if bad_value.size:
        raise ValueError(
            f"logdensity is not finite at initial_position for chain(s) {bad_value.tolist()} "
            f"(values {np.asarray(values)[bad_value].tolist()}); start the chains where the "
            "density is positive"
        )
    bad_grad = np.flatnonzero(~np.asarray(finite_grad))
    if bad_grad.size:
        raise ValueError(
            f"the gradient of logdensity is not finite at initial_position for chain(s) "
            f"{bad_grad.tolist()}"
        )


def _num_devices(num_devices: int | None, num_chains: int) -> int:
    available = jax.device_count()
    if num_devices is None:
        return max(d for d in range(1, min(available, num_chains) + 1) if num_chains % d == 0)
    num_devices = _check_int("num_devices", num_devices, 1)
    if num_devices > available or num_chains % num_devices:
        raise ValueError(
            f"num_devices must divide num_chains={num_chains} and be <= the {available} "
            f"available device(s), got {num_devices}"
        )
    return num_devices


def _sample(
    algorithm: AlgorithmSettings,
    logdensity: Callable | None,
    initial_position: PyTree | None,
    key: PRNGKeyArray,
    *,
    data: tuple,
    model: Callable | None,
    model_args: tuple,
    model_kwargs: dict | None,
    init_strategy: Callable | None,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    dense_mass: bool,
    adaptation: str,
    target_acceptance_rate: float,
    initial_step_size: float,
    progress_bar: bool,
    num_devices: int | None,
    warn: bool,
) -> SamplerResult:
    num_chains = _check_int("num_chains", num_chains, 1)
    if adaptation not in ("pooled", "per_chain"):
        raise ValueError(f"adaptation must be 'pooled' or 'per_chain', got {adaptation!r}")
    num_samples = _check_int("num_samples", num_samples, 1)
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    if not 0.0 < float(target_acceptance_rate) < 1.0:
        raise ValueError(f"target_acceptance_rate must be in (0, 1), got {target_acceptance_rate}")
    if not (math.isfinite(float(initial_step_size)) and float(initial_step_size) > 0.0):
        raise ValueError(f"initial_step_size must be > 0, got {initial_step_size}")
    threshold = algorithm.divergence_threshold
    if not (math.isfinite(threshold) and threshold > 0.0):
        raise ValueError(f"divergence_threshold must be finite and > 0, got {threshold}")
    key = _check_key(key)
    devices = _num_devices(num_devices, num_chains)

    if (logdensity is None) == (model is None):
        raise ValueError(
            "pass exactly one of logdensity (with initial_position) or model (a NumPyro model), "
            f"got logdensity={logdensity!r} and model={model!r}"
        )
    if model is not None:
        if initial_position is not None:
            raise ValueError(
                "initial_position is not used with a NumPyro model; pass init_strategy instead"
            )
        if data:
            raise ValueError("data is for logdensity; pass model_args / model_kwargs to a model")
        target, data = numpyro_target(model, model_args, model_kwargs, init_strategy)
        init_arg: Any = ()
    else:
        if not callable(logdensity):
            raise ValueError(f"logdensity must be callable, got {type(logdensity).__name__}")
        if init_strategy is not None or model_args or model_kwargs:
            raise ValueError("init_strategy / model_args / model_kwargs need model=")
        init_arg = _check_position(initial_position, num_chains)
        data = _as_data(data, "data")
        fn_key = FunctionKey(logdensity)
        target = LogDensityTarget(logdensity, ("logdensity", fn_key))
        _check_logdensity_at(logdensity, fn_key, init_arg, data)

    total = num_warmup + num_samples
    settings = ProgramSettings(
        algorithm=algorithm,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        dense_mass=bool(dense_mass),
        target_acceptance_rate=float(target_acceptance_rate),
        initial_step_size=float(initial_step_size),
        progress_every=max(total // 100, 1) if progress_bar else 0,
        num_devices=devices,
        x64=bool(jax.config.read("jax_enable_x64")),
        pooled=adaptation == "pooled",
    )
    program = get_program(target, settings)
    with open_progress_bar(total, algorithm.name, bool(progress_bar)):
        out, compile_time, run_time = program(key, init_arg, data)

    bad = np.flatnonzero(~np.isfinite(np.asarray(out["init_logdensity"])))
    if bad.size:
        raise ValueError(
            f"model: no finite log density at the initial position of chain(s) {bad.tolist()}; "
            "check the model and init_strategy"
        )
    return _result(algorithm.name, num_warmup, out, compile_time, run_time, warn)


def _diagnose(draws: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """Per-leaf `(rhat, ess_bulk, ess_tail)` pytrees (nan with fewer than 4 samples)."""
    leaves, treedef = jax.tree.flatten(draws)
    out = []
    for leaf in leaves:
        x = np.asarray(leaf)
        if x.shape[1] < 4:
            out.append((np.full(x.shape[2:], np.nan),) * 3)
        else:
            out.append(diagnostics.rhat_ess(x))
    return tuple(jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3))


def _result(
    name: str, num_warmup: int, out: dict, compile_time: float, run_time: float, warn: bool
) -> SamplerResult:
    start = time.perf_counter()
    rhat, ess_bulk, ess_tail = _diagnose(out["draws"])
    diagnostics_time = time.perf_counter() - start
    stats = out["stats"]
    result = SamplerResult(
        draws=out["draws"],
        logdensity=out["logdensity"],
        divergences=stats["is_divergent"],
        acceptance_rate=stats["acceptance_rate"],
        num_integration_steps=stats["num_integration_steps"],
        tree_depth=stats["tree_depth"],
        step_size=out["step_size"],
        inverse_mass_matrix=out["inverse_mass_matrix"],
        num_warmup_grad_evals=out["warmup_grad_evals"],
        num_warmup_divergences=out["warmup_divergences"],
        rhat=rhat,
        ess_bulk=ess_bulk,
        ess_tail=ess_tail,
        sampling_time=run_time,
        compile_time=compile_time,
        diagnostics_time=diagnostics_time,
        algorithm=name,
        num_warmup=num_warmup,
    )
    if warn:
        if result.num_divergences:
            warnings.warn(
                f"{name}: {result.num_divergences} divergent transitions after warmup "
                f"({result.num_divergences / result.divergences.size:.1%}); the draws may be "
                "biased: raise target_acceptance_rate or reparameterise",
                UserWarning,
                stacklevel=4,
            )
        if result.max_rhat > _RHAT_WARNING:
            warnings.warn(
                f"{name}: max R-hat {result.max_rhat:.3f} > {_RHAT_WARNING}; the chains have "
                "not mixed: run longer warmup / more samples",
                UserWarning,
                stacklevel=4,
            )
    return result


def nuts(
    logdensity: Callable[..., Float[Array, ""]] | None = None,
    initial_position: PyTree[Float[Array, "chains ..."]] | None = None,
    key: PRNGKeyArray | None = None,
    *,
    data: tuple = (),
    model: Callable | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    init_strategy: Callable | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    dense_mass: bool = False,
    adaptation: str = "pooled",
    target_acceptance_rate: float = 0.8,
    max_num_doublings: int = 10,
    initial_step_size: float = 1.0,
    divergence_threshold: float = 1000.0,
    progress_bar: bool = False,
    num_devices: int | None = None,
    warn: bool = True,
) -> SamplerResult:
    """Sample with BlackJAX NUTS after Stan-style window adaptation.

    Either `logdensity(position, *data) -> scalar` with `initial_position` (pytree, leaves
    `[num_chains, ...]`), or `model=` a NumPyro model with `model_args` / `model_kwargs`
    (array and float arguments are data; others are static), sampled in unconstrained space
    with draws reported as constrained sites. `key` is a JAX PRNG key; the same key gives the
    same draws. `dense_mass` adapts a dense instead of a diagonal mass matrix; `adaptation`
    is `"pooled"` (one step size and mass matrix learnt from all chains) or `"per_chain"`.
    Chains are sharded over `num_devices` devices (default: as many as divide `num_chains`).
    `progress_bar` shows a tqdm bar fed from inside the compiled program. With `warn`, a
    UserWarning reports divergences after warmup and max R-hat > 1.01.
    """
    return _sample(
        AlgorithmSettings(
            "nuts",
            max_num_doublings=_check_int("max_num_doublings", max_num_doublings, 1),
            divergence_threshold=float(divergence_threshold),
        ),
        logdensity,
        initial_position,
        key,
        data=data,
        model=model,
        model_args=model_args,
        model_kwargs=model_kwargs,
        init_strategy=init_strategy,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        dense_mass=dense_mass,
        adaptation=adaptation,
        target_acceptance_rate=target_acceptance_rate,
        initial_step_size=initial_step_size,
        progress_bar=progress_bar,
        num_devices=num_devices,
        warn=warn,
    )


def hmc(
    logdensity: Callable[..., Float[Array, ""]] | None = None,
    initial_position: PyTree[Float[Array, "chains ..."]] | None = None,
    key: PRNGKeyArray | None = None,
    *,
    num_integration_steps: int = 16,
    data: tuple = (),
    model: Callable | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    init_strategy: Callable | None = None,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    dense_mass: bool = False,
    adaptation: str = "pooled",
    target_acceptance_rate: float = 0.8,
    initial_step_size: float = 1.0,
    divergence_threshold: float = 1000.0,
    progress_bar: bool = False,
    num_devices: int | None = None,
    warn: bool = True,
) -> SamplerResult:
    """Sample with BlackJAX HMC (`num_integration_steps` leapfrog steps per transition).

    Same arguments and result as `nuts`; the step size and mass matrix are adapted the same
    way (Stan's windows, pooled over chains or per chain).
    """
    return _sample(
        AlgorithmSettings(
            "hmc",
            num_integration_steps=_check_int("num_integration_steps", num_integration_steps, 1),
            divergence_threshold=float(divergence_threshold),
        ),
        logdensity,
        initial_position,
        key,
        data=data,
        model=model,
        model_args=model_args,
        model_kwargs=model_kwargs,
        init_strategy=init_strategy,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        dense_mass=dense_mass,
        adaptation=adaptation,
        target_acceptance_rate=target_acceptance_rate,
        initial_step_size=initial_step_size,
        progress_bar=progress_bar,
        num_devices=num_devices,
        warn=warn,
    )
