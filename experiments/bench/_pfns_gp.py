"""Torch side of the prior-sampling benchmark: times ``pfns.priors.fast_gp.get_batch``.

Runs in the benchmark-only venv (``make bench-env`` -> ``.bench-venv``), never in
probnet's venv:

    .bench-venv/bin/python experiments/bench/_pfns_gp.py --num-tasks 32 --num-points 64

Standalone it warms up, runs ``--repeats`` timed repeats and prints ONE JSON line.
With ``--serve`` (used by ``prior_sampling.py`` to interleave with probnet without
re-importing torch each time) it prints a ``ready`` JSON line after warm-up, then one
JSON line per ``measure [THREADS]`` line read from stdin (THREADS: torch intra-op threads
for that measurement, an int or ``default``), and exits on EOF.

The GP is the one of pfns' ``fast_gp`` prior: gpytorch ``ScaleKernel(RBFKernel())`` with
a ``GaussianLikelihood``; the hyperparameter dict keys are ``noise`` (observation noise
variance), ``outputscale`` (kernel variance) and ``lengthscale``. In pfns 0.4.2 these are
plain fixed values (no hyperparameter sampling happens inside ``fast_gp.get_batch``);
``x ~ U[0, 1]^d`` (``sampling`` defaults to ``"uniform"``) and ``y`` includes the
observation noise (``observation_noise`` defaults to True). The values actually set on
the gpytorch model are read back and reported in the JSON.

torch's intra-op thread count is left at its default (``torch.get_num_threads()``,
reported in the JSON) unless ``--torch-threads`` or a serve request sets it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import sys
import time

import torch
from pfns.priors import fast_gp


def _hyperparameters(args: argparse.Namespace) -> dict:
    return {
        "noise": args.noise,
        "outputscale": args.outputscale,
        "lengthscale": args.lengthscale,
        # Explicit defaults of fast_gp.get_batch, spelled out so the benchmark does not
        # silently change if pfns' defaults do.
        "sampling": "uniform",
        "observation_noise": True,
    }


def _read_back(hp: dict, num_points: int, num_features: int) -> dict:
    """Build the gpytorch model exactly as get_batch does and read its values back."""
    x = torch.rand(1, num_points, num_features)
    model, likelihood = fast_gp.get_model(x, torch.Tensor(), hp)
    return {
        "noise": float(likelihood.noise.item()),
        "outputscale": float(model.covar_module.outputscale.item()),
        "lengthscale": float(model.covar_module.base_kernel.lengthscale.item()),
    }


def _one_call(args: argparse.Namespace, hp: dict):
    return fast_gp.get_batch(
        args.num_tasks, args.num_points, args.num_features, device="cpu", hyperparameters=hp
    )


def _measure(args: argparse.Namespace, hp: dict) -> dict:
    """One timed repeat: call get_batch until at least --min-time seconds have passed."""
    calls = 0
    start = time.perf_counter()
    while True:
        batch = _one_call(args, hp)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= args.min_time and calls >= args.min_calls:
            break
    assert batch.y.shape == (args.num_tasks, args.num_points)
    return {
        "calls": calls,
        "seconds": elapsed,
        "datasets_per_s": calls * args.num_tasks / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-tasks", type=int, default=32)
    p.add_argument("--num-points", type=int, default=64)
    p.add_argument("--num-features", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--outputscale", type=float, default=1.0)
    p.add_argument("--lengthscale", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (standalone mode)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repeat")
    p.add_argument("--min-calls", type=int, default=3, help="calls per timed repeat, at least")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="one measurement per stdin line")
    p.add_argument("--torch-threads", type=int, default=None, help="default: torch's own")
    args = p.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)

    torch.manual_seed(args.seed)
    hp = _hyperparameters(args)
    info = {
        "library": "pfns",
        "pfns_version": importlib.metadata.version("pfns"),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "num_tasks": args.num_tasks,
        "num_points": args.num_points,
        "num_features": args.num_features,
        "hyperparameters": hp,
        "model_hyperparameters": _read_back(hp, args.num_points, args.num_features),
    }
    for _ in range(args.warmup):
        _one_call(args, hp)

    if args.serve:
        print(json.dumps({"ready": True, **info}), flush=True)
        default_threads = torch.get_num_threads()
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            # "measure" or "measure THREADS": THREADS an int or "default".
            threads = default_threads
            if len(words) > 1 and words[1] != "default":
                threads = int(words[1])
            torch.set_num_threads(threads)
            for _ in range(2):  # settle the thread pool after a change
                _one_call(args, hp)
            result = _measure(args, hp)
            print(json.dumps({**result, "torch_num_threads": threads}), flush=True)
        return 0

    repeats = [_measure(args, hp) for _ in range(args.repeats)]
    rates = [r["datasets_per_s"] for r in repeats]
    print(
        json.dumps(
            {
                **info,
                "datasets_per_s": statistics.median(rates),
                "statistic": "median",
                "best_datasets_per_s": max(rates),
                "repeats_datasets_per_s": rates,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
