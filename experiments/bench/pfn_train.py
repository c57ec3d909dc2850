"""PFN training throughput: probnet's `PFN` vs the PyTorch `pfns` package, same configuration.

    make bench-env                                      # once: .bench-venv (torch CPU + pfns)
    .venv/bin/python experiments/bench/pfn_train.py     # prints ONE JSON line

Both sides train the same PFN: emsize 128, feed-forward 256, 4 layers, 4 heads, 100 bars (full
support), 32 datasets x 64 points per step from the 1-D GP prior (RBF lengthscale 0.2, variance
1, noise variance 0.01, x ~ U[0, 1]), one number of context points k ~ U{1, ..., 63} per step,
the NLL of the other 64 - k points, gradient-norm clipping at 1.0, AdamW, fp32. pfns is the
original PFN architecture (`attention_between_features=False`: a token is embed(x) + embed(y),
as in probnet; `--pfns-arch table` times its per-feature table transformer instead).

Two throughputs per side, in optimizer steps per second:

* `whole`: the full step with prior sampling. probnet: `Trainer.step` (prior sampled inside the
  compiled step, `--steps-per-call` updates per call). pfns: `fast_gp.get_batch`, forward,
  `pfns.train.compute_losses`, backward, clipping, `AdamW.step`, as in `pfns.train`.
* `model`: the model step alone on one fixed batch (k still drawn each step).

pfns runs in `.bench-venv` (`--pfns-python`) in a long-lived subprocess of this script
(`--pfns-serve`), so torch never enters probnet's environment. Measurements alternate between the
sides (and reverse order every round) so that load from other processes hits both alike; each
runs steps for at least `--min-time` seconds. pfns is timed with torch's default thread count
and with 1 thread (`--pfns-threads`) and the faster counts. Ratios are probnet / pfns of the
best (`--statistic best`, default; other load only slows a run) or median over `--rounds`.

`--device auto` (default) uses the GPU on a machine with an NVIDIA GPU (JAX's default backend,
torch on cuda; pfns from `.bench-venv` if present, else this interpreter), else the CPU. XLA CPU
flags for this benchmark are set here only (`XLA_FLAGS` of this process, before JAX starts),
never globally. Exits 1 if the whole-step ratio is below `--min-ratio` (1.0; 0 disables) and 2
if the benchmark venv is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from _serve import LineServer  # experiments/bench: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[2]
BENCH_VENV = REPO / ".bench-venv"
LENGTHSCALE, VARIANCE, NOISE_VARIANCE = 0.2, 1.0, 0.01
CONFIG = dict(emsize=128, nhid=256, nlayers=4, nhead=4, num_bars=100, num_tasks=32, num_points=64)
# XLA CPU: dots through Eigen instead of the YNNPACK fusions (about 3x faster for this
# model's backward on this machine; measured in model.py's notes).
CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def _rate(step, min_time: float, min_steps: int, steps_per_call: int = 1, sync=None) -> float:
    """Steps per second of `step()` (each call `steps_per_call` steps) over >= `min_time` s."""
    calls, start = 0, time.perf_counter()
    while True:
        out = step()
        calls += 1
        if calls * steps_per_call >= min_steps:
            if sync is not None:
                sync(out)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return calls * steps_per_call / elapsed


# ---------------------------------------------------------------------------- pfns side


def pfns_serve(args: argparse.Namespace) -> int:
    """The pfns side: prints a `ready` JSON line, then one JSON line per `MODE THREADS` line."""
    import importlib.metadata

    import torch
    from pfns.model.bar_distribution import BarDistributionConfig
    from pfns.model.transformer_config import TransformerConfig
    from pfns.priors import fast_gp
    from pfns.train import compute_losses

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    borders = [float(b) for b in args.borders.split(",")]
    with contextlib.redirect_stdout(sys.stderr):  # pfns prints its encoder choice
        model = TransformerConfig(
            criterion=BarDistributionConfig(borders, full_support=True),
            emsize=CONFIG["emsize"],
            nhid=CONFIG["nhid"],
            nlayers=CONFIG["nlayers"],
            nhead=CONFIG["nhead"],
            features_per_group=1,
            attention_between_features=args.pfns_arch == "table",
        ).create_model()
    criterion = model.criterion.to(device)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    hp = {
        "noise": NOISE_VARIANCE,
        "outputscale": VARIANCE,
        "lengthscale": LENGTHSCALE,
        "sampling": "uniform",
        "observation_noise": True,
    }
    n, t = CONFIG["num_tasks"], CONFIG["num_points"]

    def sample():
        return fast_gp.get_batch(n, t, 1, device=str(device), hyperparameters=hp)

    def step(batch):
        sep = rng.randint(1, t - 1)  # as pfns' single_eval_pos sampler: 1..63 context points
        out = model(x=batch.x, y=batch.y[:, :sep], only_return_standard_out=True)
        loss = compute_losses(out, batch.target_y[:, sep:], criterion, 1).mean(1).nanmean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    fixed = sample()
    sync = (lambda _: torch.cuda.synchronize()) if device.type == "cuda" else None
    modes = {"whole": lambda: step(sample()), "model": lambda: step(fixed)}
    for _ in range(3):
        modes["whole"]()
        modes["model"]()
    if sync:
        sync(None)
    print(
        json.dumps(
            {
                "ready": True,
                "pfns_version": importlib.metadata.version("pfns"),
                "torch_version": torch.__version__,
                "torch_num_threads": torch.get_num_threads(),
                "torch_device": str(device)
                + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
                "num_parameters": sum(p.numel() for p in model.parameters()),
            }
        ),
        flush=True,
    )
    default_threads = torch.get_num_threads()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        mode, threads = words[0], words[1] if len(words) > 1 else "default"
        torch.set_num_threads(default_threads if threads == "default" else int(threads))
        modes[mode]()  # settle the thread pool after a change
        rate = _rate(modes[mode], args.min_time, args.min_steps, sync=sync)
        print(json.dumps({"steps_per_s": rate}), flush=True)
    return 0


def _pfns_server(python: str, args: argparse.Namespace, borders: list[float]) -> LineServer:
    """The pfns side in a long-lived subprocess: `MODE THREADS` -> steps per second."""
    return LineServer(
        [
            python,
            __file__,
            "--pfns-serve",
            "--device",
            args.device,
            "--pfns-arch",
            args.pfns_arch,
            "--borders=" + ",".join(repr(b) for b in borders),
            "--min-time",
            str(args.min_time),
            "--min-steps",
            str(args.min_steps),
            "--lr",
            str(args.lr),
            "--weight-decay",
            str(args.weight_decay),
            "--seed",
            str(args.seed),
        ]  # fmt: skip
    )


# ---------------------------------------------------------------------------- probnet side


def probnet_model(args: argparse.Namespace):
    """(prior, PFN) with bar borders from the prior."""
    import jax

    from probnet.distributions import Uniform
    from probnet.kernels import RBF
    from probnet.pfn import pfn_for_prior
    from probnet.priors import GPPrior

    prior = GPPrior(
        kernel=RBF(variance=VARIANCE, lengthscale=LENGTHSCALE),
        noise_variance=NOISE_VARIANCE,
        num_features=1,
        inputs=Uniform(0.0, 1.0),
    )
    model = pfn_for_prior(
        prior,
        jax.random.key(args.seed),
        num_bars=CONFIG["num_bars"],
        emb_size=CONFIG["emsize"],
        ff_size=CONFIG["nhid"],
        num_layers=CONFIG["nlayers"],
        num_heads=CONFIG["nhead"],
        num_points=CONFIG["num_points"],
    )
    return prior, model


def probnet_sides(args: argparse.Namespace, prior, model):
    """({mode: (call, steps_per_call, sync)}, info) for probnet."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from probnet.pfn import pfn_loss
    from probnet.training import Trainer, TrainerConfig

    spc = args.steps_per_call
    cfg = TrainerConfig(
        steps=spc * 10**6,
        num_tasks=CONFIG["num_tasks"],
        num_points=CONFIG["num_points"],
        steps_per_call=spc,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip_norm=1.0,
        log_every=spc,
        checkpoint_every=0,
        plot=False,
        progress=False,
    )

    def loss(model, batch, key):  # k ~ U{1, ..., 63}, as on the pfns side
        return pfn_loss(model, batch, key, min_context=1)

    trainer = Trainer(loss, prior, cfg)
    holder = {"state": trainer.init(model, jax.random.key(args.seed + 1))}

    def whole():
        holder["state"], metrics = trainer.step(holder["state"])
        return metrics["loss"]

    # The model step alone: the engine's optimizer and loss on one fixed batch.
    batch = prior.sample(jax.random.key(args.seed + 2), CONFIG["num_tasks"], CONFIG["num_points"])
    optimizer = trainer.optimizer
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def model_steps(params, opt_state, key):
        def update(carry, key):
            params, opt_state = carry
            grads = jax.grad(lambda p: loss(eqx.combine(p, static), batch, key)[0])(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), None

        keys = jax.random.split(key, spc)
        return jax.lax.scan(update, (params, opt_state), keys)[0]

    carry = {"p": jax.tree.map(jnp.copy, params), "key": jax.random.key(args.seed + 3)}
    carry["o"] = optimizer.init(carry["p"])

    def model_only():
        carry["key"], key = jax.random.split(carry["key"])
        carry["p"], carry["o"] = model_steps(carry["p"], carry["o"], key)
        return carry["p"]

    sync = jax.block_until_ready
    for fn in (whole, model_only):
        sync(fn())  # compile
        sync(fn())
    info = {
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "num_parameters": sum(x.size for x in jax.tree.leaves(params)),
        "engine_traces": trainer.trace_count,
    }
    return {"whole": (whole, spc, sync), "model": (model_only, spc, sync)}, info


