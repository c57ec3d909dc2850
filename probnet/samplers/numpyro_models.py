"""NumPyro models as sampler targets: unconstrained sampling, constrained draws.

The model's arguments are split into *data* (arrays and Python floats: traced inputs of the
compiled program, so new values of the same shape reuse it) and *static* values (ints, bools,
strings, None, ...: part of the cache key, e.g. a plate size). Inside the compiled program,
`numpyro.infer.util.initialize_model(..., dynamic_args=True)` finds initial unconstrained
positions per chain (`init_strategy`, default uniform in [-2, 2]), gives the potential energy
(log density = -potential) and the map to constrained values, deterministic sites included.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import initialize_model

from probnet.samplers.program import FunctionKey

__all__ = ["NumPyroTarget", "numpyro_target"]


def _is_data(leaf: Any) -> bool:
    if isinstance(leaf, bool):
        return False
    return isinstance(leaf, jax.Array | np.ndarray | np.generic | float)


class NumPyroTarget:
    """A NumPyro model with its static arguments fixed; data come in at call time."""

    def __init__(
        self,
        model: Callable,
        treedef: Any,
        static: tuple[tuple[int, Any], ...],
        num_leaves: int,
        init_strategy: Callable,
    ):
        self.model = model
        self.treedef = treedef
        self.static = static
        self.num_leaves = num_leaves
        self.init_strategy = init_strategy
        self.cache_key: Hashable = (
            "numpyro",
            FunctionKey(model),
            treedef,
            static,
            FunctionKey(init_strategy),
        )

    def arguments(self, data: tuple) -> tuple[tuple, dict]:
        """Rebuild `(model_args, model_kwargs)` from the traced data leaves."""
        leaves: list[Any] = [None] * self.num_leaves
        for i, value in self.static:
            leaves[i] = value
        dynamic = iter(data)
        static_index = {i for i, _ in self.static}
        for i in range(self.num_leaves):
            if i not in static_index:
                leaves[i] = next(dynamic)
        return jax.tree.unflatten(self.treedef, leaves)

    def build(self, init_keys, init_arg, data):
        """Initial unconstrained positions, log density and constraining map (traced)."""
        del init_arg
        args, kwargs = self.arguments(data)
        info = initialize_model(
            init_keys,
            self.model,
            init_strategy=self.init_strategy,
            dynamic_args=True,
            model_args=args,
            model_kwargs=kwargs,
        )
        potential_fn = info.potential_fn(*args, **kwargs)
        postprocess_fn = info.postprocess_fn(*args, **kwargs)
        return info.param_info.z, lambda p: -potential_fn(p), postprocess_fn


def numpyro_target(
    model: Callable,
    model_args: tuple,
    model_kwargs: dict | None,
    init_strategy: Callable | None = None,
) -> tuple[NumPyroTarget, tuple]:
    """Split the model's arguments into static ones (in the target) and data (returned)."""
    if not callable(model):
        raise ValueError(f"model must be a NumPyro model (a callable), got {type(model)}")
    if not isinstance(model_args, tuple | list):
        raise ValueError(f"model_args must be a tuple of arguments, got {type(model_args)}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a dict or None, got {type(model_kwargs)}")
    leaves, treedef = jax.tree.flatten((tuple(model_args), dict(model_kwargs or {})))
    static, data = [], []
    for i, leaf in enumerate(leaves):
        if _is_data(leaf):
            data.append(jnp.asarray(leaf))
        else:
            try:
                hash(leaf)
            except TypeError as err:
                raise ValueError(
                    "model_args/model_kwargs: non-array argument values must be hashable "
                    f"(they select the compiled program), got {type(leaf)} at leaf {i}"
                ) from err
            static.append((i, leaf))
    strategy = init_to_uniform if init_strategy is None else init_strategy
    target = NumPyroTarget(model, treedef, tuple(static), len(leaves), strategy)
    return target, tuple(data)
