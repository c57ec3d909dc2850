"""Training engine: compile once, exact resume, checkpoint integrity, NaN stop, NNX adapter."""

import json
import os
import warnings
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probnet.priors import Task
from probnet.training import (
    CheckpointError,
    Trainer,
    TrainerConfig,
    from_nnx,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_run,
    read_metrics,
    verify_checkpoint,
)
from probnet.training.toy import PointwiseGaussian, gaussian_nll


class SineTasks(eqx.Module):
    """A cheap task sampler (fast to compile): y = a sin(3x) + noise."""

    num_features: int = 1

    def sample_task(self, key, num_points):
        ka, kx, kn = jax.random.split(key, 3)
        amplitude = jax.random.uniform(ka, (), minval=0.5, maxval=2.0)
        x = jax.random.uniform(kx, (num_points, 1), minval=-2.0, maxval=2.0)
        y = amplitude * jnp.sin(3 * x[:, 0]) + 0.1 * jax.random.normal(kn, (num_points,))
        return Task(x, y)


MODEL_CFG = {"_target_": "probnet.training.toy.PointwiseGaussian", "in_features": 1, "width": 8}


def small_config(**overrides):
    base = dict(
        steps=20,
        num_tasks=8,
        num_points=16,
        lr=1e-2,
        warmup_steps=2,
        log_every=5,
        checkpoint_every=10,
        progress=False,
        plot=False,
    )
    return TrainerConfig(**(base | overrides))


def make_model(seed=0):
    return PointwiseGaussian(1, width=8, key=jax.random.key(seed))


def params_of(state_or_model):
    model = getattr(state_or_model, "model", state_or_model)
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


def assert_same_params(a, b, exact=True):
    for x, y in zip(params_of(a), params_of(b), strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(gaussian_nll, SineTasks(), small_config())


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def runs(trainer, tmp_path_factory):
    """An uninterrupted run, and the same run interrupted at step 20 (after logging step 15,
    before its last checkpoint) then resumed from step 10."""
    full_dir = tmp_path_factory.mktemp("full")
    config = {"model": MODEL_CFG}
    full = trainer.fit(make_model(), jax.random.key(1), run_dir=full_dir, config=config)
    assert trainer.trace_count == 1

    def crash(model, step):
        if step == 20:
            raise Interrupt
        return {}

    resumed_dir = tmp_path_factory.mktemp("resumed")
    trainer.eval_fn, trainer.config.eval_every = crash, 5
    try:
        with pytest.raises(Interrupt):
            trainer.fit(make_model(), jax.random.key(1), run_dir=resumed_dir)
        assert [p.name for p in list_checkpoints(resumed_dir)] == ["step_00000010"]
        trainer.eval_fn, trainer.config.eval_every = None, 0
        resumed = trainer.fit(make_model(), jax.random.key(1), run_dir=resumed_dir)
    finally:
        trainer.eval_fn, trainer.config.eval_every = None, 0
    return full, full_dir, resumed, resumed_dir


def test_step_compiled_once_and_metrics_written(trainer, runs):
    full, full_dir, _, _ = runs
    assert int(full.step) == 20
    assert trainer.trace_count == 1  # three fits, 60 updates: one trace
    records = read_metrics(full_dir)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert {"loss", "mse", "grad_norm", "lr", "tasks_per_sec"} <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"]
    assert [p.name for p in list_checkpoints(full_dir)] == ["step_00000010", "step_00000020"]


class _Pending:
    """A call output the device has not finished (its `is_ready()` is False)."""

    def is_ready(self):
        return False


def test_throughput_counts_finished_calls_once(monkeypatch):
    """tasks_per_sec with a fake clock (1 s between reads): the calls of the kept-back interval
    that the device has already finished count in the read that sees them done, not again in
    the next one (which doubled the final record's rate on a GPU)."""
    import probnet.training.trainer as trainer_module

    ticks = iter(range(1, 10))
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(ticks)))
    config = TrainerConfig(num_tasks=2, steps_per_call=5, log_every=10)
    fake = type("T", (), {"config": config, "_metric_names": ("loss", "grad_norm")})
    drain = trainer_module.Trainer._drain
    done = jnp.ones((5, 2))  # one call: five steps of (loss, grad_norm), already computed

    # The newest interval (steps 11..20) is finished when steps 1..10 are read.
    clock = {"step": 0, "time": 0.0}
    intervals = [(10, [done, done]), (20, [done, done])]
    assert [r["tasks_per_sec"] for r in drain(fake, intervals, clock, keep_last=True)] == [40.0]
    assert clock["step"] == 20
    intervals.append((30, [done, done]))  # the final read: steps 21..30 in the last second
    records = drain(fake, intervals, clock, keep_last=False)
    assert [r["step"] for r in records] == [20, 30]
    assert [r["tasks_per_sec"] for r in records] == [20.0, 20.0]

    # Half of the newest interval is still running: steps 1..15 are done.
    clock = {"step": 0, "time": 2.0}
    intervals = [(10, [done, done]), (20, [done, _Pending()])]
    assert [r["tasks_per_sec"] for r in drain(fake, intervals, clock, keep_last=True)] == [30.0]
    assert clock["step"] == 15

    # Only the untimed first call (steps 1..5) is done: no rate yet, and the clock stays.
    clock = {"step": 5, "time": 4.0}
    intervals = [(5, [done]), (10, [_Pending()])]
    records = drain(fake, intervals, clock, keep_last=True)
    assert [r["step"] for r in records] == [5] and "tasks_per_sec" not in records[0]
    assert clock == {"step": 5, "time": 4.0}


