"""The main job: train a PFN on the 1-D GP prior, then compare it with exact Bayes.

Trains the `pfn_gp` experiment (RBF lengthscale 0.2, variance 1, noise variance 0.01,
x ~ U[0, 1], 32 points per dataset) for a few minutes on a laptop CPU with a progress bar,
prints the held-out NLL per number of context points k for the PFN and the exact GP posterior
predictive, and saves a plot of predictive bands for a few datasets next to the run.

    python experiments/demo.py [--steps 1000] [--num-datasets 200] [--out outputs/demo]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from probnet.pfn import nll_by_context  # noqa: E402
from probnet.training import build_prior, register_configs, train_from_config  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="a multiple of 50")
    parser.add_argument("--num-datasets", type=int, default=200)
    parser.add_argument("--out", default="outputs/demo")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=os.path.abspath(CONFIGS), version_base=None):
        cfg = compose(
            "config",
            overrides=["experiment=pfn_gp", f"trainer.steps={args.steps}", "trainer.resume=false"],
        )
    per_call = cfg.trainer.steps_per_call
    if args.steps <= 0 or args.steps % per_call:
        parser.error(f"--steps must be a positive multiple of {per_call} (steps per compiled call)")
    run_dir = os.path.join(args.out, "run")
    if os.path.isdir(run_dir):
        import shutil

        shutil.rmtree(run_dir)
    model = train_from_config(cfg, run_dir).model
    prior = build_prior(cfg.prior)

    print(f"\nEvaluating on {args.num_datasets} held-out datasets ...")
    ks = (1, 2, 4, 8, 16, 24, 31)
    result = nll_by_context(
        model,
        prior,
        jax.random.key(123),
        num_datasets=args.num_datasets,
        context_sizes=ks,
        type2_ml=False,
        plot_dir=args.out,
    )
    print(f"{'k':>3} {'PFN':>8} {'exact GP':>9} {'gap':>7}")
    for k in ks:
        pfn, exact = result[f"pfn/nll_k{k}"], result[f"exact/nll_k{k}"]
        print(f"{k:>3} {pfn:>8.3f} {exact:>9.3f} {pfn - exact:>7.3f}")
    print(
        f"mean gap over k = {ks}: {result['gap_to_exact/mean']:.3f} nats "
        f"(max {result['gap_to_exact/max']:.3f})"
    )

    tasks = prior.sample(jax.random.key(7), 3, cfg.trainer.num_points)
    grid = jnp.linspace(0, 1, 200)[:, None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), sharey=True)
    for ax, i, k in zip(axes, range(3), (2, 5, 12), strict=True):
        x, y = tasks.x[i], tasks.y[i]
        for pred, name, color in (
            (prior.predictive(x[:k], y[:k], grid), "exact GP", "C0"),
            (model(x[:k], y[:k], grid), "PFN", "C1"),
        ):
            lo, hi = pred.quantile(jnp.full(200, 0.025)), pred.quantile(jnp.full(200, 0.975))
            ax.fill_between(grid[:, 0], lo, hi, alpha=0.2, color=color, label=f"{name} 95%")
            ax.plot(grid[:, 0], pred.mean, color=color, label=f"{name} mean")
        ax.scatter(x[k:, 0], y[k:], s=8, c="grey", label="held out")
        ax.scatter(x[:k, 0], y[:k], s=20, c="k", label="context")
        ax.set_title(f"{k} context points")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.out, "pfn_vs_exact.png")
    fig.savefig(path, dpi=120)
    print(f"saved {path} and {os.path.join(args.out, 'nll_by_context.png')}")


if __name__ == "__main__":
    main()
