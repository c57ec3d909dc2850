"""NUTS throughput and recompilation: `probnet.samplers.nuts` vs NumPyro's NUTS, same run.

    .venv/bin/python experiments/bench/samplers.py      # prints ONE JSON line

Two targets, each sampled by both sides with the same warmup, samples and chains
(defaults 1000 / 1000 / 4) and diagonal mass-matrix adaptation, target acceptance 0.8, max
tree depth 10:

* eight schools, non-centred (`theta = mu + tau * theta_raw`), a NumPyro model for both
  (probnet via `nuts(model=...)`); new data: y and sigma scaled and shifted.
* a 100-dimensional Gaussian with standard deviations `geomspace(0.1, 10, 100)`; probnet
  samples the log density `logdensity(x, loc, scale)` with `data=(loc, scale)`, NumPyro the
  model `x ~ Normal(loc, scale)` with `loc, scale` as model arguments; new data: a new
  mean and scale vector of the same shape.

NumPyro runs `MCMC(NUTS(model), num_warmup=W, num_samples=S, num_chains=C,
chain_method="vectorized", progress_bar=False)`. Time spent tracing, lowering and compiling is
measured with `jax.monitoring` (the same listener for both sides) and every call waits for its
draws (`block_until_ready`). Per side and target:

* `first_call_s` / `compile_s`: wall time of the first call and the part of it JAX spent
  tracing, lowering and compiling;
* `sampling_s`: wall time of a call on the same data with a new key, minus its compile time
  (NumPyro's vectorized MCMC recompiles on every `run`, even on the same data, so its repeated
  calls are not compile-free: `repeat_call_s` is the full wall time) and, for probnet, minus
  the R-hat/ESS it computes for its result (`repeat_call_diagnostics_s`; NumPyro computes
  none); warmup and sampling. Both sides run `--rounds` rounds, alternating, with the same
  key per round;
* `min_ess_bulk`: smallest bulk ESS over all sampled coordinates (the same estimator,
  `probnet.samplers.diagnostics.ess_bulk`, for both; eight schools: mu, tau, theta_raw),
  median over rounds; `ess_per_s`: per-round ESS / sampling time, the best round
  (`--statistic best`, the default: on a machine shared with other jobs, other processes can
  only slow a run down) or the median; `ess_per_s_median` and `ess_per_s_rounds` are always
  reported;
* `second_call_new_data_s`: wall time of a call with new data of the same shape. NumPyro 0.22
  cannot re-run a vectorized MCMC object on new data (its re-initialisation wraps the sample
  function in a second vmap and fails), so that call builds a new MCMC object, as a user must.

Also reported for reference: NumPyro with `jit_model_args=True` (its option for new data
without re-jitting the model), second call on new data on the same MCMC object. Exits 1 if
probnet's ESS/s is below NumPyro's, or its second call is not at least 5x faster than
NumPyro's (default settings), on either target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from probnet.samplers import diagnostics, nuts

EIGHT_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
EIGHT_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)
LATENT_SITES = ("mu", "tau", "theta_raw")


def eight_schools(sigma, y=None):
    """Non-centred eight schools."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def gaussian_model(loc, scale):
    """x ~ N(loc, diag(scale²))."""
    numpyro.sample("x", dist.Normal(loc, scale))


def gaussian_logdensity(x, loc, scale):
    """log N(x; loc, diag(scale²)) up to a constant."""
    return -0.5 * jnp.sum(((x - loc) / scale) ** 2)


def min_bulk_ess(draws: dict) -> float:
    """Smallest bulk ESS over all coordinates of `draws` (leaves `[chains, samples, ...]`)."""
    return float(min(np.min(diagnostics.ess_bulk(np.asarray(v))) for v in draws.values()))


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration(event: str, duration: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


class Timer:
    """Wall time of a block and the part of it JAX spent tracing, lowering and compiling."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.compile_start = _compile_seconds[0]
        self.diagnostics_seconds = 0.0  # probnet's R-hat/ESS, which NumPyro does not compute
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.compile_seconds = _compile_seconds[0] - self.compile_start


EIGHT_NEW = (EIGHT_SIGMA * 1.5, EIGHT_Y + 3.0)
DIM = 100
SCALE = np.geomspace(0.1, 10.0, DIM).astype(np.float32)
LOC = np.zeros(DIM, np.float32)
GAUSS_NEW = (LOC + 1.0, SCALE[::-1].copy())


def probnet_side(target: str, settings: dict):
    """`run(key, new_data) -> (Timer, draws)`."""
    if target == "eight_schools":

        def run(key, new):
            sigma, y = EIGHT_NEW if new else (EIGHT_SIGMA, EIGHT_Y)
            with Timer() as t:
                r = nuts(
                    model=eight_schools,
                    model_args=(sigma,),
                    model_kwargs={"y": y},
                    key=key,
                    warn=False,
                    **settings,
                )
                jax.block_until_ready(r.draws)
            t.diagnostics_seconds = r.diagnostics_time
            return t, {k: r.draws[k] for k in LATENT_SITES}

        return run

    init = np.random.default_rng(0).uniform(-2, 2, (settings["num_chains"], DIM))
    init = init.astype(np.float32)

    def run(key, new):
        loc, scale = GAUSS_NEW if new else (LOC, SCALE)
        with Timer() as t:
            r = nuts(gaussian_logdensity, init, key, data=(loc, scale), warn=False, **settings)
            jax.block_until_ready(r.draws)
        t.diagnostics_seconds = r.diagnostics_time
        return t, {"x": r.draws}

    return run


def numpyro_side(target: str, settings: dict, jit_model_args: bool = False):
    """`run(key, new_data) -> (Timer, draws)`, one MCMC object for the original data.

    NumPyro 0.22 cannot re-run a vectorized MCMC object on new data (the re-initialisation
    wraps its sample function in a second vmap and fails), so a call on new data builds a
    new MCMC object, as a user has to; either way NumPyro compiles again.
    """

    def make():
        return MCMC(
            NUTS(eight_schools if target == "eight_schools" else gaussian_model),
            num_warmup=settings["num_warmup"],
            num_samples=settings["num_samples"],
            num_chains=settings["num_chains"],
            chain_method="vectorized",
            progress_bar=False,
            jit_model_args=jit_model_args,
        )

    mcmc = make()

    def run(key, new):
        with Timer() as t:
            m = make() if new and not jit_model_args else mcmc
            if target == "eight_schools":
                sigma, y = EIGHT_NEW if new else (EIGHT_SIGMA, EIGHT_Y)
                m.run(key, sigma, y=y)
            else:
                loc, scale = GAUSS_NEW if new else (LOC, SCALE)
                m.run(key, loc, scale)
            samples = jax.block_until_ready(m.get_samples(group_by_chain=True))
        sites = LATENT_SITES if target == "eight_schools" else ("x",)
        return t, {k: samples[k] for k in sites}

    return run


def bench_target(target: str, settings: dict, rounds: int, statistic: str) -> dict:
    sides = {"probnet": probnet_side(target, settings), "numpyro": numpyro_side(target, settings)}
    out = {name: {} for name in sides}
    key = jax.random.key(0)
    for name, run in sides.items():  # first calls
        t, _ = run(jax.random.fold_in(key, 0), False)
        out[name]["first_call_s"] = t.seconds
        out[name]["compile_s"] = t.compile_seconds
    rows = {name: [] for name in sides}
    for r in range(rounds):  # repeated calls on the same data, new keys, alternating order
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            t, draws = sides[name](jax.random.fold_in(key, r + 1), False)
            sampling = t.seconds - t.compile_seconds - t.diagnostics_seconds
            ess = min_bulk_ess(draws)
            rows[name].append(
                (sampling, ess, ess / sampling, t.seconds, t.compile_seconds, t.diagnostics_seconds)
            )
    best_time, best_rate = (min, max) if statistic == "best" else (statistics.median,) * 2
    for name in sides:
        o, rs = out[name], rows[name]
        o["sampling_s"] = best_time(r[0] for r in rs)
        o["min_ess_bulk"] = statistics.median(r[1] for r in rs)
        o["ess_per_s"] = best_rate(r[2] for r in rs)
        o["ess_per_s_median"] = statistics.median(r[2] for r in rs)
        o["ess_per_s_rounds"] = [round(r[2], 1) for r in rs]
        o["repeat_call_s"] = statistics.median(r[3] for r in rs)
        o["repeat_call_compile_s"] = statistics.median(r[4] for r in rs)
        o["repeat_call_diagnostics_s"] = statistics.median(r[5] for r in rs)
    for name, run in sides.items():  # new data of the same shape
        t, _ = run(jax.random.fold_in(key, 1000), True)
        out[name]["second_call_new_data_s"] = t.seconds
        out[name]["second_call_new_data_compile_s"] = t.compile_seconds
    jit_args = numpyro_side(target, settings, jit_model_args=True)
    jit_args(jax.random.fold_in(key, 0), False)
    t, _ = jit_args(jax.random.fold_in(key, 1000), True)
    out["numpyro_jit_model_args_second_call_new_data_s"] = t.seconds
    p, n = out["probnet"], out["numpyro"]
    out["ratios"] = {
        "ess_per_s_probnet_over_numpyro": p["ess_per_s"] / n["ess_per_s"],
        "ess_per_s_median_probnet_over_numpyro": p["ess_per_s_median"] / n["ess_per_s_median"],
        "second_call_speedup_numpyro_over_probnet": n["second_call_new_data_s"]
        / p["second_call_new_data_s"],
        "compile_numpyro_over_probnet": n["compile_s"] / p["compile_s"],
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--statistic", choices=("best", "median"), default="best")
    args = parser.parse_args()
    settings = {
        "num_warmup": args.num_warmup,
        "num_samples": args.num_samples,
        "num_chains": args.num_chains,
    }
    warnings.filterwarnings("ignore", category=UserWarning)
    result = {
        "benchmark": "samplers",
        "device": jax.devices()[0].device_kind,
        "platform": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        **settings,
        "rounds": args.rounds,
        "statistic": f"{args.statistic} of {args.rounds}",
    }
    ok = True
    for target in ("eight_schools", "gaussian_100d"):
        result[target] = bench_target(target, settings, args.rounds, args.statistic)
        ratios = result[target]["ratios"]
        ok &= ratios["ess_per_s_probnet_over_numpyro"] >= 1.0
        ok &= ratios["second_call_speedup_numpyro_over_probnet"] >= 5.0
    result["pass"] = bool(ok)
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
