"""MCMC convergence diagnostics (Vehtari, Gelman, Simpson, Carpenter & Bürkner, 2021).

All functions take draws shaped `[chains, samples, *event]` and return one value per event
component (shape `event`). They run in NumPy (float64) after sampling, so they add no
compilation. Chains are split in half (an odd chain's middle draw is dropped), as in the paper.

- `rhat`: rank-normalised split-R-hat, the max of the bulk and the folded (tail) versions.
- `ess_bulk`: ESS of the rank-normalised split draws.
- `ess_tail`: min ESS of the indicators `x <= q05` and `x <= q95`.
- `ess_mean`: ESS of the split draws themselves (for the Monte Carlo error of the mean).
- `mcse_mean`, `mcse_sd`: Monte Carlo standard errors of the posterior mean and sd.

The autocorrelation sum uses Geyer's initial monotone sequence as the paper's reference code
(the R package posterior) does. Components with no variation, or a non-finite draw, give `nan`
ESS and R-hat.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.special
from jaxtyping import ArrayLike

__all__ = ["ess_bulk", "ess_mean", "ess_tail", "mcse_mean", "mcse_sd", "rhat", "rhat_ess"]


def _as_draws(draws: ArrayLike, name: str = "draws") -> np.ndarray:
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must be shaped [chains, samples, ...], got shape {x.shape}")
    if x.shape[1] < 4:
        raise ValueError(f"{name} needs at least 4 samples per chain, got shape {x.shape}")
    return x


def _split(x: np.ndarray) -> np.ndarray:
    """Each chain's halves as two chains; an odd chain drops its middle draw (as posterior)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _flat(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """`[chains, samples, *event]` -> component-major `[k, chains, samples]` (contiguous)."""
    event = x.shape[2:]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return np.ascontiguousarray(np.moveaxis(flat, 2, 0)), event


