"""The compiled sampler: warmup and sampling for all chains as ONE XLA program, cached.

A *target* says how to get initial positions, the log density and the map from sampler space
to reported values out of traced data. The program for a (target, settings) pair is traced
and compiled once per argument signature (pytree structure, shapes, dtypes) and reused, so
new data of the same shape runs without retracing or recompiling.

Chains are vmapped; when several devices are used the chain axis is split over a 1-D mesh
(`jax.shard_map`), each device running its chains (pooled adaptation all-gathers the chains'
positions, gradients and acceptance rates at each warmup step; per-chain adaptation needs no
communication). Every chain draws its randomness from its own key, `split(key, num_chains)[c]`,
so the draws do not depend on how the chains are laid out on devices (up to float rounding).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec

from probnet.samplers.adaptation import warmup_schedule, window_adaptation
from probnet.samplers.kernels import AlgorithmSettings, build_kernel
from probnet.samplers.progress import report_progress

__all__ = ["ProgramSettings", "Target", "get_program", "FunctionKey"]

_CHAIN_AXIS = "chain"
_MAX_CACHED_PROGRAMS = 64


class Target(Protocol):
    """What the compiled program samples.

    `cache_key` identifies the target (function identity and static configuration).
    `build(init_keys [c], init_arg, data)` is called inside the trace with the local chains'
    keys, the per-chain initial argument and the traced data; it returns
    `(positions [c, ...], logdensity_fn(position) -> scalar, postprocess_fn(position) -> draw)`.
    """

    cache_key: Hashable

    def build(self, init_keys: Any, init_arg: Any, data: Any) -> tuple[Any, Callable, Callable]:
        """Initial positions, log density and postprocessing, from traced inputs."""
        ...


class ProgramSettings(NamedTuple):
    """Static settings of one compiled program (all hashable)."""

    algorithm: AlgorithmSettings
    num_warmup: int
    num_samples: int
    num_chains: int
    dense_mass: bool
    target_acceptance_rate: float
    initial_step_size: float
    progress_every: int  # 0: no progress reporting
    num_devices: int  # 1: plain vmap; >1: chains sharded over this many devices
    x64: bool
    pooled: bool = True  # one step size and mass matrix adapted from all chains


class FunctionKey:
    """Hashable cache key for a user callable: by equality when hashable, else by identity."""

    __slots__ = ("fn", "_hash")

    def __init__(self, fn: Any):
        self.fn = fn
        try:
            self._hash = hash(fn)
        except TypeError:
            self._hash = None

    def __hash__(self) -> int:
        return self._hash if self._hash is not None else id(self.fn)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FunctionKey):
            return NotImplemented
        if self._hash is None or other._hash is None:
            return self.fn is other.fn
        return self.fn is other.fn or bool(self.fn == other.fn)


def _local_run(target: Target, s: ProgramSettings, chain_keys, init_arg, data, is_lead):
    """Warmup + sampling for the chains in `chain_keys` (all chains, or one device's share)."""
    kernel = build_kernel(s.algorithm)
    adaptation = window_adaptation(s.dense_mass, s.target_acceptance_rate, s.pooled)
    sharded = s.num_devices > 1

    def gather(tree):  # all chains' values, on every device (pooled adaptation)
        if not sharded:
            return tree
        return jax.tree.map(lambda x: jax.lax.all_gather(x, _CHAIN_AXIS, tiled=True), tree)

    num_local = chain_keys.shape[0]
    total = s.num_warmup + s.num_samples

    keys = jax.vmap(lambda k: jax.random.split(k, 3))(chain_keys)
    init_keys, warmup_keys, sample_keys = keys[:, 0], keys[:, 1], keys[:, 2]
    positions, logdensity_fn, postprocess_fn = target.build(init_keys, init_arg, data)

    states = jax.vmap(lambda p: kernel.init(p, logdensity_fn))(positions)
    if states.logdensity.shape != (num_local,):
        raise ValueError(
            "logdensity must return a scalar for one position, got shape "
            f"{states.logdensity.shape[1:]}"
        )
    init_logdensity = states.logdensity

    shared = None if s.pooled else 0  # step size and mass matrix: one for all, or per chain

    def step(keys, states, step_size, inverse_mass_matrix):
        return jax.vmap(
            lambda k, st, ss, imm: kernel.step(k, st, logdensity_fn, ss, imm),
            in_axes=(0, 0, shared, shared),
        )(keys, states, step_size, inverse_mass_matrix)

    def progress(i):
        if s.progress_every > 0:
            report_progress(i, total, s.progress_every, is_lead)

    # One scan over warmup and sampling, so the kernel is traced (and compiled) once. During
    # warmup, the step size and mass matrix come from the adaptation state; after the last
    # warmup step they are frozen at the adapted values.
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])(positions)
    dtype = flat.dtype
    step_size0 = jnp.asarray(s.initial_step_size, dtype=dtype)
    if s.pooled:
        adapt_states = adaptation.init(jax.tree.map(lambda x: x[0], positions), step_size0)
        step_size = step_size0
    else:
        adapt_states = jax.vmap(lambda p: adaptation.init(p, step_size0))(positions)
        step_size = jnp.full((num_local,), s.initial_step_size, dtype=dtype)
    inverse_mass_matrix = adapt_states.inverse_mass_matrix

    def split_keys(keys, n):
        return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n))(keys), 0, 1)

    # Warmup keys are the stream `blackjax.window_adaptation(...).run(warmup_key, ...)` uses.
    step_keys = jnp.concatenate(
        [split_keys(warmup_keys, s.num_warmup), split_keys(sample_keys, s.num_samples)]
    )
    schedule = jnp.concatenate(
        [warmup_schedule(s.num_warmup), jnp.zeros((s.num_samples, 2), jnp.int32)]
    )

    def adapt(i, adapt_states, states, stats, stage):
        if s.pooled:
            positions, grads, accept = gather(
                (states.position, states.logdensity_grad, stats["acceptance_rate"])
            )
            adapt_states = adaptation.update(adapt_states, stage, positions, grads, accept.mean())
            final = adaptation.final
        else:
            adapt_states = jax.vmap(adaptation.update, in_axes=(0, None, 0, 0, 0))(
                adapt_states,
                stage,
                states.position,
                states.logdensity_grad,
                stats["acceptance_rate"],
            )
            final = jax.vmap(adaptation.final)
        step_size, inverse_mass_matrix = jax.lax.cond(
            i == s.num_warmup - 1,
            final,
            lambda a: (a.step_size, a.inverse_mass_matrix),
            adapt_states,
        )
        return adapt_states, step_size, inverse_mass_matrix

    def record(buffer, value, i):
        index = jnp.maximum(i - s.num_warmup, 0)
        return jax.tree.map(
            lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v.astype(b.dtype), index, 0),
            buffer,
            value,
        )

    def body(carry, xs):
        states, adapt_states, step_size, imm, grads, divergences, buffers = carry
        i, keys, stage = xs
        states, stats = step(keys, states, step_size, imm)
        if s.num_warmup > 0:
            adapt_states, step_size, imm = jax.lax.cond(
                i < s.num_warmup,
                lambda: adapt(i, adapt_states, states, stats, stage),
                lambda: (adapt_states, step_size, imm),
            )
        warm = i < s.num_warmup
        grads = grads + jnp.where(warm, stats["num_integration_steps"], 0)
        divergences = divergences + jnp.where(warm, stats["is_divergent"], False)
        draw = (jax.vmap(postprocess_fn)(states.position), states.logdensity, stats)
        buffers = record(buffers, draw, i)
        progress(i + 1)
        return (states, adapt_states, step_size, imm, grads, divergences, buffers), None

    draw_shapes = (
        jax.eval_shape(jax.vmap(postprocess_fn), positions),
        states.logdensity,
        {
            "acceptance_rate": states.logdensity,
            "is_divergent": jnp.zeros((num_local,), bool),
            "num_integration_steps": jnp.zeros((num_local,), jnp.int32),
            "tree_depth": jnp.zeros((num_local,), jnp.int32),
        },
    )
    buffers = jax.tree.map(lambda a: jnp.zeros((s.num_samples, *a.shape), a.dtype), draw_shapes)
    zeros = jnp.zeros((num_local,), jnp.int32)
    carry = (states, adapt_states, step_size, inverse_mass_matrix, zeros, zeros, buffers)
    carry, _ = jax.lax.scan(body, carry, (jnp.arange(total), step_keys, schedule))
    _, _, step_size, inverse_mass_matrix, warmup_grads, warmup_divergences, buffers = carry
    draws, logdensity, stats = buffers
    if s.pooled:  # report per chain, like per-chain adaptation
        step_size = jnp.broadcast_to(step_size, (num_local,))
        inverse_mass_matrix = jnp.broadcast_to(
            inverse_mass_matrix, (num_local, *inverse_mass_matrix.shape)
        )
    chains_first = lambda x: jnp.swapaxes(x, 0, 1)
    return {
        "draws": jax.tree.map(chains_first, draws),
        "logdensity": chains_first(logdensity),
        "stats": jax.tree.map(chains_first, stats),
        "step_size": step_size,
        "inverse_mass_matrix": inverse_mass_matrix,
        "warmup_grad_evals": warmup_grads,
        "warmup_divergences": warmup_divergences,
        "init_logdensity": init_logdensity,
    }


