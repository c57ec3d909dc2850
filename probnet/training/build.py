"""Build the parts of an experiment from its config, and rebuild a trained run from its folder.

Models, priors, losses and evaluators are `_target_` nodes for `hydra.utils.instantiate`, so a
model issue plugs in its model by adding `configs/model/NAME.yaml` with the `_target_` of a
class or factory that accepts the config's fields plus `key=` (a PRNG key) and returns an
Equinox module. `load_run` rebuilds that module's skeleton from the saved config (shapes only,
no compute) and fills it from the newest valid checkpoint.
"""

import os
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray, PyTree
from omegaconf import DictConfig, OmegaConf

from probnet.training import checkpoint as ckpt
from probnet.training.config import Config, to_trainer_config
from probnet.training.state import TrainState


def _instantiate(cfg, name, **kwargs):
    from hydra.utils import instantiate

    if not (isinstance(cfg, DictConfig | dict) and "_target_" in cfg):
        raise ValueError(f"{name} config must be a mapping with a _target_, got {cfg!r}")
    return instantiate(cfg, **kwargs)


def build_model(cfg: DictConfig | dict, key: PRNGKeyArray) -> PyTree:
    """`instantiate(cfg, key=key)`: the model named by `cfg._target_` with its fields."""
    return _instantiate(cfg, "model", key=key)


def build_prior(cfg: DictConfig | dict):
    """`instantiate(cfg)`: a prior (or any batch source) named by `cfg._target_`."""
    return _instantiate(cfg, "prior")


def build_loss(cfg: DictConfig | dict) -> Callable:
    """`instantiate(cfg, _partial_=True)`: `loss(model, batch, key) -> (scalar, metrics)`."""
    return _instantiate(cfg, "loss", _partial_=True)


def build_evaluators(cfg: DictConfig | dict | None) -> dict[str, Callable]:
    """Evaluators `(model, prior, key) -> dict[str, float]`, by name."""
    return {
        name: _instantiate(c, f"evaluators.{name}", _partial_=True)
        for name, c in (cfg or {}).items()
    }


def load_config(path: str | os.PathLike) -> DictConfig:
    """A saved experiment config, checked against the `Config` schema."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None) -> Path:
    """The checkpoint folder of `step`, or the newest valid one."""
    if step is not None:
        path = ckpt.checkpoint_dir(run_dir) / f"step_{step:08d}"
        if not path.is_dir():
            steps = [p.name for p in ckpt.list_checkpoints(run_dir)]
            raise FileNotFoundError(f"no checkpoint for step {step} in {run_dir}; found {steps}")
        return path
    path = ckpt.latest_valid_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {run_dir}/checkpoints/)")
    return path


def load_run(run_dir: str | os.PathLike, *, step: int | None = None) -> tuple[PyTree, DictConfig]:
    """The trained model of a run folder and its resolved config.

    Uses the newest valid checkpoint (or the one of `step`), and the config saved with it.
    """
    path = find_checkpoint(run_dir, step)
    config_file = path / ckpt.CONFIG_FILE
    if not config_file.is_file():
        config_file = Path(run_dir) / ckpt.CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"no {ckpt.CONFIG_FILE} in {path} or {run_dir}")
    cfg = load_config(config_file)
    _import_targets(cfg.model)  # import outside the trace: module-level jnp constants would leak
    like = eqx.filter_eval_shape(lambda k: build_model(cfg.model, k), jax.random.key(0))
    return ckpt.load_model(path, like), cfg


def _import_targets(node) -> None:
    from hydra.utils import get_object

    if isinstance(node, DictConfig | dict):
        for name, value in node.items():
            if name == "_target_":
                get_object(value)
            else:
                _import_targets(value)
    elif isinstance(node, list | tuple) or OmegaConf.is_list(node):
        for value in node:
            _import_targets(value)


def load_state(run_dir: str | os.PathLike, like: TrainState, *, step: int | None = None):
    """The full training state of a run's checkpoint, in the structure of `like`."""
    return ckpt.load_checkpoint(find_checkpoint(run_dir, step), like)


def train_from_config(cfg: DictConfig, run_dir: str | os.PathLike) -> TrainState:
    """Train the experiment `cfg` (a composed root config) into `run_dir`."""
    from probnet.training.evaluation import make_eval_fn
    from probnet.training.sharding import initialize_distributed, make_mesh
    from probnet.training.trainer import Trainer

    tcfg = to_trainer_config(cfg.trainer)
    if tcfg.distributed:
        initialize_distributed()
    model_key, train_key, eval_key = jax.random.split(jax.random.key(cfg.seed), 3)
    model = build_model(cfg.model, model_key)
    prior = build_prior(cfg.prior)
    loss = build_loss(cfg.loss)
    mesh = make_mesh(tcfg.num_devices)
    eval_fn = None
    if tcfg.eval_every:
        eval_fn = make_eval_fn(
            loss,
            prior,
            key=eval_key,
            num_tasks=tcfg.eval_tasks,
            num_points=tcfg.num_points,
            mesh=mesh,
            evaluators=build_evaluators(cfg.get("evaluators")),
        )
    trainer = Trainer(loss, prior, tcfg, mesh=mesh, eval_fn=eval_fn)
    return trainer.fit(model, train_key, run_dir=run_dir, config=cfg)
