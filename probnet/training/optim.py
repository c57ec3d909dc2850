"""Optax optimizers and learning-rate schedules built from a `TrainerConfig`."""

from collections.abc import Callable

import optax

from probnet.training.config import OptimizerName, ScheduleName, TrainerConfig


def make_schedule(cfg: TrainerConfig) -> Callable:
    """Linear warmup from 0 to `cfg.lr` over `warmup_steps`, then constant or cosine decay to
    `end_lr_ratio * lr` at `steps`."""
    warmup = min(cfg.warmup_steps, cfg.steps)
    if cfg.schedule is ScheduleName.constant or warmup == cfg.steps:
        if warmup == 0:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)],
            [warmup],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=cfg.steps,
        end_value=cfg.lr * cfg.end_lr_ratio,
    )


def make_optimizer(cfg: TrainerConfig) -> optax.GradientTransformation:
    """Adam or AdamW on the schedule, after global-norm clipping (if `clip_norm`).

    Gradient accumulation is not done here: the engine averages the gradients of
    `cfg.micro_batches` micro-batches inside one compiled step, so one update sees the full
    batch whatever the micro-batch count.
    """
    schedule = make_schedule(cfg)
    if cfg.optimizer is OptimizerName.adam:
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        opt = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt
