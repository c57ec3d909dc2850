"""Evaluate a PFN: held-out NLL per number of context points against exact Bayes and type-II ML."""

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
from probnet.priors import AbstractPrior


def _timed(fn, *args):
    out = jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def nll_by_context(
    model: PFN,
    prior: AbstractPrior,
    key: PRNGKeyArray,
    num_datasets: int = 2000,
    num_points: int = 32,
    max_context: int | None = None,
    context_sizes: tuple[int, ...] | None = None,
    type2_ml: bool = True,
    type2_kernel: AbstractKernel | None = None,
    type2_steps: int = 200,
    output: str | None = None,
) -> dict[str, float]:
    """Mean NLL (nats per held-out point) for every number of context points k = 1..max_context
    (default `num_points - 1`), or each k in `context_sizes`, on `num_datasets` fresh datasets:
    the first k points of a dataset are its context and the rest its targets.

    Methods: the PFN; the prior's exact posterior predictive where it has one; type-II maximum
    likelihood GP (an RBF kernel fitted by `gp.fit_hyperparameters`, or `type2_kernel`). Also
    seconds per dataset (all k) for each method. With `output`, writes `<output>.json` and a plot
    `<output>.png` of NLL against k.
    """
    max_context = num_points - 1 if max_context is None else max_context
    ks = jnp.arange(1, max_context + 1) if context_sizes is None else jnp.array(context_sizes)
    tasks = prior.sample(key, num_datasets, num_points)
    index = jnp.arange(num_points)

    def per_point(log_prob, k):
        target = index >= k
        return -jnp.sum(jnp.where(target, log_prob, 0.0)) / jnp.sum(target)

    @jax.jit
    def pfn_nll(model, x, y):
        def one(x, y, k):
            dist = model.distribution(model.logits(x, y, index < k))
            return per_point(dist.log_prob(y), k)

        return jax.vmap(lambda x, y: jax.vmap(lambda k: one(x, y, k))(ks))(x, y)

    results = {}
    nll, seconds = _timed(pfn_nll, model, tasks.x, tasks.y)
    results["pfn"] = (np.asarray(nll).mean(0), seconds / num_datasets)

    if prior.has_exact_predictive:

        @jax.jit
        def exact_nll(x, y):
            def one(x, y, k):
                pred = prior.predictive(x, y, x, context_mask=index < k)
                return per_point(pred.log_prob(y), k)

            return jax.vmap(lambda x, y: jax.vmap(lambda k: one(x, y, k))(ks))(x, y)

        nll, seconds = _timed(exact_nll, tasks.x, tasks.y)
        results["exact"] = (np.asarray(nll).mean(0), seconds / num_datasets)

    if type2_ml:
        start = type2_kernel
        if start is None:
            start = RBF(jnp.var(tasks.y), 0.3 * jnp.ones(prior.num_features))

        @jax.jit
        def type2_nll(x, y):
            def one(x, y, k):
                mask = index < k
                kernel, noise = gp.fit_hyperparameters(
                    start, 0.1, x, y, type2_steps, context_mask=mask
                )
                mean, var = gp.predict(kernel, noise, x, y, x, context_mask=mask)
                return per_point(Normal.from_mean_variance(mean, var).log_prob(y), k)

            return jax.vmap(lambda x, y: jax.vmap(lambda k: one(x, y, k))(ks))(x, y)

        nll, seconds = _timed(type2_nll, tasks.x, tasks.y)
        results["type2_ml"] = (np.asarray(nll).mean(0), seconds / num_datasets)

    flat = {}
    for name, (curve, seconds) in results.items():
        flat[f"{name}/mean_nll"] = float(curve.mean())
        flat[f"{name}/seconds_per_dataset"] = float(seconds)
        flat.update({f"{name}/nll_k{int(k)}": float(v) for k, v in zip(ks, curve, strict=True)})
    if "exact" in results:
        gap = results["pfn"][0] - results["exact"][0]
        flat["gap_to_exact/mean"] = float(gap.mean())
        flat["gap_to_exact/max"] = float(gap.max())
    if output is not None:
        _write(output, ks, results, flat)
    return flat


def _write(output, ks, results, flat):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(f"{output}.json", "w") as f:
        json.dump(flat, f, indent=1)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"pfn": "PFN", "exact": "exact Bayes", "type2_ml": "type-II ML GP"}
    for name, (curve, _) in results.items():
        ax.plot(np.asarray(ks), curve, marker=".", label=labels.get(name, name))
    ax.set_xlabel("number of context points k")
    ax.set_ylabel("held-out NLL (nats / point)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{output}.png", dpi=120)
    plt.close(fig)
