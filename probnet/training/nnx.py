"""Train Flax NNX modules with the Equinox engine through a thin, pure adapter.

Flax is imported on first use, so `import probnet.training` stays light.
"""

from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree


class NNXModule(eqx.Module):
    """An `nnx.Module` as an Equinox module: the graph definition (static) and its state.

    Only `nnx.Param` variables are trained (`trainable_mask`); other variables (batch
    statistics, RNG state) ride along unchanged. Calls are pure: the wrapped module is rebuilt
    with `nnx.merge` on each call and state updates made during a call are discarded, so pass
    randomness explicitly (e.g. run dropout in deterministic mode, or give keys as arguments).
    """

    graphdef: Any = eqx.field(static=True)  # nnx.GraphDef
    params: PyTree  # nnx.State of the nnx.Param variables
    rest: PyTree  # nnx.State of every other variable

    def __call__(self, *args, **kwargs):
        return self.to_nnx()(*args, **kwargs)

    def to_nnx(self):
        """A fresh NNX module with this adapter's parameters."""
        from flax import nnx

        return nnx.merge(self.graphdef, self.params, self.rest)

    def trainable_mask(self) -> PyTree[bool]:
        """Filter for the engine: the inexact arrays of `params`, nothing of `rest`."""
        return NNXModule(
            self.graphdef,
            jax.tree.map(eqx.is_inexact_array, self.params),
            jax.tree.map(lambda _: False, self.rest),
        )


def from_nnx(module) -> NNXModule:
    """Wrap an `nnx.Module` for `Trainer`: `nnx.split` into graphdef, parameters, other state."""
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}")
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return NNXModule(graphdef, params, rest)
