"""NNGP kernel throughput: probnet's `serial(...)` kernel vs a plain NumPy recursion, same run.

    .venv/bin/python experiments/bench/nngp_kernel.py      # prints ONE JSON line

The kernel is the NNGP of a ReLU network with 3 hidden layers, `serial(Dense(1.5, 0.1), ReLU(),
Dense(1.5, 0.1), ReLU(), Dense(1.5, 0.1), ReLU(), Dense(1.0, 0.1))`, evaluated on 2000 × 2000
inputs of dimension 10 (`--num-points`, `--num-features`):

* probnet: `jax.jit(kernel.__call__)` (compiled once during warm-up; each timed call waits for
  its result with `block_until_ready`);
* NumPy: the same recursion written with NumPy arrays (input covariance x·x′/d, then per layer
  K ← W²K + b² and the arc-cosine formula with θ = arccos(K₁₂/√(K₁₁K₂₂))).

Both sides run in float32 and in float64 (x64 enabled for the whole run; float32 inputs keep
JAX in float32). Measurements alternate between the sides; each measurement repeats calls for
at least `--min-time` seconds; a side's throughput is the best (`--statistic best`, default:
other processes can only slow a run down) or median over `--rounds` measurements, in Gram
matrices per second. `max_abs_diff` compares the two float64 Gram matrices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from probnet.nngp import Dense, ReLU, serial  # noqa: E402

HIDDEN = [(1.5, 0.1)] * 3
READOUT = (1.0, 0.1)


def numpy_gram(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The 3-hidden-layer ReLU NNGP recursion in NumPy (dtype of the inputs)."""
    d = x1.shape[1]
    k12 = x1 @ x2.T / d
    k11 = np.sum(x1 * x1, axis=1) / d
    k22 = np.sum(x2 * x2, axis=1) / d
    for w, b in HIDDEN:
        k12, k11, k22 = w**2 * k12 + b**2, w**2 * k11 + b**2, w**2 * k22 + b**2
        norm = np.sqrt(np.outer(k11, k22))
        cos = np.clip(k12 / norm, -1.0, 1.0)
        theta = np.arccos(cos)
        k12 = norm * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
        k11, k22 = k11 / 2, k22 / 2
    w, b = READOUT
    return w**2 * k12 + b**2


def _time(fn, min_time: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-points", type=int, default=2000)
    parser.add_argument("--num-features", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--statistic", choices=["best", "median"], default="best")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    kernel = serial(*[layer for w, b in HIDDEN for layer in (Dense(w, b), ReLU())], Dense(*READOUT))
    rng = np.random.default_rng(args.seed)
    x64 = rng.normal(size=(args.num_points, args.num_features))
    y64 = rng.normal(size=(args.num_points, args.num_features))
    result = {
        "benchmark": "nngp_kernel",
        "kernel": "ReLU NNGP, 3 hidden layers",
        "num_points": args.num_points,
        "num_features": args.num_features,
        "statistic": args.statistic,
        "rounds": args.rounds,
        "platform": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
    }
    stat = max if args.statistic == "best" else statistics.median
    for dtype in ("float32", "float64"):
        xa, ya = x64.astype(dtype), y64.astype(dtype)
        xj, yj = jnp.asarray(xa), jnp.asarray(ya)
        typed = jax.tree_util.tree_map(lambda p, dtype=dtype: p.astype(dtype), kernel)
        gram = jax.jit(typed.__call__)
        start = time.perf_counter()
        out = gram(xj, yj).block_until_ready()
        compile_s = time.perf_counter() - start
        assert out.dtype == jnp.dtype(dtype)
        ours, theirs = [], []
        for r in range(args.rounds):
            sides = [
                (ours, lambda g=gram, xj=xj, yj=yj: g(xj, yj).block_until_ready()),
                (theirs, lambda xa=xa, ya=ya: numpy_gram(xa, ya)),
            ]
            for store, fn in sides if r % 2 == 0 else sides[::-1]:
                store.append(_time(fn, args.min_time))
        result[f"probnet_{dtype}_grams_per_s"] = round(stat(ours), 3)
        result[f"numpy_{dtype}_grams_per_s"] = round(stat(theirs), 3)
        result[f"speedup_{dtype}"] = round(stat(ours) / stat(theirs), 2)
        result[f"probnet_{dtype}_first_call_s"] = round(compile_s, 3)
        if dtype == "float64":
            diff = np.max(np.abs(np.asarray(out) - numpy_gram(xa, ya)))
            result["max_abs_diff_float64"] = float(diff)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
