"""Demo: exact Bayesian GP regression with a discrete lengthscale hyperprior vs type-II ML.

Draws datasets from `GPPrior` (RBF, lengthscale ∈ {0.1, 0.3, 1.0}), prints the held-out NLL of
the exact Bayesian mixture predictive and of the type-II maximum-likelihood GP for several
numbers of context points, and saves a plot of predictive bands to `outputs/demo/gp_demo.png`.

    python experiments/demo.py [--num-datasets 100] [--out outputs/demo]
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from probnet import gp  # noqa: E402
from probnet.distributions import Discrete, Normal, Uniform  # noqa: E402
from probnet.kernels import RBF  # noqa: E402
from probnet.priors import GPPrior  # noqa: E402

NUM_POINTS = 32


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-datasets", type=int, default=100)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    prior = GPPrior(
        RBF(1.0, 0.3),
        0.01,
        num_features=1,
        inputs=Uniform(0.0, 1.0),
        lengthscale_prior=Discrete([0.1, 0.3, 1.0]),
    )
    tasks = prior.sample(jax.random.key(args.seed), args.num_datasets, NUM_POINTS)
    ks = [1, 2, 4, 8, 16, 24]

    @jax.jit
    def nll(x, y, k):
        mask = jnp.arange(NUM_POINTS) < k
        target = ~mask
        exact = -prior.predictive(x, y, x, context_mask=mask).log_prob(y)
        kernel, noise = gp.fit_hyperparameters(RBF(1.0, 0.3), 0.05, x, y, 200, context_mask=mask)
        mean, var = gp.predict(kernel, noise, x, y, x, context_mask=mask)
        ml = -Normal.from_mean_variance(mean, var).log_prob(y)
        per = lambda v: jnp.sum(jnp.where(target, v, 0.0)) / jnp.sum(target)
        return per(exact), per(ml)

    rows = {}
    for k in tqdm(ks, desc="context sizes"):
        exact, ml = jax.vmap(nll, in_axes=(0, 0, None))(tasks.x, tasks.y, k)
        rows[k] = {"exact_bayes": float(exact.mean()), "type2_ml": float(ml.mean())}
    print(f"held-out NLL (nats/point) over {args.num_datasets} datasets of {NUM_POINTS} points")
    print(f"{'k':>4} {'exact Bayes':>12} {'type-II ML':>12}")
    for k, r in rows.items():
        print(f"{k:>4} {r['exact_bayes']:>12.3f} {r['type2_ml']:>12.3f}")
    with open(os.path.join(args.out, "gp_demo.json"), "w") as f:
        json.dump(rows, f, indent=1)

    grid = jnp.linspace(0, 1, 200)[:, None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), sharey=True)
    for ax, i, k in zip(axes, range(3), (3, 6, 12), strict=True):
        x, y = tasks.x[i], tasks.y[i]
        pred = prior.predictive(x[:k], y[:k], grid)
        lo, hi = pred.quantile(0.025), pred.quantile(0.975)
        ax.fill_between(grid[:, 0], lo, hi, alpha=0.3, label="exact Bayes 95%")
        ax.plot(grid[:, 0], pred.mean, label="exact Bayes mean")
        ax.scatter(x[k:, 0], y[k:], s=8, c="grey", label="held out")
        ax.scatter(x[:k, 0], y[:k], s=20, c="k", label="context")
        ax.set_title(f"{k} context points")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "gp_demo.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
