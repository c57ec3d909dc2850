"""Evaluation on fresh prior batches: the periodic callback and `experiments/evaluate.py`."""

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray, PyTree

from probnet.training import checkpoint as ckpt
from probnet.training.build import (
    build_evaluators,
    build_loss,
    build_prior,
    find_checkpoint,
    load_run,
)
from probnet.training.sharding import make_mesh, replicate, to_host
from probnet.training.source import BatchSource, draw_batch


def make_eval_fn(
    loss: Callable,
    source: BatchSource,
    *,
    key: PRNGKeyArray,
    num_tasks: int,
    num_points: int,
    mesh: Mesh | None = None,
    evaluators: dict[str, Callable] | None = None,
) -> Callable[[PyTree, int], dict[str, float]]:
    """`eval_fn(model, step)` for `Trainer`: the loss and its metrics on one fixed held-out batch
    (drawn once from `key`, compiled once), plus `evaluators` `(model, source, key) -> dict`."""
    mesh = make_mesh() if mesh is None else mesh
    batch_key, loss_key, evaluator_key = jax.random.split(key, 3)
    draw = eqx.filter_jit(lambda s, k: draw_batch(s, k, num_tasks, num_points, mesh))
    batch = draw(source, batch_key)
    evaluate_loss = eqx.filter_jit(loss)

    def eval_fn(model, step):
        del step
        value, metrics = evaluate_loss(model, batch, loss_key)
        out = {"loss": float(to_host(value))}
        out.update({k: float(to_host(v)) for k, v in metrics.items()})
        for name, fn in (evaluators or {}).items():
            out.update(
                {f"{name}/{k}": float(v) for k, v in fn(model, source, evaluator_key).items()}
            )
        return out

    return eval_fn


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    num_batches: int = 8,
    num_tasks: int = 64,
    seed: int = 12345,
    output: str | os.PathLike | None = None,
    plots: bool = True,
    options: dict[str, dict] | None = None,
) -> dict:
    """The run's loss (mean and standard error over `num_batches` fresh batches of `num_tasks`
    tasks) and its evaluators' results; written as JSON to `output` (default
    `run_dir/evaluation.json`).

    `options` maps an evaluator's name to keyword arguments that override its config (say
    `{"nll": {"num_datasets": 200}}`). With `plots`, evaluators that take a `plot_dir` argument
    write their figures (and data) into `run_dir`.
    """
    model, cfg = load_run(run_dir)
    evaluators = build_evaluators(cfg.get("evaluators"))
    options = dict(options or {})
    if unknown := set(options) - set(evaluators):
        raise ValueError(
            f"options for unknown evaluators {sorted(unknown)}; this run has {sorted(evaluators)}"
        )
    step = int(json.loads((find_checkpoint(run_dir) / ckpt.MANIFEST_FILE).read_text())["step"])
    prior, loss = build_prior(cfg.prior), build_loss(cfg.loss)
    mesh = make_mesh(cfg.trainer.num_devices)
    model = replicate(model, mesh)
    num_points = cfg.trainer.num_points

    @eqx.filter_jit
    def batch_loss(model, key):
        batch_key, loss_key = jax.random.split(key)
        return loss(model, draw_batch(prior, batch_key, num_tasks, num_points, mesh), loss_key)

    key = jax.random.key(seed)
    results = [batch_loss(model, jax.random.fold_in(key, i)) for i in range(num_batches)]
    losses = np.array([float(to_host(v)) for v, _ in results])
    out = {
        "run_dir": str(run_dir),
        "step": step,
        "num_batches": num_batches,
        "num_tasks": num_tasks,
        "num_points": num_points,
        "seed": seed,
        "loss": float(losses.mean()),
        "loss_sem": float(losses.std(ddof=1) / np.sqrt(num_batches)) if num_batches > 1 else None,
    }
    for name in results[0][1]:
        out[name] = float(np.mean([float(to_host(m[name])) for _, m in results]))
    evaluator_key = jax.random.fold_in(key, num_batches)
    for name, fn in evaluators.items():
        kwargs = dict(options.get(name, {}))
        if plots and "plot_dir" in inspect.signature(fn).parameters:
            kwargs.setdefault("plot_dir", str(run_dir))
        result = fn(model, prior, evaluator_key, **kwargs)
        out.update({f"{name}/{k}": float(v) for k, v in result.items()})
    output = Path(run_dir) / "evaluation.json" if output is None else Path(output)
    output.write_text(json.dumps(out, indent=2) + "\n")
    return out
