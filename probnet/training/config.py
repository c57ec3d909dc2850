"""Structured configs: the schemas Hydra checks every experiment against.

`register_configs()` stores them in Hydra's ConfigStore: the root schema `base_config` and one
schema per config group (`trainer/base_trainer`, `model/mlp_schema`, `prior/gp_schema`, ...).
A config file names its schema first in its defaults list, so a misspelt key or a value of the
wrong type is rejected when Hydra composes the config, before anything runs.
"""

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class OptimizerName(enum.Enum):
    adam = "adam"
    adamw = "adamw"


class ScheduleName(enum.Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass
class TrainerConfig:
    """Everything the training engine needs besides the model, loss and prior.

    Steps count optimizer updates; `steps`, `log_every`, `checkpoint_every` and `eval_every`
    must be multiples of `steps_per_call` (the updates run by one compiled call).
    """

    steps: int = 200
    num_tasks: int = 32  # global batch: tasks per update, over all devices
    num_points: int = 32  # points per task
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many parts
    steps_per_call: int = 1  # updates per compiled call (a lax.scan)
    optimizer: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # adamw only
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: ScheduleName = ScheduleName.cosine
    warmup_steps: int = 0  # linear warmup from 0 to `lr` (capped at `steps`)
    end_lr_ratio: float = 0.0  # cosine: final learning rate as a fraction of `lr`
    clip_norm: float | None = 1.0  # global gradient-norm clipping; null disables
    log_every: int = 10  # metrics.jsonl line, progress-bar update and finiteness check
    checkpoint_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0: no periodic evaluation
    eval_tasks: int = 128  # tasks in the fixed held-out evaluation batch
    resume: bool = True  # continue from the newest checkpoint found in the run folder
    progress: bool = True  # tqdm progress bar
    plot: bool = True  # loss_curve.png at the end
    distributed: bool = False  # call jax.distributed.initialize() (multi-host)
    num_devices: int | None = None  # use the first N devices; null: all

    def __post_init__(self):
        if isinstance(self.optimizer, str):
            self.optimizer = _enum_value(OptimizerName, "optimizer", self.optimizer)
        if isinstance(self.schedule, str):
            self.schedule = _enum_value(ScheduleName, "schedule", self.schedule)
        for name in ("steps", "num_tasks", "num_points", "micro_batches", "steps_per_call"):
            _check_int(name, getattr(self, name), 1)
        for name in ("log_every", "keep_checkpoints", "eval_tasks"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "checkpoint_every", "eval_every"):
            _check_int(name, getattr(self, name), 0)
        if not self.lr > 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.end_lr_ratio <= 1:
            raise ValueError(f"trainer.end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"trainer.eps must be > 0, got {self.eps}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"trainer.clip_norm must be > 0 or null, got {self.clip_norm}")
        if self.num_tasks % self.micro_batches:
            raise ValueError(
                f"trainer.num_tasks ({self.num_tasks}) must be a multiple of "
                f"trainer.micro_batches ({self.micro_batches})"
            )
        for name in ("steps", "log_every", "checkpoint_every", "eval_every"):
            if getattr(self, name) % self.steps_per_call:
                raise ValueError(
                    f"trainer.{name} ({getattr(self, name)}) must be a multiple of "
                    f"trainer.steps_per_call ({self.steps_per_call})"
                )
        if self.num_devices is not None:
            _check_int("num_devices", self.num_devices, 1)


@dataclass
class Config:
    """Root schema: an experiment is a model, a prior, a loss and a trainer.

    `model`, `prior` and `loss` are `_target_` nodes for `hydra.utils.instantiate`; the model
    factory is called with an extra `key=` argument and the loss is instantiated as a partial
    `loss(model, batch, key) -> (scalar, metrics)`. `evaluators` maps names to `_target_` nodes
    of functions `(model, prior, key, **kwargs) -> dict[str, float]` (the node's other keys are
    the kwargs), run by periodic evaluation and `experiments/evaluate.py`; one that takes a
    `plot_dir` argument writes its figures there when `experiments/evaluate.py` runs it.
    """

    name: str = "default"
    seed: int = 0
    model: Any = MISSING
    prior: Any = MISSING
    loss: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluators: dict[str, Any] = field(default_factory=dict)


@dataclass
class MLPModelConfig:
    """Schema of `model/mlp`: the pointwise Gaussian MLP of `probnet.training.toy`."""

    _target_: str = "probnet.training.toy.PointwiseGaussian"
    in_features: int = MISSING
    width: int = 32
    depth: int = 2
    min_scale: float = 1e-3


@dataclass
class RBFKernelConfig:
    _target_: str = "probnet.kernels.RBF"
    variance: float = 1.0
    lengthscale: float = 0.2


@dataclass
class UniformConfig:
    _target_: str = "probnet.distributions.Uniform"
    low: float = 0.0
    high: float = 1.0


@dataclass
class GPPriorConfig:
    """Schema of `prior/gp`: `probnet.priors.GPPrior`, with fixed hyperparameters or hyperpriors
    (`_target_` nodes of probnet scalar distributions) on the lengthscale, variance and noise."""

    _target_: str = "probnet.priors.GPPrior"
    kernel: Any = field(default_factory=RBFKernelConfig)
    noise_variance: float = 0.01
    num_features: int = 1
    inputs: Any = field(default_factory=UniformConfig)
    lengthscale_prior: Any = None
    variance_prior: Any = None
    noise_prior: Any = None


@dataclass
class BNNPriorConfig:
    """Schema of `prior/bnn`: `probnet.priors.BNNPrior` (fixed values or `_target_` nodes of
    probnet scalar distributions for `weight_std` and `noise_std`)."""

    _target_: str = "probnet.priors.BNNPrior"
    _convert_: str = "all"
    num_features: int = 1
    min_depth: int = 1
    max_depth: int = 3
    min_width: int = 8
    max_width: int = 64
    activations: list[str] = field(default_factory=lambda: ["relu", "tanh", "sigmoid"])
    weight_std: Any = 1.0
    noise_std: Any = 0.1
    inputs: Any = field(default_factory=lambda: UniformConfig(low=-1.0, high=1.0))


@dataclass
class LinearPriorConfig:
    """Schema of `prior/linear`: `probnet.priors.LinearPrior`."""

    _target_: str = "probnet.priors.LinearPrior"
    num_features: int = 1
    weight_variance: float = 1.0
    noise_variance: float = 0.1
    bias: bool = True
    inputs: UniformConfig = field(default_factory=lambda: UniformConfig(low=-1.0, high=1.0))


@dataclass
class EvaluateConfig:
    """Schema of `configs/evaluate.yaml`, the config of `experiments/evaluate.py`."""

    run_dir: str = MISSING
    num_batches: int = 8
    num_tasks: int = 64
    seed: int = 12345
    output: str | None = None  # default: <run_dir>/evaluation.json
    plots: bool = True  # evaluators with a `plot_dir` argument write figures into run_dir
    # per-evaluator keyword overrides, e.g. options.nll.num_datasets=200
    options: dict[str, Any] = field(default_factory=dict)


_REGISTERED = False


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent). Call before composing."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="base_evaluate", node=EvaluateConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="model", name="mlp_schema", node=MLPModelConfig)
    cs.store(group="prior", name="gp_schema", node=GPPriorConfig)
    cs.store(group="prior", name="linear_schema", node=LinearPriorConfig)
    cs.store(group="prior", name="bnn_schema", node=BNNPriorConfig)
    _REGISTERED = True


def to_trainer_config(cfg: "TrainerConfig | DictConfig | dict") -> TrainerConfig:
    """A validated `TrainerConfig` from a dataclass, a DictConfig or a plain dict."""
    if isinstance(cfg, TrainerConfig):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise TypeError(f"trainer config must be a TrainerConfig or a dict, got {type(cfg)}")
    names = {f.name for f in dataclasses.fields(TrainerConfig)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ValueError(f"unknown trainer config keys {unknown}; valid keys: {sorted(names)}")
    return TrainerConfig(**cfg)


def _enum_value(enum_type, name, value):
    try:
        return enum_type(value)
    except ValueError:
        options = [e.value for e in enum_type]
        raise ValueError(f"trainer.{name} must be one of {options}, got {value!r}") from None


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"trainer.{name} must be an integer >= {minimum}, got {value!r}")
