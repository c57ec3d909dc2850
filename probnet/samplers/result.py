"""The result of an HMC/NUTS run: draws, per-transition statistics, diagnostics and timings."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from probnet.samplers import diagnostics

__all__ = ["SamplerResult"]


def _leaf_name(path: tuple) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return name or "x"


class SamplerResult(eqx.Module):
    """Output of `probnet.samplers.nuts` / `hmc` (final class).

    Shapes: `C = num_chains`, `S = num_samples`, `d` = number of unconstrained dimensions.

    - `draws`: pytree of `[C, S, ...]` arrays: the structure of the position for a log density,
      a dict of constrained sample (and deterministic) sites for a NumPyro model.
    - `logdensity` `[C, S]`: log density (unconstrained space, up to a constant) of each draw.
    - `divergences`, `acceptance_rate`, `num_integration_steps` (gradient evaluations),
      `tree_depth` (0 for HMC): per transition, `[C, S]`.
    - `step_size` `[C]` and `inverse_mass_matrix` `[C, d]` or `[C, d, d]`: adapted per chain.
    - `num_warmup_grad_evals`, `num_warmup_divergences` `[C]`: totals over warmup.
    - `rhat`, `ess_bulk`, `ess_tail`: pytrees like `draws`, one value per component.
    - `sampling_time`: seconds of the compiled run (warmup and sampling), `compile_time`:
      seconds spent compiling in this call (0.0 when the compiled program was reused),
      `diagnostics_time`: seconds spent on R-hat and ESS afterwards (NumPy, on the host).
    """

    draws: PyTree[Float[Array, "chains samples ..."]]
    logdensity: Float[Array, "chains samples"]
    divergences: Bool[Array, "chains samples"]
    acceptance_rate: Float[Array, "chains samples"]
    num_integration_steps: Int[Array, "chains samples"]
    tree_depth: Int[Array, "chains samples"]
    step_size: Float[Array, " chains"]
    inverse_mass_matrix: Float[Array, "chains ..."]
    num_warmup_grad_evals: Int[Array, " chains"]
    num_warmup_divergences: Int[Array, " chains"]
    rhat: PyTree[Any]
    ess_bulk: PyTree[Any]
    ess_tail: PyTree[Any]
    sampling_time: float
    compile_time: float
    diagnostics_time: float
    algorithm: str = eqx.field(static=True)
    num_warmup: int = eqx.field(static=True)

    def __check_init__(self):
        shape = np.shape(self.logdensity)
        for name in ("divergences", "acceptance_rate", "num_integration_steps", "tree_depth"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} like logdensity, "
                    f"got {np.shape(getattr(self, name))}"
                )
        for leaf in jax.tree.leaves(self.draws):
            if np.shape(leaf)[:2] != shape:
                raise ValueError(f"draws must be shaped {shape} + event, got {np.shape(leaf)}")

    @property
    def num_chains(self) -> int:
        """Number of chains `C`."""
        return int(np.shape(self.logdensity)[0])

    @property
    def num_samples(self) -> int:
        """Number of kept draws per chain `S`."""
        return int(np.shape(self.logdensity)[1])

    @property
    def num_divergences(self) -> int:
        """Divergent transitions after warmup, all chains."""
        return int(np.sum(self.divergences))

    @property
    def mean_acceptance(self) -> float:
        """Mean acceptance statistic after warmup."""
        return float(np.mean(self.acceptance_rate))

    @property
    def num_grad_evals(self) -> int:
        """Gradient evaluations of the log density, warmup and sampling, all chains."""
        return int(np.sum(self.num_integration_steps) + np.sum(self.num_warmup_grad_evals))

    @property
    def max_rhat(self) -> float:
        """Largest R-hat over all components (nan components ignored)."""
        values = [np.ravel(v) for v in jax.tree.leaves(self.rhat)]
        values = np.concatenate(values) if values else np.array([np.nan])
        return float(np.nanmax(values)) if np.any(np.isfinite(values)) else math.nan

    @property
    def min_ess_bulk(self) -> float:
        """Smallest bulk ESS over all components."""
        return _nanmin(self.ess_bulk)

    @property
    def min_ess_tail(self) -> float:
        """Smallest tail ESS over all components."""
        return _nanmin(self.ess_tail)

    def flat_draws(self) -> PyTree[Float[Array, "draws ..."]]:
        """Draws with chains and samples merged: `[C * S, ...]` per leaf."""
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), self.draws)

    def summary(self, max_rows: int = 50) -> str:
        """A table of mean, sd, 5%/95% quantiles, MCSE, bulk/tail ESS and R-hat per component."""
        header = (
            f"{self.algorithm.upper()}: {self.num_chains} chains x {self.num_samples} draws "
            f"(+{self.num_warmup} warmup); divergences {self.num_divergences}; "
            f"mean acceptance {self.mean_acceptance:.3f}; step size "
            f"{np.min(self.step_size):.3g}-{np.max(self.step_size):.3g}; "
            f"gradient evaluations {self.num_grad_evals}; sampling {self.sampling_time:.2f} s, "
            f"compile {self.compile_time:.2f} s"
        )
        cols = ("mean", "sd", "5%", "95%", "mcse", "ess_bulk", "ess_tail", "r_hat")
        lines = [header, f"{'':>20s}" + "".join(f"{c:>10s}" for c in cols)]
        rows = 0
        paths = jax.tree_util.tree_leaves_with_path(self.draws)
        rhats = jax.tree.leaves(self.rhat)
        bulks = jax.tree.leaves(self.ess_bulk)
        tails = jax.tree.leaves(self.ess_tail)
        for (path, leaf), rh, eb, et in zip(paths, rhats, bulks, tails, strict=True):
            x = np.asarray(leaf, dtype=np.float64)
            event = x.shape[2:]
            flat = x.reshape(-1, *event)
            stats = (
                flat.mean(0),
                flat.std(0, ddof=1),
                np.quantile(flat, 0.05, axis=0),
                np.quantile(flat, 0.95, axis=0),
                diagnostics.mcse_mean(x) if x.shape[1] >= 4 else np.full(event, np.nan),
                np.asarray(eb),
                np.asarray(et),
                np.asarray(rh),
            )
            for index in np.ndindex(*event):
                if rows >= max_rows:
                    lines.append("...")
                    return "\n".join(lines)
                name = _leaf_name(path) + (str(list(index)) if index else "")
                values = "".join(f"{float(v[index]):>10.3g}" for v in stats)
                lines.append(f"{name[:20]:>20s}{values}")
                rows += 1
        return "\n".join(lines)

    def print_summary(self, max_rows: int = 50) -> None:
        """Print `summary()`."""
        print(self.summary(max_rows))


def _nanmin(tree: PyTree) -> float:
    values = [np.ravel(v) for v in jax.tree.leaves(tree)]
    values = np.concatenate(values) if values else np.array([np.nan])
    return float(np.nanmin(values)) if np.any(np.isfinite(values)) else math.nan
