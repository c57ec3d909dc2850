"""The training state: everything needed to continue a run exactly."""

import equinox as eqx
import jax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree, UInt32


class TrainState(eqx.Module):
    """Model, optimizer state, number of updates done, and the run's base PRNG key.

    The key is stored as raw key data (`jax.random.key_data`) so that it serialises; the key of
    update `s` is `fold_in(key, s)`, so a resumed run draws the same tasks as an uninterrupted
    one.
    """

    model: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    key: UInt32[Array, "..."]

    @property
    def prng_key(self) -> PRNGKeyArray:
        return jax.random.wrap_key_data(self.key)
