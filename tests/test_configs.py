"""Hydra configs: every experiment composes and builds, typos and wrong types are rejected,
and `experiments/train.py` (multirun) + `experiments/evaluate.py` run end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from probnet.training import (
    build_loss,
    build_model,
    build_prior,
    register_configs,
    to_trainer_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
PRIORS = sorted(p.stem for p in (CONFIGS / "prior").glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_compose():
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        yield lambda overrides=(), name="config": compose(name, overrides=list(overrides))


def check_builds(cfg):
    tcfg = to_trainer_config(cfg.trainer)
    prior = build_prior(cfg.prior)
    assert callable(build_loss(cfg.loss))
    model = eqx.filter_eval_shape(lambda k: build_model(cfg.model, k), jax.random.key(0))
    assert jax.tree.leaves(model)
    assert prior.num_features >= 1
    return tcfg


def test_default_is_mlp_gp_and_cheap(hydra_compose):
    cfg = hydra_compose()
    assert cfg.name == "mlp_gp" and "mlp_gp" in EXPERIMENTS
    tcfg = check_builds(cfg)
    assert tcfg.steps * tcfg.num_tasks * tcfg.num_points <= 500_000  # a laptop-CPU default


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(hydra_compose, experiment):
    check_builds(hydra_compose([f"experiment={experiment}"]))


@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_composes_and_builds(hydra_compose, prior):
    check_builds(hydra_compose([f"prior={prior}"]))


@pytest.mark.parametrize(
    "override", ["trainer.lrr=1e-3", "model.widht=64", "prior.noise_varaince=0.1", "sed=1"]
)
def test_misspelt_key_is_rejected(hydra_compose, override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        hydra_compose([override])


def test_forced_unknown_trainer_key_is_rejected(hydra_compose):
    cfg = hydra_compose(["+trainer.lrr=1e-3"])
    with pytest.raises(ValueError, match=r"unknown trainer config keys \['lrr'\]"):
        to_trainer_config(cfg.trainer)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.lr=fast", "could not be converted to Float"),
        ("trainer.steps=1.5", "could not be converted to Integer"),
        ("trainer.optimizer=sgd", "expected one of"),
        ("prior.kernel.lengthscale=long", "could not be converted to Float"),
        ("model.width=wide", "could not be converted to Integer"),
    ],
)
def test_wrong_type_is_rejected(hydra_compose, override, message):
    with pytest.raises(ConfigCompositionException) as info:
        hydra_compose([override])
    assert message in str(info.value.__cause__)
    assert override.split("=")[0] in str(info.value.__cause__)  # names the key


def test_inconsistent_values_are_rejected(hydra_compose):
    cfg = hydra_compose(["trainer.steps=10", "trainer.steps_per_call=4"])
    with pytest.raises(ValueError, match=r"trainer.steps \(10\) must be a multiple"):
        to_trainer_config(cfg.trainer)


def test_evaluate_config(hydra_compose):
    cfg = hydra_compose(["run_dir=/some/run"], name="evaluate")
    assert cfg.num_batches >= 1 and cfg.run_dir == "/some/run"
    with pytest.raises(ConfigCompositionException):
        hydra_compose(["run_dir=/some/run", "num_batch=3"], name="evaluate")


def run(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_train_multirun_then_evaluate(tmp_path):
    sweep = tmp_path / "sweep"
    run(
        [
            str(ROOT / "experiments" / "train.py"),
            "-m",
            "trainer.lr=1e-3,3e-4",
            "prior=linear",
            "trainer.steps=4",
            "trainer.log_every=2",
            "trainer.checkpoint_every=2",
            "trainer.eval_every=4",
            "trainer.progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    for job, lr in ((0, 1e-3), (1, 3e-4)):
        run_dir = sweep / str(job)
        assert {"config.yaml", "metrics.jsonl", "loss_curve.png", "checkpoints"} <= {
            p.name for p in run_dir.iterdir()
        }
        assert f"lr: {lr}" in (run_dir / "config.yaml").read_text()
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [2, 4] and "eval/loss" in records[-1]

    out = run(
        [str(ROOT / "experiments" / "evaluate.py"), f"run_dir={sweep / '0'}", "num_batches=2"],
        cwd=tmp_path,
    )
    result = json.loads((sweep / "0" / "evaluation.json").read_text())
    assert result["step"] == 4 and result["num_batches"] == 2
    assert json.loads(out.strip().splitlines()[-1])["loss"] == result["loss"]
