"""Training engine: one loop for every amortized model.

prior → loss → optax update, compiled once, data-parallel over a device mesh (single or multi
host), with atomic verified checkpoints that resume exactly, metrics.jsonl, a progress bar and a
loss curve. Experiments are Hydra configs (`configs/`); `load_run` rebuilds a trained model.
"""

from probnet.training.build import (
    build_evaluators,
    build_loss,
    build_model,
    build_prior,
    load_config,
    load_run,
    load_state,
    train_from_config,
)
from probnet.training.checkpoint import (
    CheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    save_checkpoint,
    verify_checkpoint,
)
from probnet.training.config import (
    Config,
    OptimizerName,
    ScheduleName,
    TrainerConfig,
    register_configs,
    to_trainer_config,
)
from probnet.training.evaluation import evaluate_run, make_eval_fn
from probnet.training.logging import plot_loss_curve, read_metrics
from probnet.training.nnx import NNXModule, from_nnx
from probnet.training.optim import make_optimizer, make_schedule
from probnet.training.sharding import initialize_distributed, make_mesh, replicate
from probnet.training.source import draw_batch, draw_tasks
from probnet.training.state import TrainState
from probnet.training.trainer import Trainer

__all__ = [
    "CheckpointError",
    "Config",
    "NNXModule",
    "OptimizerName",
    "ScheduleName",
    "TrainState",
    "Trainer",
    "TrainerConfig",
    "build_evaluators",
    "build_loss",
    "build_model",
    "build_prior",
    "draw_batch",
    "draw_tasks",
    "evaluate_run",
    "from_nnx",
    "initialize_distributed",
    "latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "load_model",
    "load_run",
    "load_state",
    "make_eval_fn",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "plot_loss_curve",
    "read_metrics",
    "register_configs",
    "replicate",
    "save_checkpoint",
    "to_trainer_config",
    "train_from_config",
    "verify_checkpoint",
]
