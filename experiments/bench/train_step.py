"""Training-step throughput and engine overhead; prints ONE JSON line.

    python experiments/bench/train_step.py [--steps 200 --rounds 10 --num-tasks 32 --num-points 32]

- `bare_steps_per_sec`: a hand-written `jax.jit` step (same model, same GP prior sampled inside,
  same optimizer, buffers donated), called in a plain Python loop.
- `bare_flat_steps_per_sec`: the same step on flat lists of arrays (the cheapest dispatch; the
  engine dispatches this way too), and `engine_overhead_vs_bare_flat` against it.
- `engine_steps_per_sec`: `Trainer.fit` on the same work (progress bar, per-interval metrics and
  finiteness checks included; no run folder, so no checkpoint or plot I/O).
- `engine_overhead`: median over interleaved rounds of engine wall time / bare wall time - 1
  (`engine_overhead_cpu_time`: the same with process CPU time, less sensitive to other load;
  `engine_overhead_best_of`: fastest engine round / fastest bare round - 1).
- `devices_4` / `devices_1_same_process`: engine steps per second on 4 fake CPU devices and on 1
  device of the same subprocess (`--xla_force_host_platform_device_count=4`).
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probnet.distributions import Uniform
from probnet.kernels import RBF
from probnet.priors import GPPrior
from probnet.training import Trainer, TrainerConfig, make_optimizer
from probnet.training.toy import PointwiseGaussian, gaussian_nll


def setup(args, **overrides):
    prior = GPPrior(
        kernel=RBF(variance=1.0, lengthscale=0.2),
        noise_variance=0.01,
        num_features=1,
        inputs=Uniform(0.0, 1.0),
    )
    cfg = TrainerConfig(
        steps=args.steps,
        num_tasks=args.num_tasks,
        num_points=args.num_points,
        lr=1e-3,
        warmup_steps=10,
        log_every=10,
        checkpoint_every=0,
        plot=False,
        **overrides,
    )
    model = PointwiseGaussian(1, width=32, depth=2, key=jax.random.key(0))
    return prior, cfg, model


def timed(fn):
    """(wall seconds, process CPU seconds) of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def engine_run(trainer, model):
    def run():
        with contextlib.redirect_stderr(io.StringIO()):  # keep the progress bar, hide it
            jax.block_until_ready(trainer.fit(model, jax.random.key(1)))

    return run


def make_bare(prior, cfg, model, flat=False):
    """The hand-written reference: one jitted update, nothing else. With `flat`, the step
    takes and returns flat lists of arrays (cheaper to dispatch than nested Equinox modules, as
    the engine does)."""
    optimizer = make_optimizer(cfg)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    base_key = jax.random.key(1)

    def step(params, opt_state, step):
        sample_key, loss_key = jax.random.split(jax.random.fold_in(base_key, step))
        keys = jax.random.split(sample_key, cfg.num_tasks)
        batch = jax.vmap(lambda k: prior.sample_task(k, cfg.num_points))(keys)

        def objective(p):
            return gaussian_nll(eqx.combine(p, static), batch, loss_key)

        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state, step + 1, loss

    treedef = jax.tree.structure((params, optimizer.init(params)))

    def flat_step(leaves, step_):
        p, o = jax.tree.unflatten(treedef, leaves)
        p, o, step_, loss = step(p, o, step_)
        return jax.tree.leaves((p, o)), step_, loss

    step_jit = jax.jit(step, donate_argnums=(0, 1))
    flat_jit = jax.jit(flat_step, donate_argnums=0)

    def run():  # like Trainer.fit: from the model (copy, optimizer init) to trained parameters
        p = jax.tree.map(jnp.copy, params)
        o = optimizer.init(p)
        s = jnp.zeros((), jnp.int32)
        if flat:
            leaves = jax.tree.leaves((p, o))
            for _ in range(cfg.steps):
                leaves, s, loss = flat_jit(leaves, s)
            jax.block_until_ready((leaves, loss))
            return
        for _ in range(cfg.steps):
            p, o, s, loss = step_jit(p, o, s)
        jax.block_until_ready((p, loss))

    return run


def bench_single(args):
    prior, cfg, model = setup(args)
    trainer = Trainer(gaussian_nll, prior, cfg)
    runs = {
        "bare": make_bare(prior, cfg, model),
        "bare_flat": make_bare(prior, cfg, model, flat=True),
        "engine": engine_run(trainer, model),
    }
    for run in runs.values():
        run()  # compile
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for i in range(args.rounds):  # interleaved, alternating order, against machine drift
        for name in sorted(runs, reverse=bool(i % 2)):  # (bare, bare_flat, engine), reversed
            w, c = timed(runs[name])
            wall[name].append(w)
            cpu[name].append(c)
    ratio = np.array(wall["engine"]) / np.array(wall["bare"])
    flat_ratio = np.array(wall["engine"]) / np.array(wall["bare_flat"])
    cpu_ratio = np.array(cpu["engine"]) / np.array(cpu["bare"])
    prior, cfg10, model = setup(args, steps_per_call=10)
    run10 = engine_run(Trainer(gaussian_nll, prior, cfg10), model)
    run10()
    k10 = float(np.median([timed(run10)[0] for _ in range(args.rounds)]))
    return {
        "bare_steps_per_sec": cfg.steps / float(np.median(wall["bare"])),
        "engine_steps_per_sec": cfg.steps / float(np.median(wall["engine"])),
        "engine_overhead": float(np.median(ratio) - 1),
        "engine_overhead_cpu_time": float(np.median(cpu_ratio) - 1),
        "engine_overhead_best_of": float(min(wall["engine"]) / min(wall["bare"]) - 1),
        "bare_flat_steps_per_sec": cfg.steps / float(np.median(wall["bare_flat"])),
        "engine_overhead_vs_bare_flat": float(np.median(flat_ratio) - 1),
        "engine_steps_per_call_10_steps_per_sec": cfg.steps / k10,
        "engine_traces": trainer.trace_count,
    }


def bench_devices(args):
    out = {}
    for n in (1, 4):
        prior, cfg, model = setup(args, num_devices=n)
        run = engine_run(Trainer(gaussian_nll, prior, cfg), model)
        run()  # compile
        out[n] = cfg.steps / float(np.median([timed(run)[0] for _ in range(args.rounds)]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-tasks", type=int, default=32)
    parser.add_argument("--num-points", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(bench_devices(args)))
        return
    result = {
        "benchmark": "train_step",
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "num_tasks": args.num_tasks,
        "num_points": args.num_points,
        "steps": args.steps,
        "rounds": args.rounds,
        **bench_single(args),
    }
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    child = subprocess.run(
        [sys.executable, __file__, "--child", *sys.argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    devices = json.loads(child.stdout.strip().splitlines()[-1])
    result["devices_1_same_process_steps_per_sec"] = devices["1"]
    result["devices_4_steps_per_sec"] = devices["4"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
