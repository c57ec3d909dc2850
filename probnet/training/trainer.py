"""The training engine: prior → loss → optax update, compiled once, data-parallel over a mesh."""

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from probnet.training import checkpoint as ckpt
from probnet.training.config import TrainerConfig, to_trainer_config
from probnet.training.logging import (
    MetricsLogger,
    plot_loss_curve,
    progress_bar,
    truncate_metrics,
)
from probnet.training.optim import make_optimizer, make_schedule
from probnet.training.sharding import (
    DATA_AXIS,
    is_main_process,
    make_mesh,
    replicate,
    sync,
    to_host,
)
from probnet.training.source import (
    BatchSource,
    check_source,
    draw_batch,
    draw_tasks,
    is_task_sampler,
)
from probnet.training.state import TrainState

LossFn = Callable[[Any, PyTree, PRNGKeyArray], tuple[Float[Array, ""], dict[str, Array]]]
EvalFn = Callable[[Any, int], dict[str, float]]


class Trainer:
    """Trains any Equinox module on tasks drawn, on device, inside the compiled step.

    **Arguments:**

    - `loss`: `loss(model, batch, key) -> (scalar, metrics)`, metrics a dict of scalars. The
      batch holds `config.num_tasks / config.micro_batches` tasks; for gradient accumulation and
      multi-device training to be exact, the loss should be a mean over tasks.
    - `source`: a prior (anything with `sample_task(key, num_points)`) or a jittable
      `(key) -> batch`; see `probnet.training.source`.
    - `config`: a `TrainerConfig` (or a dict / DictConfig of its fields).
    - `optimizer`: an optax transformation; default `make_optimizer(config)`.
    - `mesh`: a mesh with axis "data"; default `make_mesh(config.num_devices)`.
    - `eval_fn`: `(model, step) -> dict[str, float]`, called every `config.eval_every` steps
      and at the end; its results are logged as `eval/<name>`.
    - `filter_spec`: which leaves of the model are trained (an Equinox filter); default the
      model's `trainable_mask()` if it has one, else every inexact array.

    One compiled call runs `config.steps_per_call` updates. Update `s` draws its tasks from
    `fold_in(key, s)`, one key per task, sharded over the mesh; parameters stay replicated and the
    compiler all-reduces the gradients. Results therefore do not depend on the device count, the
    micro-batch count (for a mean loss that ignores its key) or on where a run was resumed.
    """

    def __init__(
        self,
        loss: LossFn,
        source: BatchSource,
        config: TrainerConfig | dict,
        *,
        optimizer: optax.GradientTransformation | None = None,
        mesh: Mesh | None = None,
        eval_fn: EvalFn | None = None,
        filter_spec: Any = None,
    ):
        if not callable(loss):
            raise TypeError(f"loss must be callable (model, batch, key), got {type(loss)}")
        check_source(source)
        self.config = cfg = to_trainer_config(config)
        self.loss = loss
        self.source = source
        self.optimizer = make_optimizer(cfg) if optimizer is None else optimizer
        self.schedule = make_schedule(cfg) if optimizer is None else None
        self.mesh = make_mesh(cfg.num_devices) if mesh is None else mesh
        if DATA_AXIS not in self.mesh.shape:
            raise ValueError(f"mesh must have an axis named {DATA_AXIS!r}, got {self.mesh.shape}")
        devices = self.mesh.shape[DATA_AXIS]
        per_micro = cfg.num_tasks // cfg.micro_batches
        if per_micro % devices:
            raise ValueError(
                f"trainer.num_tasks / trainer.micro_batches = {cfg.num_tasks} / "
                f"{cfg.micro_batches} = {per_micro} tasks per micro-batch must be divisible by "
                f"the {devices} devices of the mesh"
            )
        self.eval_fn = eval_fn
        self.filter_spec = filter_spec
        self.trace_count = 0  # times the step was traced: stays 1 over a run
        self.history: list[dict] = []
        source_dynamic = replicate(eqx.filter(source, eqx.is_array), self.mesh)
        self._source_leaves, self._source_treedef = jax.tree.flatten(source_dynamic)
        self._source_static = eqx.filter(source, eqx.is_array, inverse=True)
        self._static = self._treedef = self._compiled = None
        self._metric_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------ state and step

    def init(self, model: PyTree, key: PRNGKeyArray) -> TrainState:
        """A fresh training state for `model`, replicated over the mesh (copies; `model` is not
        donated). `key` is the run's base key (typed or raw)."""
        params = eqx.filter(model, self._spec(model))
        if not jax.tree.leaves(params):
            raise ValueError("model has no trainable arrays (check filter_spec)")
        key = jnp.asarray(key)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        state = TrainState(
            model=model,
            opt_state=self.optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            key=key,
        )
        return replicate(state, self.mesh)

    def step(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """Run `config.steps_per_call` updates; metrics have shape `[steps_per_call]`.

        The state's buffers are donated: use the returned state, not the argument.
        """
        dynamic, static = eqx.partition(state, eqx.is_array)
        leaves, treedef = jax.tree.flatten(dynamic)
        leaves, packed = self._compiled_for(static, treedef)(leaves, self._source_leaves)
        metrics = {name: packed[:, i] for i, name in enumerate(self._metric_names)}
        return eqx.combine(jax.tree.unflatten(treedef, leaves), static), metrics

    def _spec(self, model):
        if self.filter_spec is not None:
            return self.filter_spec
        if callable(getattr(model, "trainable_mask", None)):
            return model.trainable_mask()
        return eqx.is_inexact_array

    def _compiled_for(self, static, treedef):
        """The jitted step for this state structure, on flat leaf lists: flattening a list is
        far cheaper per call than flattening nested Equinox modules."""
        same = static is self._static or static == self._static
        if self._compiled is None or treedef != self._treedef or not same:
            chunk = self._make_chunk(static)
            source_treedef = self._source_treedef

            def flat_chunk(leaves, source_leaves):
                dynamic = jax.tree.unflatten(treedef, leaves)
                source_dynamic = jax.tree.unflatten(source_treedef, source_leaves)
                dynamic, packed = chunk(dynamic, source_dynamic)
                return jax.tree.leaves(dynamic), packed

            self._static, self._treedef = static, treedef
            self._compiled = jax.jit(flat_chunk, donate_argnums=0)
        return self._compiled

    def _make_chunk(self, static_state):
        cfg, mesh, loss_fn = self.config, self.mesh, self.loss
        micro, per_micro = cfg.micro_batches, cfg.num_tasks // cfg.micro_batches
        per_task = is_task_sampler(self.source)
        replicated = NamedSharding(mesh, P())

        def chunk(dynamic, source_dynamic):
            self.trace_count += 1
            source = eqx.combine(source_dynamic, self._source_static)

            def draw(key_or_keys):
                if per_task:
                    return draw_tasks(source, key_or_keys, cfg.num_points, mesh)
                return draw_batch(source, key_or_keys, per_micro, cfg.num_points, mesh)

            def update(dynamic, _):
                state = eqx.combine(dynamic, static_state)
                step_key = jax.random.fold_in(state.prng_key, state.step)
                sample_key, loss_key = jax.random.split(step_key)
                if per_task:
                    draw_keys = jax.random.split(sample_key, cfg.num_tasks)
                    draw_keys = draw_keys.reshape(micro, per_micro)
                else:
                    draw_keys = jax.random.split(sample_key, micro)
                params, frozen = eqx.partition(state.model, self._spec(state.model))

                def grads_on(keys, key):
                    batch = draw(keys)

                    def objective(p):
                        return loss_fn(eqx.combine(p, frozen), batch, key)

                    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
                    return loss, metrics, grads

                if micro == 1:
                    loss, metrics, grads = grads_on(draw_keys[0], loss_key)
                else:
                    loss_keys = jax.random.split(loss_key, micro)
                    zeros = jax.tree.map(
                        lambda s: jnp.zeros(s.shape, s.dtype),
                        jax.eval_shape(grads_on, draw_keys[0], loss_keys[0]),
                    )

                    def accumulate(total, inputs):
                        out = grads_on(*inputs)
                        return jax.tree.map(jnp.add, total, out), None

                    total, _ = jax.lax.scan(accumulate, zeros, (draw_keys, loss_keys))
                    loss, metrics, grads = jax.tree.map(lambda t: t / micro, total)
                updates, opt_state = self.optimizer.update(grads, state.opt_state, params)
                params = eqx.apply_updates(params, updates)
                new_state = TrainState(
                    model=eqx.combine(params, frozen),
                    opt_state=opt_state,
                    step=state.step + 1,
                    key=state.key,
                )
                out = dict(metrics)
                out["loss"] = loss
                out["grad_norm"] = optax.tree.norm(grads)
                if self.schedule is not None:
                    out["lr"] = self.schedule(state.step)
                return eqx.filter(new_state, eqx.is_array), out

            if cfg.steps_per_call == 1:
                dynamic, out = update(dynamic, None)
                out = jax.tree.map(lambda x: x[None], out)
            else:
                dynamic, out = jax.lax.scan(update, dynamic, None, length=cfg.steps_per_call)
            # One output buffer for all metrics: fewer transfers when the loop reads them.
            for name, value in out.items():
                if jnp.shape(value) != (cfg.steps_per_call,):
                    raise ValueError(
                        f"loss metrics must be scalars; {name!r} has shape {jnp.shape(value)[1:]}"
                    )
            self._metric_names = tuple(out)
            dtype = jnp.result_type(float)
            packed = jnp.stack([jnp.asarray(v, dtype).reshape(-1) for v in out.values()], 1)
            return jax.lax.with_sharding_constraint(dynamic, replicated), packed

        return chunk

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        model_or_state: PyTree | TrainState,
        key: PRNGKeyArray | None = None,
        *,
        run_dir: str | Path | None = None,
        config: Any = None,
    ) -> TrainState:
        """Train until `config.steps` updates; return the final state.

        With a `run_dir`: resumes from its newest valid checkpoint (if `config.resume`), writes
        checkpoints every `checkpoint_every` steps and at the end, appends metrics to
        `metrics.jsonl`, and saves `loss_curve.png`. `config` (a dict, DictConfig or YAML
        string: the resolved experiment config) is saved as `config.yaml` and in each checkpoint.
        A non-finite loss or gradient raises `FloatingPointError` naming the step; checkpoints
        are only written after the losses up to them were checked.
        """
        cfg = self.config
        if isinstance(model_or_state, TrainState):
            state = replicate(model_or_state, self.mesh)
        else:
            if key is None:
                raise ValueError("fit needs a key when given a model (or pass a TrainState)")
            state = self.init(model_or_state, key)
        main = is_main_process()
        config_yaml = _to_yaml(config)
        if run_dir is not None:
            run_dir = Path(run_dir)
            if main:
                run_dir.mkdir(parents=True, exist_ok=True)
            if cfg.resume:
                found = ckpt.latest_valid_checkpoint(run_dir)
                if found is not None:
                    state = replicate(ckpt.load_checkpoint(found, state), self.mesh)
            elif ckpt.list_checkpoints(run_dir):
                raise FileExistsError(
                    f"{run_dir} already holds checkpoints; set trainer.resume=true to continue "
                    "that run, or train into a new folder"
                )
            if config_yaml is not None and main:
                _check_same_config(run_dir, config_yaml)
                (run_dir / ckpt.CONFIG_FILE).write_text(config_yaml)
        start = int(to_host(state.step))
        if jax.process_count() > 1:
            multihost_utils.assert_equal(
                np.int32(start),
                "all processes must start from the same step; is run_dir on "
                "a filesystem every host can read?",
            )
        if run_dir is not None and main:
            truncate_metrics(run_dir, start)  # drop lines logged after the resumed checkpoint
        if start > cfg.steps:
            raise ValueError(f"the state is at step {start}, past trainer.steps={cfg.steps}")
        if start % cfg.steps_per_call:
            raise ValueError(
                f"the state is at step {start}, not a multiple of trainer.steps_per_call"
            )

        dynamic, static = eqx.partition(state, eqx.is_array)
        leaves, treedef = jax.tree.flatten(dynamic)
        compiled = self._compiled_for(static, treedef)
        logger = MetricsLogger(run_dir, enabled=main)
        self.history = logger.history
        bar = progress_bar(cfg.steps, start, cfg.progress and main)
        # Metrics are read one logging interval late, so that logging never stalls the device
        # pipeline; checkpoints, evaluations and the end read (and check) everything first.
        intervals: list[tuple[int, list]] = []  # (last step, packed metrics per call)
        current: list = []
        clock = {"step": start, "time": time.perf_counter()}
        step = start
        try:
            while step < cfg.steps:
                leaves, packed = compiled(leaves, self._source_leaves)
                if step == start and cfg.steps - start > cfg.steps_per_call:
                    # the first call compiles: throughput is timed from its end (one wait, once;
                    # a run of a single call is timed with its compilation)
                    jax.block_until_ready(packed)
                    clock["step"], clock["time"] = start + cfg.steps_per_call, time.perf_counter()
                current.append(packed)
                step += cfg.steps_per_call
                bar.update(cfg.steps_per_call)
                final = step == cfg.steps
                do_log = step % cfg.log_every == 0 or final
                do_ckpt = run_dir is not None and (
                    final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                )
                do_eval = self.eval_fn is not None and (
                    (cfg.eval_every and step % cfg.eval_every == 0) or final
                )
                if not (do_log or do_ckpt or do_eval):
                    continue
                intervals.append((step, current))
                current = []
                synced = final or do_ckpt or do_eval
                records = self._drain(intervals, clock, keep_last=not synced)
                if do_eval:
                    state = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
                    evals = self.eval_fn(state.model, step)
                    records[-1].update({f"eval/{k}": float(v) for k, v in evals.items()})
                for record in records:
                    logger.log(record)
                if records:
                    last = records[-1]
                    postfix = {"loss": f"{last['loss']:.4g}"}
                    if "tasks_per_sec" in last:  # absent before any timed step is done
                        postfix["tasks_s"] = f"{last['tasks_per_sec']:.4g}"
                    bar.set_postfix(postfix, refresh=False)
                if do_ckpt:
                    if main:
                        ckpt.save_checkpoint(
                            run_dir,
                            eqx.combine(jax.tree.unflatten(treedef, leaves), static),
                            config_yaml=config_yaml,
                            keep=cfg.keep_checkpoints,
                        )
                    sync(f"checkpoint-{step}")
        finally:
            bar.close()
        if run_dir is not None and cfg.plot and main and logger.history:
            plot_loss_curve(run_dir)
        return eqx.combine(jax.tree.unflatten(treedef, leaves), static)

    def _drain(self, intervals: list, clock: dict, keep_last: bool) -> list[dict]:
        """Records of the finished intervals (all, or all but the newest); syncs with the
        device and raises `FloatingPointError` at the first non-finite loss or gradient.

        Throughput is measured between syncs, so intervals read together share one value. The
        device has finished every interval read, and also those calls of the newest one, kept back,
        whose output is already there (on a GPU a read returns only once the work queued
        before it is nearly done): counting only the intervals read would credit those steps
        to the next measurement and doubled the final record's rate. Records read before any
        step after the (untimed, compiling) first call is done have no `tasks_per_sec`.
        """
        ready = intervals[:-1] if keep_last else list(intervals)
        del intervals[: len(ready)]
        records, spc = [], self.config.steps_per_call
        for last_step, packed in ready:
            first = last_step - len(packed) * spc
            records.append({"step": last_step, **_summarise(packed, self._metric_names, first)})
        if records:
            done = records[-1]["step"]
            if intervals:  # calls finish in order: count those of the newest already done
                last_step, packed = intervals[-1]
                pending = len(packed) - sum(bool(p.is_ready()) for p in packed)
                done = last_step - pending * spc
            if done > clock["step"]:  # else only the untimed first call is done: no rate yet
                now = time.perf_counter()
                rate = (done - clock["step"]) * self.config.num_tasks / (now - clock["time"])
                for record in records:
                    record["tasks_per_sec"] = rate
                clock["step"], clock["time"] = done, now
        return records