def _ess(x: np.ndarray) -> np.ndarray:
    """ESS of `x` `[k, chains, samples]` (chains already split) -> `[k]`, as the reference
    implementation of Vehtari et al. (2021), the R package posterior, computes it (NaN for
    fewer than 3 draws per split chain).

    Geyer's initial positive sequence runs over lag pairs (2p, 2p + 1) with 2p < n − 3; the
    even term of the pair that ends it (the first non-positive pair, or the last pair
    allowed) enters once; when that is the first pair, τ = 2, as posterior's indexing gives.
    Stan's C++ differs only when the sequence reaches the bound (it adds the last even term
    three times); ArviZ allows one more pair for odd n, and clamps τ instead of setting 2."""
    _, num_chains, n = x.shape
    if n < 3:
        return np.full(x.shape[0], np.nan)
    chain_mean = x.mean(axis=2)  # [k, m]
    centred = x - chain_mean[..., None]
    nfft = scipy.fft.next_fast_len(2 * n)
    spectrum = np.fft.rfft(centred, n=nfft, axis=2)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=nfft, axis=2)[..., :n] / n
    mean_acov = acov.mean(axis=1)  # [k, n]
    within = mean_acov[:, 0] * n / (n - 1.0)
    var_plus = within * (n - 1.0) / n
    if num_chains > 1:
        var_plus = var_plus + chain_mean.var(axis=1, ddof=1)
    degenerate = ~(var_plus > 0) | ~np.any(x != x[:, :1, :1], axis=(1, 2))
    var_plus = np.where(degenerate, 1.0, var_plus)

    rho = 1.0 - (within[:, None] - mean_acov) / var_plus[:, None]
    rho[:, 0] = 1.0
    num_pairs = max((n - 2) // 2, 1)  # pairs (2p, 2p + 1) with 2p < n - 3
    even, odd = rho[:, 0 : 2 * num_pairs : 2], rho[:, 1 : 2 * num_pairs : 2]  # [k, pairs]

    # Geyer's initial positive sequence: pairs count while their sums stay positive; the pair
    # that ends it (`last`) adds its even term once (variance reduction for antithetic chains)
    positive = np.logical_and.accumulate(even + odd > 0.0, axis=1)
    num_positive = positive.sum(axis=1)
    reached_bound = num_positive == num_pairs
    last = np.where(reached_bound, num_pairs - 1, num_positive)
    last_even = even[np.arange(even.shape[0]), last]
    extra = np.where(reached_bound, last_even, np.maximum(last_even, 0.0))
    counted = np.arange(num_pairs) < last[:, None]

    # Geyer's initial monotone sequence: the counted pairs' sums may not increase.
    pairs = np.minimum.accumulate(np.where(counted, even + odd, np.inf), axis=1)
    pairs = np.where(counted, pairs, 0.0)

    tau = np.where(last == 0, 2.0, -1.0 + 2.0 * pairs.sum(axis=1) + extra)
    total = num_chains * n
    tau = np.maximum(tau, 1.0 / np.log10(total))
    return np.where(degenerate, np.nan, total / tau)


def _average_ranks(flat: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis of `flat` `[k, n]`, ties given their average rank."""
    n = flat.shape[-1]
    order = np.argsort(flat, axis=-1)
    ordered = np.take_along_axis(flat, order, axis=-1)
    first = np.ones(ordered.shape, bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    last = np.ones(ordered.shape, bool)
    last[:, :-1] = first[:, 1:]
    position = np.broadcast_to(np.arange(n), ordered.shape)
    start = np.maximum.accumulate(np.where(first, position, 0), axis=-1)
    end = np.minimum.accumulate(np.where(last, position, n - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    return ranks


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    """Blom-normal scores of the pooled average ranks, per component (`[k, chains, samples]`);
    NaN for a component with a non-finite draw (sorting would rank a NaN as the largest)."""
    k, c, s = x.shape
    ranks = _average_ranks(x.reshape(k, c * s))
    z = scipy.special.ndtri((ranks - 0.375) / (c * s + 0.25)).reshape(k, c, s)
    return np.where(np.all(np.isfinite(x), axis=(1, 2))[:, None, None], z, np.nan)


def _rhat_raw(x: np.ndarray) -> np.ndarray:
    n = x.shape[2]
    within = x.var(axis=2, ddof=1).mean(axis=1)
    between = n * x.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((n - 1.0) * within + between) / (n * within))


def _rhat(x: np.ndarray, bulk: np.ndarray) -> np.ndarray:
    folded = np.abs(x - np.median(x.reshape(x.shape[0], -1), axis=1)[:, None, None])
    return np.maximum(_rhat_raw(bulk), _rhat_raw(_rank_normalise(folded)))


def _ess_tail(x: np.ndarray, prob: float) -> np.ndarray:
    pooled = x.reshape(x.shape[0], -1)
    lo, hi = np.quantile(pooled, [(1.0 - prob) / 2.0, (1.0 + prob) / 2.0], axis=1)
    lo, hi = lo[:, None, None], hi[:, None, None]
    return np.fmin(_ess((x <= lo).astype(np.float64)), _ess((x <= hi).astype(np.float64)))


def rhat(draws: ArrayLike) -> np.ndarray:
    """Rank-normalised split-R-hat: max of bulk and folded versions, shape `event`."""
    x, event = _flat(_split(_as_draws(draws)))
    return _rhat(x, _rank_normalise(x)).reshape(event)


def ess_bulk(draws: ArrayLike) -> np.ndarray:
    """Bulk ESS: ESS of the rank-normalised split draws, shape `event`."""
    x, event = _flat(_split(_as_draws(draws)))
    return _ess(_rank_normalise(x)).reshape(event)


def ess_tail(draws: ArrayLike, prob: float = 0.9) -> np.ndarray:
    """Tail ESS: min ESS of `x <= q_lo`, `x <= q_hi` (5% / 95% for `prob=0.9`)."""
    x, event = _flat(_split(_as_draws(draws)))
    return _ess_tail(x, prob).reshape(event)


def rhat_ess(draws: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(rhat, ess_bulk, ess_tail)` together, sharing the split and rank normalisation."""
    x, event = _flat(_split(_as_draws(draws)))
    bulk = _rank_normalise(x)
    return (
        _rhat(x, bulk).reshape(event),
        _ess(bulk).reshape(event),
        _ess_tail(x, 0.9).reshape(event),
    )


def ess_mean(draws: ArrayLike) -> np.ndarray:
    """ESS of the split draws (no rank normalisation), shape `event`."""
    x, event = _flat(_split(_as_draws(draws)))
    return _ess(x).reshape(event)


def mcse_mean(draws: ArrayLike) -> np.ndarray:
    """Monte Carlo standard error of the posterior mean: `sd / sqrt(ess_mean)`."""
    x = _as_draws(draws)
    sd = x.reshape(-1, *x.shape[2:]).std(axis=0, ddof=1)
    return sd / np.sqrt(ess_mean(x))


def mcse_sd(draws: ArrayLike) -> np.ndarray:
    """Monte Carlo standard error of the posterior sd (delta method on the variance)."""
    x = _as_draws(draws)
    squares = (x - x.reshape(-1, *x.shape[2:]).mean(axis=0)) ** 2
    variance = squares.reshape(-1, *x.shape[2:]).mean(axis=0)
    moment4 = (squares**2).reshape(-1, *x.shape[2:]).mean(axis=0)
    var_of_variance = (moment4 - variance**2) / ess_mean(squares)
    return np.sqrt(var_of_variance / variance / 4.0)
