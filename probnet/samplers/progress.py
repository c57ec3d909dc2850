"""A tqdm progress bar fed from inside the compiled sampler by `jax.debug.callback`.

The compiled program is cached and reused, so the callback it carries cannot close over one
bar: it reports to whichever bar is currently open here (one sampler runs at a time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int

__all__ = ["progress_bar", "report_progress"]

_ACTIVE: list = []


def _update(step: object, total: object) -> None:
    if not _ACTIVE:
        return
    bar = _ACTIVE[-1]
    step, total = int(step), int(total)
    bar.update(max(step - bar.n, 0))
    if step >= total:
        bar.refresh()


def report_progress(
    step: Int[Array, ""], total: int, every: int, enabled: bool | Int[Array, ""] = True
) -> None:
    """Inside jit: report `step` (1-based, out of `total`) every `every` steps and at the end."""
    due = jnp.logical_and(enabled, jnp.logical_or(step % every == 0, step == total))
    jax.lax.cond(
        due,
        lambda s: jax.debug.callback(_update, s, total, ordered=False),
        lambda s: None,
        step,
    )


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[None]:
    """Open a tqdm bar for the duration of one sampler run (no-op when not `enabled`)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True)
    _ACTIVE.append(bar)
    try:
        yield
    finally:
        jax.effects_barrier()
        _ACTIVE.remove(bar)
        bar.close()