def _summarise(pending: list, names: tuple[str, ...], first_step: int) -> dict:
    """Means over the interval of the per-step metrics; raise at the first non-finite loss."""
    table = np.concatenate([to_host(p) for p in pending])  # [steps, metrics]
    per_step = dict(zip(names, table.T, strict=True))
    for name in ("loss", "grad_norm"):
        bad = np.flatnonzero(~np.isfinite(per_step[name]))
        if bad.size:
            step = first_step + 1 + int(bad[0])
            raise FloatingPointError(f"non-finite {name.replace('_', ' ')} at step {step}")
    record = {k: float(np.mean(v)) for k, v in per_step.items() if k != "lr"}
    if "lr" in per_step:
        record["lr"] = float(per_step["lr"][-1])
    return record


def _to_yaml(config) -> str | None:
    if config is None or isinstance(config, str):
        return config
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config), resolve=True)


def _check_same_config(run_dir: Path, config_yaml: str) -> None:
    """Warn, naming the keys, when a run resumes under a config other than its saved one."""
    path = run_dir / ckpt.CONFIG_FILE
    if not (ckpt.list_checkpoints(run_dir) and path.is_file()):
        return
    saved = path.read_text()
    if saved == config_yaml:
        return
    from omegaconf import OmegaConf

    def flat(text):
        return _flatten(OmegaConf.to_container(OmegaConf.create(text)) or {})

    old, new = flat(saved), flat(config_yaml)
    absent = "<absent>"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, absent) != new.get(k, absent))
    if not changed:  # the same values written differently
        return
    listed = "; ".join(f"{k}: {old.get(k, absent)} -> {new.get(k, absent)}" for k in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    warnings.warn(
        f"resuming {run_dir} with a config that differs from its saved config.yaml ({listed}"
        f"{more}): training continues from the checkpoint (with its random key, so a changed "
        "seed has no effect) and config.yaml is replaced by the new config",
        stacklevel=3,
    )


def _flatten(tree, prefix: str = "") -> dict:
    """Nested dicts/lists -> {"a.b.0": leaf}."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    flat = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat
