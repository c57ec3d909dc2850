"""Stan-style window adaptation (step size + mass matrix), built from BlackJAX's pieces.

`blackjax.window_adaptation(...).run` drives its own `jax.jit(lax.scan)` over one chain and
returns after warmup, so it cannot share a compiled program with sampling, nor report progress.
Here we take the same engine that `run` uses in BlackJAX 1.7 (`staged_adaptation._make_engine`,
hosting the Welford metric core and Nesterov dual averaging) and its Stan schedule
(`build_schedule`), so warmup can be one `lax.scan` inside the sampler's single compiled program.
A test checks that one chain adapted here equals `blackjax.window_adaptation(...).run` exactly.
The pooled variant feeds every chain's draw into one Welford estimate and the chains' mean
acceptance rate into one dual averaging (the observation model of BlackJAX's multi-chain path).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.adaptation.metric_recipes import MetricCore, lookup_recipe
from blackjax.adaptation.staged_adaptation import _make_engine, build_schedule
from jaxtyping import Array, Int

__all__ = ["WindowAdaptation", "warmup_schedule", "window_adaptation"]


class WindowAdaptation(NamedTuple):
    """Functional triple for one adaptation state (one chain's, or all chains' when pooled).

    - `init(position, initial_step_size) -> state`
    - `update(state, stage, position, grad, acceptance_rate) -> state`, `stage` one schedule row
    - `final(state) -> (step_size, inverse_mass_matrix)`; the step size is the dual-averaging
      average of the final fast window, as in Stan.
    """

    init: Any
    update: Any
    final: Any


def window_adaptation(
    dense_mass: bool, target_acceptance_rate: float, pooled: bool = False
) -> WindowAdaptation:
    """BlackJAX's window-adaptation engine with a diagonal or dense Welford mass matrix.

    With `pooled`, one adaptation state serves all chains: `update` takes the positions and
    gradients of every chain stacked on a leading axis (each enters the Welford estimate, in
    chain order) and the chains' mean acceptance rate (one dual-averaging observation), as
    BlackJAX's own multi-chain path does. With one chain both forms are identical.
    """
    base = lookup_recipe("welford_dense" if dense_mass else "welford_diag").build_core()
    core = base
    if pooled:

        def update_all(state, positions, grads):
            def one(state, position_grad):
                return base.update(state, *position_grad), None

            return jax.lax.scan(one, state, (positions, grads))[0]

        core = MetricCore(init=base.init, update=update_all, final=base.final)
    init, update, final = _make_engine(core, target_acceptance_rate=target_acceptance_rate)
    return WindowAdaptation(init, update, final)


def warmup_schedule(num_warmup: int) -> Int[Array, "num_warmup 2"]:
    """Stan's warmup schedule: rows `(stage, is_slow_window_end)`, stage 0 fast / 1 slow.

    Windows follow Stan's defaults (75 fast, doubling slow windows from 25, 50 fast), shrunk
    to 15% / 75% / 10% when `num_warmup < 150`; below 20 steps only the step size adapts.
    """
    if num_warmup == 0:
        return jnp.zeros((0, 2), dtype=jnp.int32)
    return jnp.asarray(build_schedule(num_warmup), dtype=jnp.int32)