def test_throughput_is_timed_from_the_end_of_the_first_call(monkeypatch):
    """The first call compiles; it is waited for and its steps are not counted (the clock
    started after it while its steps were counted: a demo of one logging interval per call
    reported 3e6 tasks/s for ~150). One tick of a fake clock per reading."""
    import probnet.training.trainer as trainer_module

    ticks = iter(float(t) for t in range(100))
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    config = small_config(steps=15, steps_per_call=5, log_every=15, checkpoint_every=0)
    trainer = Trainer(gaussian_nll, SineTasks(), config)
    trainer.fit(make_model(), jax.random.key(0))
    # clock read at the start (0), after the first call (1) and at the end (2): steps 6..15
    assert [r["tasks_per_sec"] for r in trainer.history] == [10 * config.num_tasks / 1.0]


def test_resumed_run_equals_uninterrupted(runs):
    full, _, resumed, resumed_dir = runs
    assert int(resumed.step) == 20
    assert_same_params(full, resumed)
    np.testing.assert_array_equal(*(jax.tree.leaves(s.opt_state)[1] for s in (full, resumed)))
    steps = [r["step"] for r in read_metrics(resumed_dir)]
    assert steps == [5, 10, 15, 20]  # step 15 of the interrupted run was dropped on resume


def test_steps_per_call_scan_is_exact(runs):
    full = runs[0]
    cfg = small_config(steps_per_call=5, checkpoint_every=0, log_every=10)
    trainer = Trainer(gaussian_nll, SineTasks(), cfg)
    state = trainer.fit(make_model(), jax.random.key(1))
    assert trainer.trace_count == 1
    assert_same_params(full, state, exact=False)


def test_micro_batches_match_full_batch(runs):
    full = runs[0]
    trainer = Trainer(gaussian_nll, SineTasks(), small_config(micro_batches=2))
    assert_same_params(full, trainer.fit(make_model(), jax.random.key(1)), exact=False)