def _make_program(target: Target, s: ProgramSettings) -> Callable:
    def program(key, init_arg, data):
        chain_keys = jax.random.split(key, s.num_chains)
        if s.num_devices == 1:
            return _local_run(target, s, chain_keys, init_arg, data, True)
        mesh = Mesh(np.asarray(jax.devices()[: s.num_devices]), (_CHAIN_AXIS,))
        chains = PartitionSpec(_CHAIN_AXIS)

        def local(chain_keys, init_arg, data):
            is_lead = jax.lax.axis_index(_CHAIN_AXIS) == 0
            return _local_run(target, s, chain_keys, init_arg, data, is_lead)

        sharded = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(chains, chains, PartitionSpec()),
            out_specs=chains,
            check_vma=False,
        )
        return sharded(chain_keys, init_arg, data)

    return program


def _signature(args: Any) -> Hashable:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(jax.typeof(x) for x in leaves)


class Program:
    """One (target, settings) program; compiled ahead of time per argument signature."""

    def __init__(self, target: Target, settings: ProgramSettings):
        self.target = target
        self.settings = settings
        self._jitted = jax.jit(_make_program(target, settings))
        self._compiled: dict[Hashable, Any] = {}

    def __call__(self, key, init_arg, data) -> tuple[dict, float, float]:
        """Run; returns `(outputs, compile_seconds, run_seconds)`, compile 0 when cached."""
        args = (key, init_arg, data)
        signature = _signature(args)
        compiled = self._compiled.get(signature)
        compile_seconds = 0.0
        if compiled is None:
            start = time.perf_counter()
            compiled = self._jitted.lower(*args).compile()
            compile_seconds = time.perf_counter() - start
            self._compiled[signature] = compiled
        start = time.perf_counter()
        outputs = jax.block_until_ready(compiled(*args))
        return outputs, compile_seconds, time.perf_counter() - start


_PROGRAMS: collections.OrderedDict[Hashable, Program] = collections.OrderedDict()


def cached(cache: collections.OrderedDict, key: Hashable, make: Callable[[], Any]) -> Any:
    """`cache[key]`, built by `make()` when missing; the cache keeps the newest
    `_MAX_CACHED_PROGRAMS` entries (least recently used dropped first)."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        while len(cache) > _MAX_CACHED_PROGRAMS:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def get_program(target: Target, settings: ProgramSettings) -> Program:
    """The cached program for `(target.cache_key, settings)` (LRU of 64 programs)."""
    return cached(_PROGRAMS, (target.cache_key, settings), lambda: Program(target, settings))
