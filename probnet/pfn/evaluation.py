"""Evaluate a PFN: held-out NLL per number of context points against exact Bayes, type-II ML
and NUTS, with seconds per posterior for each method."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from probnet import gp
from probnet.distributions import Normal
from probnet.kernels import RBF, AbstractKernel
from probnet.pfn.model import PFN
from probnet.priors import AbstractPrior, BNNPrior

__all__ = ["bayesian_mlp_of", "nll_by_context"]


_CHUNK = 64  # datasets per vmapped chunk in `nll_by_context`


def _timed(fn, *args, repeats=1):
    """`fn(*args)` (a jitted function) and its best run time over `repeats` runs, in seconds,
    compilation excluded."""
    compiled = fn.lower(*args).compile()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return out, best


def bayesian_mlp_of(prior: BNNPrior):
    """The `probnet.samplers.BayesianMLP` whose posterior is exact Bayes for `prior`; the prior's
    architecture must be fixed (one depth, one width, one activation, fixed weight and noise
    standard deviations)."""
    from probnet.samplers import BayesianMLP

    fixed = (
        prior.min_depth == prior.max_depth
        and prior.min_width == prior.max_width
        and len(prior.activations) == 1
        and isinstance(prior.weight_std, int | float)
        and isinstance(prior.noise_std, int | float)
    )
    if not fixed:
        raise ValueError(
            "NUTS needs the BNN prior's architecture fixed: min_depth == max_depth, min_width == "
            "max_width, one activation, and float weight_std and noise_std"
        )
    return BayesianMLP(
        num_features=prior.num_features,
        hidden_widths=(prior.max_width,) * prior.max_depth,
        activation=prior.activations[0],
        weight_std=float(prior.weight_std),
        noise_std=float(prior.noise_std),
    )


def nll_by_context(
    model: PFN,
    prior: AbstractPrior,
    key: PRNGKeyArray,
    num_datasets: int = 2000,
    num_points: int = 32,
    max_context: int | None = None,
    context_sizes: tuple[int, ...] | None = None,
    type2_ml: bool = True,
    type2_datasets: int = 200,
    type2_kernel: AbstractKernel | None = None,
    type2_steps: int = 200,
    nuts_datasets: int = 0,
    nuts_context_sizes: tuple[int, ...] = (2, 4, 8, 16),
    nuts_warmup: int = 1000,
    nuts_samples: int = 1000,
    nuts_chains: int = 1,
    plot_dir: str | None = None,
) -> dict[str, float]:
    """Mean NLL (nats per held-out point) for every number of context points k = 1..max_context
    (default `num_points - 1`), or each k in `context_sizes`, on `num_datasets` fresh datasets:
    the first k points of a dataset are its context and the rest its targets.

    Methods: the PFN; the prior's exact posterior predictive where it has one; type-II maximum
    likelihood GP (an RBF kernel, or `type2_kernel`, fitted by `gp.fit_hyperparameters`) on the
    first `type2_datasets` datasets; on a fixed-architecture `BNNPrior`, NUTS on the same
    Bayesian MLP (`nuts_warmup` + `nuts_samples` steps of `nuts_chains` chains) on the first
    `nuts_datasets` datasets and each k in `nuts_context_sizes`. For each method: `NAME/nll_kK`,
    `NAME/mean_nll`, `NAME/seconds_per_posterior` (one dataset at one k; the batched methods
    are timed over the whole batch), and for the subsets the PFN on the same problems
    (`NAME/pfn_nll_kK`); for every baseline the paired difference PFN − NAME on its datasets and
    its standard error (`NAME/pfn_minus_NAME_kK`, `..._sem_kK`).
    `pfn/seconds_per_posterior_single` times one unbatched call. With `plot_dir`, writes
    `nll_by_context.json`, the per-dataset NLLs `nll_by_context.npz` (`NAME`: `[datasets, ks]`,
    `NAME_ks`) and a plot `nll_by_context.png` there.
    """
    max_context = num_points - 1 if max_context is None else max_context
    ks = np.arange(1, max_context + 1) if context_sizes is None else np.asarray(context_sizes)
    if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"context_sizes must be a non-empty list of integers, got {ks.tolist()}")
    if ks.min() < 0 or ks.max() >= num_points:
        raise ValueError(f"context sizes must lie in [0, {num_points - 1}], got {ks.tolist()}")
    tasks = prior.sample(key, num_datasets, num_points)
    index = jnp.arange(num_points)

    def per_point(log_prob, k):
        target = index >= k
        return -jnp.sum(jnp.where(target, log_prob, 0.0)) / jnp.sum(target)

    def over_datasets_and_k(one, ks):
        """`one(x, y, k)` for every dataset and k, `[datasets, ks]`: vmapped over k and over
        chunks of `_CHUNK` datasets (all at once held [datasets·ks·points, bars] logits)."""
        ks = jnp.asarray(ks)

        def per_dataset(xy):
            return jax.vmap(lambda k: one(*xy, k))(ks)

        return jax.jit(lambda x, y: jax.lax.map(per_dataset, (x, y), batch_size=_CHUNK))

    def pfn_one(model, x, y, k):
        dist = model.distribution(model.logits(x, y, index < k))
        return per_point(dist.log_prob(y), k)

    results = {}  # name -> (nll [datasets, ks], ks, seconds per posterior)
    pfn_all = over_datasets_and_k(lambda x, y, k: pfn_one(model, x, y, k), ks)
    nll, seconds = _timed(pfn_all, tasks.x, tasks.y)
    pfn_nll = np.asarray(nll)
    results["pfn"] = (pfn_nll, ks, seconds / pfn_nll.size)
    single = jax.jit(pfn_one)
    _, seconds = _timed(single, model, tasks.x[0], tasks.y[0], int(ks[0]), repeats=20)
    single_seconds = seconds

    if prior.has_exact_predictive:

        def exact_one(x, y, k):
            pred = prior.predictive(x, y, x, context_mask=index < k)
            return per_point(pred.log_prob(y), k)

        nll, seconds = _timed(over_datasets_and_k(exact_one, ks), tasks.x, tasks.y)
        results["exact"] = (np.asarray(nll), ks, seconds / nll.size)

    if type2_ml:
        start = type2_kernel
        if start is None:
            start = RBF(jnp.var(tasks.y), 0.3 * jnp.ones(prior.num_features))

        def type2_one(x, y, k):
            mask = index < k
            kernel, noise = gp.fit_hyperparameters(start, 0.1, x, y, type2_steps, context_mask=mask)
            mean, var = gp.predict(kernel, noise, x, y, x, context_mask=mask)
            return per_point(Normal.from_mean_variance(mean, var).log_prob(y), k)

        n = min(type2_datasets, num_datasets)
        nll, seconds = _timed(over_datasets_and_k(type2_one, ks), tasks.x[:n], tasks.y[:n])
        results["type2_ml"] = (np.asarray(nll), ks, seconds / nll.size)

    if nuts_datasets > 0:
        if missing := sorted(set(nuts_context_sizes) - set(ks.tolist())):
            raise ValueError(f"nuts_context_sizes {missing} are not among the context sizes")
        results["nuts"] = _nuts_nll(
            prior,
            tasks,
            min(nuts_datasets, num_datasets),
            np.asarray(nuts_context_sizes),
            jax.random.fold_in(key, 1),
            nuts_warmup,
            nuts_samples,
            nuts_chains,
            per_point,
        )

    flat = {}
    for name, (curve, method_ks, seconds) in results.items():
        mean = curve.mean(0)
        flat[f"{name}/mean_nll"] = float(mean.mean())
        flat[f"{name}/seconds_per_posterior"] = float(seconds)
        flat[f"{name}/num_datasets"] = float(curve.shape[0])
        flat.update(
            {f"{name}/nll_k{int(k)}": float(v) for k, v in zip(method_ks, mean, strict=True)}
        )
        if name == "pfn":
            continue
        columns = [int(np.flatnonzero(ks == k)[0]) for k in method_ks]
        pfn_same = pfn_nll[: curve.shape[0], columns]
        diff = pfn_same - curve  # paired: the same datasets and k
        n = diff.shape[0]
        sem = diff.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(method_ks), np.nan)
        subset = n < num_datasets or len(method_ks) != len(ks)
        for k, pfn_mean, d, s in zip(method_ks, pfn_same.mean(0), diff.mean(0), sem, strict=True):
            if subset:
                flat[f"{name}/pfn_nll_k{int(k)}"] = float(pfn_mean)
            flat[f"{name}/pfn_minus_{name}_k{int(k)}"] = float(d)
            flat[f"{name}/pfn_minus_{name}_sem_k{int(k)}"] = float(s)
    flat["pfn/seconds_per_posterior_single"] = float(single_seconds)
    if "exact" in results:
        gap = pfn_nll.mean(0) - results["exact"][0].mean(0)
        flat["gap_to_exact/mean"] = float(gap.mean())
        flat["gap_to_exact/max"] = float(gap.max())
    if plot_dir is not None:
        _write(plot_dir, results, flat)
    return flat


def _nuts_nll(prior, tasks, num_datasets, ks, key, warmup, samples, chains, per_point):
    """NUTS NLL `[num_datasets, len(ks)]`, its k values and seconds per posterior (sampling time,
    compilation excluded). One compiled sampler serves every dataset and k: the context is a
    mask on the whole dataset."""
    from tqdm.auto import tqdm

    from probnet.samplers import nuts

    if not isinstance(prior, BNNPrior):
        raise ValueError(f"the NUTS baseline needs a BNNPrior, got {type(prior).__name__}")
    if ks.min() < 1:
        raise ValueError(f"NUTS needs at least one context point, got context sizes {ks.tolist()}")
    mlp = bayesian_mlp_of(prior)
    index = jnp.arange(tasks.x.shape[1])

    def logdensity(params, x, y, mask):
        loglik = jnp.where(mask, mlp.log_likelihood(params, x, y), 0.0)
        return mlp.log_prior(params) + jnp.sum(loglik)

    nll = np.zeros((num_datasets, len(ks)))
    seconds = 0.0
    with tqdm(total=nll.size, desc="NUTS posteriors") as bar:
        for i in range(num_datasets):
            x, y = tasks.x[i], tasks.y[i]
            for j, k in enumerate(ks):
                init_key, run_key = jax.random.split(jax.random.fold_in(key, i * len(ks) + j))
                init = jax.vmap(mlp.init_params)(jax.random.split(init_key, chains))
                result = nuts(
                    logdensity,
                    init,
                    run_key,
                    data=(x, y, index < k),
                    num_warmup=warmup,
                    num_samples=samples,
                    num_chains=chains,
                    warn=False,
                )
                nll[i, j] = float(per_point(mlp.predictive_log_prob(result.draws, x, y), k))
                seconds += result.sampling_time
                bar.update()
    return nll, ks, seconds / nll.size


def _write(plot_dir, results, flat):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    with open(os.path.join(plot_dir, "nll_by_context.json"), "w") as f:
        json.dump(flat, f, indent=1)
    arrays = {name: curve for name, (curve, _, _) in results.items()}
    arrays.update({f"{name}_ks": np.asarray(ks) for name, (_, ks, _) in results.items()})
    np.savez(os.path.join(plot_dir, "nll_by_context.npz"), **arrays)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"pfn": "PFN", "exact": "exact Bayes", "type2_ml": "type-II ML GP", "nuts": "NUTS"}
    num_pfn = results["pfn"][0].shape[0]
    for i, (name, (curve, ks, _)) in enumerate(results.items()):
        n, label = curve.shape[0], labels.get(name, name)
        ax.plot(ks, curve.mean(0), marker=".", color=f"C{i}", label=f"{label} ({n} datasets)")
        if name != "pfn" and n < num_pfn:  # the PFN on the same datasets (paired, from `flat`)
            same = [flat[f"{name}/pfn_nll_k{int(k)}"] for k in ks]
            ax.plot(ks, same, "o", mfc="none", color="C0", label=f"PFN on the {n} {label} datasets")
    ax.set_xlabel("number of context points k")
    ax.set_ylabel("held-out NLL (nats / point)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(plot_dir, "nll_by_context.png"), dpi=120)
    plt.close(fig)