def test_damaged_checkpoint_is_rejected_and_previous_loads(trainer, runs, tmp_path):
    _, full_dir, _, _ = runs
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_dir, run)
    (run / "checkpoints" / ".tmp-step_00000030-1").mkdir()  # a crash mid-write leaves this
    older, newest = list_checkpoints(run)
    like = trainer.init(make_model(), jax.random.key(1))

    model_file = newest / "model.eqx"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="model.eqx has .* bytes but the manifest"):
        load_checkpoint(newest, like)
    model_file.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, flipped byte
    with pytest.raises(CheckpointError, match="SHA-256"):
        verify_checkpoint(newest)

    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert latest_valid_checkpoint(run) == older
    assert int(load_checkpoint(older, like).step) == 10
    with pytest.warns(UserWarning):
        model, cfg = load_run(run)  # falls back to step 10
    reference = load_checkpoint(older, like).model
    assert_same_params(reference, model)
    assert cfg.model.width == 8

    (older / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is unreadable"):
        verify_checkpoint(older)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no valid checkpoint"):
            latest_valid_checkpoint(run)


def test_load_run_returns_final_model(runs):
    full, full_dir, _, _ = runs
    model, cfg = load_run(full_dir)
    assert isinstance(model, PointwiseGaussian)
    assert_same_params(full, model)
    assert cfg.model._target_ == MODEL_CFG["_target_"]
    manifest = json.loads((list_checkpoints(full_dir)[-1] / "manifest.json").read_text())
    assert manifest["step"] == 20 and set(manifest["files"]) >= {"model.eqx", "train_state.eqx"}
    assert not [p for p in os.listdir(full_dir / "checkpoints") if p.startswith(".tmp")]


class Counter(eqx.Module):
    """The counter rises by exactly 1 per SGD(1.0) update; the loss turns NaN at count 5."""

    count: jax.Array

    def loss(self, batch, key):
        del key
        value = -self.count + 0.0 * jnp.mean(batch.y)
        return jnp.where(self.count > 4.5, jnp.nan, value), {}


def test_non_finite_loss_stops_with_step_and_keeps_checkpoints(tmp_path):
    cfg = small_config(steps=10, log_every=2, checkpoint_every=2)
    trainer = Trainer(lambda m, b, k: m.loss(b, k), SineTasks(), cfg, optimizer=optax.sgd(1.0))
    model = Counter(jnp.zeros(()))
    with pytest.raises(FloatingPointError, match="non-finite loss at step 6"):
        trainer.fit(model, jax.random.key(0), run_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    like = trainer.init(model, jax.random.key(0))
    state = load_checkpoint(latest_valid_checkpoint(tmp_path), like)
    assert int(state.step) == 4 and float(state.model.count) == 4.0


def test_batch_function_source_and_config_errors():
    def batch_fn(key):
        return jax.vmap(lambda k: SineTasks().sample_task(k, 16))(jax.random.split(key, 4))

    trainer = Trainer(gaussian_nll, batch_fn, small_config(steps=4, num_tasks=4, log_every=2))
    state = trainer.fit(make_model(), jax.random.key(0))
    assert int(state.step) == 4 and trainer.trace_count == 1
    state, metrics = trainer.step(state)  # the public single call, same compiled function
    assert int(state.step) == 5 and metrics["loss"].shape == (1,) and trainer.trace_count == 1

    with pytest.raises(ValueError, match=r"trainer.steps \(10\) must be a multiple of trainer."):
        TrainerConfig(steps=10, steps_per_call=3, log_every=3, checkpoint_every=0)
    with pytest.raises(ValueError, match=r"trainer.num_tasks .*micro_batches"):
        TrainerConfig(num_tasks=10, micro_batches=4)
    with pytest.raises(ValueError, match="trainer.optimizer must be one of"):
        TrainerConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"trainer.b2 must be in \[0, 1\)"):
        TrainerConfig(b2=1.0)
    with pytest.raises(ValueError, match="trainer.eps must be > 0"):
        TrainerConfig(eps=0.0)
    with pytest.raises(ValueError, match="unknown trainer config keys"):
        Trainer(gaussian_nll, SineTasks(), {"stepz": 3})
    with pytest.raises(TypeError, match="sample_task"):
        Trainer(gaussian_nll, 3, small_config())


def test_flax_nnx_module_trains_through_adapter(tmp_path):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(1, 16, rngs=rngs)
            self.out = nnx.Linear(16, 1, rngs=rngs)
            self.stats = nnx.BatchStat(jnp.ones(3))
            self.rngs = rngs  # typed PRNG keys in the non-trained state

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))[..., 0]

    def mse(model, batch, key):
        predictions = jax.vmap(model)(batch.x)
        return jnp.mean((predictions - batch.y) ** 2), {}

    model = from_nnx(Net(nnx.Rngs(0)))
    cfg = small_config(
        steps=30, lr=3e-2, log_every=10, checkpoint_every=0, optimizer="adamw", weight_decay=0.1
    )
    trainer = Trainer(mse, SineTasks(), cfg)
    state = trainer.fit(model, jax.random.key(0), run_dir=tmp_path)
    losses = [r["loss"] for r in trainer.history]
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(state.model.rest["stats"][...], jnp.ones(3))  # not trained
    trained = state.model.to_nnx()
    assert isinstance(trained, Net)
    loaded = load_checkpoint(list_checkpoints(tmp_path)[-1], trainer.init(model, jax.random.key(0)))
    assert_same_params(state, loaded)


def test_resuming_under_a_changed_config_names_the_changed_keys(tmp_path, monkeypatch):
    import probnet.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module.ckpt, "list_checkpoints", lambda run_dir: ["step_1"])
    (tmp_path / "config.yaml").write_text("seed: 0\ntrainer:\n  lr: 0.001\n  steps: 10\n")
    with pytest.warns(UserWarning) as caught:
        trainer_module._check_same_config(tmp_path, "seed: 5\ntrainer:\n  lr: 0.01\n  steps: 10\n")
    message = str(caught[0].message)
    assert "seed: 0 -> 5" in message and "trainer.lr: 0.001 -> 0.01" in message
    assert "steps" not in message and "has no effect" in message
    with warnings.catch_warnings():  # the same values, written in another order: no warning
        warnings.simplefilter("error")
        trainer_module._check_same_config(tmp_path, "trainer:\n  steps: 10\n  lr: 0.001\nseed: 0\n")


def test_records_without_a_rate_do_not_break_the_progress_bar(monkeypatch):
    """A record read before any timed step is done has no tasks_per_sec (which call is done
    first is up to the device); the progress bar then shows the loss alone (it raised
    KeyError)."""
    original = Trainer._drain

    def drain(self, *args, **kwargs):
        records = original(self, *args, **kwargs)
        for record in records:
            record.pop("tasks_per_sec", None)
        return records

    monkeypatch.setattr(Trainer, "_drain", drain)
    config = small_config(steps=10, steps_per_call=5, log_every=5, checkpoint_every=0)
    config.progress = True
    trainer = Trainer(gaussian_nll, SineTasks(), config)
    trainer.fit(make_model(), jax.random.key(0))
    assert [r["step"] for r in trainer.history] == [5, 10]