# ---------------------------------------------------------------------------- main


def _has_nvidia_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU, checked without starting JAX (its XLA flags
    must be set first)."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--rounds", type=int, default=5, help="measurements per side and mode")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--min-steps", type=int, default=10, help="steps per measurement, at least")
    p.add_argument("--steps-per-call", type=int, default=10, help="probnet updates per call")
    p.add_argument("--statistic", choices=("best", "median"), default="best")
    p.add_argument("--min-ratio", type=float, default=1.0, help="exit 1 below; 0: off")
    p.add_argument("--pfns-threads", default="default,1", help="torch thread counts to time")
    p.add_argument("--pfns-arch", choices=("pfn", "table"), default="pfn")
    p.add_argument("--pfns-python", default=None, help="default: .bench-venv's, else this one")
    p.add_argument("--no-xla-flags", action="store_true", help="keep XLA's default CPU flags")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01, help="torch AdamW's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pfns-serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--borders", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pfns_serve:
        return pfns_serve(args)

    if args.device == "auto":
        args.device = "gpu" if _has_nvidia_gpu() else "cpu"
    xla_flags = ""
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        if not args.no_xla_flags:
            xla_flags = CPU_XLA_FLAGS
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    else:
        import jax

        if jax.default_backend() != "gpu":
            print("pfn_train: --device gpu, but JAX sees no GPU", file=sys.stderr)
            return 2
    python = args.pfns_python
    if python is None:
        venv_python = BENCH_VENV / "bin" / "python"
        if (BENCH_VENV / ".installed").exists() and venv_python.exists():
            python = str(venv_python)
        elif args.device == "gpu":
            python = sys.executable  # a GPU machine: torch and pfns next to JAX
        else:
            print(
                f"pfn_train: the benchmark environment {BENCH_VENV} is missing; create it "
                "with `make bench-env` first (or pass --pfns-python).",
                file=sys.stderr,
            )
            return 2
    threads = [t.strip() for t in args.pfns_threads.split(",") if t.strip()]
    load_before = os.getloadavg()[0]

    prior, model = probnet_model(args)
    pfns = _pfns_server(python, args, [float(b) for b in model.borders])  # starts in parallel
    try:
        sides, info = probnet_sides(args, prior, model)  # compiles
        pfns.wait_ready()
        rates = {(m, s): [] for m in ("whole", "model") for s in ["probnet", *threads]}
        for r in range(args.rounds):
            jobs = []
            for mode in ("whole", "model"):
                fn, spc, sync = sides[mode]
                jobs.append(
                    lambda mode=mode, fn=fn, spc=spc, sync=sync: rates[(mode, "probnet")].append(
                        _rate(fn, args.min_time, args.min_steps, spc, sync)
                    )
                )
                for t in threads:
                    jobs.append(
                        lambda mode=mode, t=t: rates[(mode, t)].append(
                            pfns.request(f"{mode} {t}")["steps_per_s"]
                        )
                    )
            for job in jobs if r % 2 == 0 else reversed(jobs):
                job()
    finally:
        pfns.close()

    stat = max if args.statistic == "best" else statistics.median
    default_threads = pfns.info["torch_num_threads"]

    def label(t):
        return f"{default_threads} (default)" if t == "default" else t

    result = {"benchmark": "pfn_train", "unit": "steps/s"}
    for mode in ("whole", "model"):
        ours = stat(rates[(mode, "probnet")])
        by_threads = {t: stat(rates[(mode, t)]) for t in threads}
        best_t = max(by_threads, key=by_threads.get)
        result[f"probnet_{mode}"] = round(ours, 2)
        result[f"pfns_{mode}"] = round(by_threads[best_t], 2)
        result[f"ratio_{mode}"] = round(ours / by_threads[best_t], 3)
        result[f"pfns_{mode}_torch_threads"] = label(best_t)
        result[f"ratio_{mode}_median"] = round(
            statistics.median(rates[(mode, "probnet")])
            / max(statistics.median(rates[(mode, t)]) for t in threads),
            3,
        )
    result.update(
        {
            "statistic": f"{args.statistic} of {args.rounds}",
            "meets_min_ratio": result["ratio_whole"] >= args.min_ratio,
            "min_ratio": args.min_ratio,
            "device": args.device,
            "jax_device": info["jax_device"],
            "torch_device": pfns.info["torch_device"],
            "config": {
                **CONFIG,
                "context_points": "U{1..63} per step",
                "prior": f"GP RBF lengthscale {LENGTHSCALE}, variance {VARIANCE}, "
                f"noise variance {NOISE_VARIANCE}, x ~ U[0,1]",
                "optimizer": f"AdamW lr {args.lr} weight decay {args.weight_decay}, clip 1.0",
                "dtype": "float32",
                "pfns_arch": args.pfns_arch,
                "probnet_steps_per_call": args.steps_per_call,
            },
            "num_parameters": {
                "probnet": info["num_parameters"],
                "pfns": pfns.info["num_parameters"],
            },
            "rounds": {
                f"{'probnet' if s == 'probnet' else 'pfns_threads_' + s}_{m}": [
                    round(v, 2) for v in vs
                ]
                for (m, s), vs in rates.items()
            },
            "xla_flags": xla_flags,
            "versions": {
                "jax": info["jax_version"],
                "jax_backend": info["jax_backend"],
                "pfns": pfns.info["pfns_version"],
                "torch": pfns.info["torch_version"],
                "torch_default_num_threads": default_threads,
            },
            "engine_traces": info["engine_traces"],
            "cpu_count": os.cpu_count(),
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "machine": platform.machine(),
        }
    )
    print(json.dumps(result), flush=True)
    return 0 if args.min_ratio <= 0 or result["ratio_whole"] >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
