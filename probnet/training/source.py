"""Batch sources: where the tasks of a training step come from, drawn inside compiled code.

A source is either

- a *task sampler*: anything with `sample_task(key, num_points) -> task` (every
  `probnet.priors.AbstractPrior`). Task `i` of a batch is drawn from `split(key, num_tasks)[i]`,
  and each device draws its own slice of the tasks from its own keys (`jax.shard_map`), so a
  batch is the same on one device or many; or
- a *batch function* `(key) -> batch`: pure and jittable, every leaf with the tasks leading.
  Its output is constrained to be sharded over the mesh's data axis; the compiler partitions the
  sampling.
"""

from typing import Any

import equinox as eqx
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PRNGKeyArray, PyTree

from probnet.training.sharding import DATA_AXIS

BatchSource = Any  # a task sampler or a callable (key) -> batch


def is_task_sampler(source: BatchSource) -> bool:
    return callable(getattr(source, "sample_task", None))


def check_source(source: BatchSource) -> None:
    if not (is_task_sampler(source) or callable(source)):
        raise TypeError(
            "source must have a sample_task(key, num_points) method (a probnet prior) or be a "
            f"callable (key) -> batch, got {type(source).__name__}"
        )


def draw_tasks(
    source: BatchSource,
    keys: PRNGKeyArray,
    num_points: int,
    mesh: Mesh,
    axis: str = DATA_AXIS,
) -> PyTree:
    """Tasks for keys `[T]`, stacked; device `d` of `mesh` draws the tasks of its key slice."""
    keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P(axis)))
    dynamic, static = eqx.partition(source, eqx.is_array)

    def local(dynamic, keys):
        sampler = eqx.combine(dynamic, static)
        return jax.vmap(lambda k: sampler.sample_task(k, num_points))(keys)

    # check_vma=False: a task may hold key-independent leaves (e.g. a fixed input grid).
    shard = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False
    )
    return shard(dynamic, keys)


def draw_batch(
    source: BatchSource,
    key: PRNGKeyArray,
    num_tasks: int,
    num_points: int,
    mesh: Mesh,
    axis: str = DATA_AXIS,
) -> PyTree:
    """A batch of `num_tasks` tasks from `key`, sharded over `mesh` (use inside jit)."""
    if is_task_sampler(source):
        return draw_tasks(source, jax.random.split(key, num_tasks), num_points, mesh, axis)
    batch = source(key)
    return constrain_batch(batch, mesh, axis)


def constrain_batch(batch: PyTree, mesh: Mesh, axis: str = DATA_AXIS) -> PyTree:
    """Shard every array leaf of `batch` along its leading (tasks) axis."""
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, sharding) if eqx.is_array(x) else x, batch
    )
