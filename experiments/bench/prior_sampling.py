"""Prior-sampling throughput: probnet's ``GPPrior`` vs the GP prior of the PyTorch ``pfns``.

    make bench-env                                         # once: .bench-venv (torch CPU + pfns)
    .venv/bin/python experiments/bench/prior_sampling.py   # prints ONE JSON line

Both sides sample 1-D GP regression datasets with an RBF kernel (lengthscale 0.2, variance 1),
Gaussian observation noise of variance 0.01 and x ~ U[0, 1], and are timed on this CPU in the
same run:

* probnet: ``GPPrior(...).sample(key, num_tasks, num_points)`` in this process (compiled once
  during warm-up; each timed call folds a counter into the key and waits for the result with
  ``jax.block_until_ready``).
* pfns: ``pfns.priors.fast_gp.get_batch`` with ``{"noise": 0.01, "outputscale": 1.0,
  "lengthscale": 0.2}`` (fixed values; pfns' fast_gp samples no hyperparameters) in a
  subprocess of ``.bench-venv/bin/python experiments/bench/_pfns_gp.py --serve``, so torch and
  pfns never enter probnet's environment. pfns is timed with torch's default thread count
  and with 1 thread (``--pfns-threads``); the ratio is taken against the faster of the two,
  so that pfns is not penalised by thread oversubscription on a loaded machine.

The measurements alternate (probnet, pfns per thread setting, probnet@large, then the next
round in reverse order) so that load from other processes on a shared machine hits both
sides alike. Each measurement calls the sampler repeatedly for at least ``--min-time``
seconds; a side's throughput is the best (``--statistic best``, default: other processes
can only slow a run down) or the median over ``--rounds`` measurements, in datasets (tasks)
per second. Exits 1 if probnet / pfns at the main shape is below ``--min-ratio`` (10 by
default; 0 disables), and 2 if ``.bench-venv`` is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _serve import LineServer  # experiments/bench: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[2]
PFNS_HELPER = Path(__file__).resolve().with_name("_pfns_gp.py")
BENCH_VENV = REPO / ".bench-venv"

LENGTHSCALE, VARIANCE, NOISE_VARIANCE = 0.2, 1.0, 0.01


def _bench_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / ".installed").exists():
        print(
            f"prior_sampling: the benchmark environment {venv} is missing or incomplete; "
            "create it with `make bench-env` (or `make -f bench-env.mk bench-env`) first.",
            file=sys.stderr,
        )
        sys.exit(2)
    return python


def _pfns_server(python: Path, args: argparse.Namespace) -> LineServer:
    """The pfns sampler in a long-lived subprocess: `measure THREADS` -> datasets per second."""
    return LineServer(
        [
            str(python),
            str(PFNS_HELPER),
            "--serve",
            "--num-tasks",
            str(args.num_tasks),
            "--num-points",
            str(args.num_points),
            "--num-features",
            "1",
            "--noise",
            str(NOISE_VARIANCE),
            "--outputscale",
            str(VARIANCE),
            "--lengthscale",
            str(LENGTHSCALE),
            "--warmup",
            str(args.warmup),
            "--min-time",
            str(args.min_time),
            "--seed",
            str(args.seed),
        ]  # fmt: skip
    )


def _make_probnet_sampler(num_points: int):
    import jax

    from probnet.distributions import Uniform
    from probnet.kernels import RBF
    from probnet.priors import GPPrior

    prior = GPPrior(
        kernel=RBF(variance=VARIANCE, lengthscale=LENGTHSCALE),
        noise_variance=NOISE_VARIANCE,
        num_features=1,
        inputs=Uniform(0.0, 1.0),
    )
    base_key = jax.random.key(0)
    counter = iter(range(1, 1 << 62))

    def sample(num_tasks: int):
        key = jax.random.fold_in(base_key, next(counter))
        return jax.block_until_ready(prior.sample(key, num_tasks=num_tasks, num_points=num_points))

    return sample


def _measure_probnet(sample, num_tasks: int, min_time: float, min_calls: int = 3) -> float:
    calls = 0
    start = time.perf_counter()
    while True:
        sample(num_tasks)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= min_calls:
            return calls * num_tasks / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-tasks", type=int, default=32)
    p.add_argument("--num-points", type=int, default=64)
    p.add_argument("--large-num-tasks", type=int, default=1024, help="probnet only")
    p.add_argument("--rounds", type=int, default=5, help="measurements per side")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per side first")
    p.add_argument("--statistic", choices=("best", "median"), default="best")
    p.add_argument("--min-ratio", type=float, default=10.0, help="exit 1 below this; 0: off")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the pfns side")
    p.add_argument(
        "--pfns-threads",
        default="default,1",
        help="comma-separated torch thread counts to time pfns with ('default': torch's own); "
        "the ratio is taken against the fastest",
    )
    p.add_argument("--bench-venv", type=Path, default=BENCH_VENV)
    args = p.parse_args(argv)
    pfns_threads = [t.strip() for t in args.pfns_threads.split(",") if t.strip()]

    python = _bench_python(args.bench_venv)
    load_before = os.getloadavg()[0]

    pfns = _pfns_server(python, args)  # starts importing torch/pfns in the background
    try:
        import jax

        sample = _make_probnet_sampler(args.num_points)
        task = sample(args.num_tasks)  # compiles
        assert task.x.shape == (args.num_tasks, args.num_points, 1), task.x.shape
        assert task.y.shape == (args.num_tasks, args.num_points), task.y.shape
        sample(args.large_num_tasks)  # compiles the large shape
        for _ in range(args.warmup):
            sample(args.num_tasks)
            sample(args.large_num_tasks)
        pfns.wait_ready()

        probnet_rates, large_rates = [], []
        pfns_rates = {t: [] for t in pfns_threads}
        for r in range(args.rounds):
            steps = [
                lambda: probnet_rates.append(
                    _measure_probnet(sample, args.num_tasks, args.min_time)
                ),
                *[
                    lambda t=t: pfns_rates[t].append(pfns.request(f"measure {t}")["datasets_per_s"])
                    for t in pfns_threads
                ],
                lambda: large_rates.append(
                    _measure_probnet(sample, args.large_num_tasks, args.min_time)
                ),
            ]
            for step in steps if r % 2 == 0 else reversed(steps):
                step()
    finally:
        pfns.close()

    stat = max if args.statistic == "best" else statistics.median
    probnet_rate, large_rate = stat(probnet_rates), stat(large_rates)
    pfns_by_threads = {t: stat(v) for t, v in pfns_rates.items()}
    pfns_best_threads = max(pfns_by_threads, key=pfns_by_threads.get)
    pfns_rate = pfns_by_threads[pfns_best_threads]
    ratio = probnet_rate / pfns_rate
    default_threads = pfns.info["torch_num_threads"]

    def threads_label(t):
        return f"{default_threads} (default)" if t == "default" else t

    shape = f"{args.num_tasks}x{args.num_points}"
    result = {
        "benchmark": "prior_sampling",
        "prior": {
            "kernel": "RBF",
            "lengthscale": LENGTHSCALE,
            "variance": VARIANCE,
            "noise_variance": NOISE_VARIANCE,
            "x": "U[0,1]",
            "num_features": 1,
        },
        "unit": "datasets/s",
        "statistic": f"{args.statistic} of {args.rounds}",
        f"probnet_{shape}": round(probnet_rate, 1),
        f"pfns_{shape}": round(pfns_rate, 1),
        "ratio_probnet_over_pfns": round(ratio, 2),
        "pfns_torch_threads": threads_label(pfns_best_threads),
        f"pfns_{shape}_by_torch_threads": {
            threads_label(t): round(v, 1) for t, v in pfns_by_threads.items()
        },
        f"probnet_{args.large_num_tasks}x{args.num_points}": round(large_rate, 1),
        "min_ratio": args.min_ratio,
        "meets_min_ratio": ratio >= args.min_ratio,
        "rounds": {
            f"probnet_{shape}": [round(v, 1) for v in probnet_rates],
            **{
                f"pfns_{shape}_threads_{t}": [round(v, 1) for v in rates]
                for t, rates in pfns_rates.items()
            },
            f"probnet_{args.large_num_tasks}x{args.num_points}": [round(v, 1) for v in large_rates],
        },
        "pfns_hyperparameters": pfns.info["hyperparameters"],
        "pfns_model_hyperparameters": pfns.info["model_hyperparameters"],
        "versions": {
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "pfns": pfns.info["pfns_version"],
            "torch": pfns.info["torch_version"],
            "torch_default_num_threads": default_threads,
        },
        "cpu_count": os.cpu_count(),
        # Other processes on the machine slow both sides (pfns' default 2-thread torch far
        # more than probnet when cores are oversubscribed): compare runs at similar load.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": platform.machine(),
    }
    print(json.dumps(result), flush=True)
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
