"""The prior-sampling pipeline: distributions over tasks, sampled on device, sharded over a mesh."""

import abc
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import check_count
from probnet.distributions import AbstractDistribution


class Task(eqx.Module):
    """A regression dataset (or a batch of them, tasks leading).

    `x`: inputs `[*tasks, points, features]`; `y`: targets `[*tasks, points]`.
    """

    x: Float[Array, "*tasks points features"]
    y: Float[Array, "*tasks points"]

    @property
    def num_points(self) -> int:
        return self.y.shape[-1]

    def context_mask(self, num_context) -> Bool[Array, "*tasks points"]:
        """Boolean mask that marks the first `num_context` points (scalar or `[*tasks]`) as
        context; the rest are targets. One compiled function serves every context size."""
        index = jnp.arange(self.num_points)
        return jnp.broadcast_to(index < jnp.asarray(num_context)[..., None], self.y.shape)


class AbstractPrior(eqx.Module):
    """A distribution over tasks. Subclasses are final and implement `sample_task`."""

    num_features: eqx.AbstractVar[int]

    @abc.abstractmethod
    def sample_task(self, key: PRNGKeyArray, num_points: int) -> Task:
        """One task: inputs `[num_points, num_features]`, targets `[num_points]`. Pure."""

    def sample_batch(self, keys: PRNGKeyArray, num_points: int) -> Task:
        """Tasks for keys `[T]`: task `i` equals `sample_task(keys[i], num_points)`. Pure; for
        use inside compiled code. Priors override it where whole-batch operations are faster."""
        return jax.vmap(lambda k: self.sample_task(k, num_points))(keys)

    def sample(
        self,
        key: PRNGKeyArray,
        num_tasks: int,
        num_points: int,
        mesh: Mesh | None = None,
        axis: str = "data",
    ) -> Task:
        """`num_tasks` independent tasks stacked along a leading axis, jit-compiled once per shape.

        Task `i` is drawn from `jax.random.split(key, num_tasks)[i]`, whether or not a `mesh` is
        given. With a `mesh`, the tasks are sharded over its `axis`: each device draws its own
        slice from its own keys, on device, with no host round-trip.
        """
        check_count("num_tasks", num_tasks)
        check_count("num_points", num_points)
        if mesh is not None:
            devices = mesh.shape[axis]
            if num_tasks % devices:
                raise ValueError(
                    f"num_tasks must be divisible by the {devices} devices of mesh axis "
                    f"{axis!r}, got {num_tasks}"
                )
        return _sample_batch(self, key, num_tasks, num_points, mesh, axis)

    @property
    def has_exact_predictive(self) -> bool:
        """Whether `predictive` gives the exact posterior predictive of this prior."""
        return False

    def predictive(
        self,
        x_context: Float[Array, "N D"],
        y_context: Float[Array, " N"],
        x_target: Float[Array, "M D"],
        context_mask: Bool[Array, " N"] | None = None,
    ) -> AbstractDistribution:
        """The exact posterior predictive p(y* | x*, context) at each target, batch shape `[M]`."""
        raise NotImplementedError(f"{type(self).__name__} has no exact posterior predictive")


def sample_tasks(prior: AbstractPrior, keys: PRNGKeyArray, num_points: int) -> Task:
    """Tasks for a batch of keys `[T]` (`prior.sample_batch`); for use inside compiled code."""
    return prior.sample_batch(keys, num_points)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _sample_batch(prior, key, num_tasks, num_points, mesh, axis):
    keys = jax.random.split(key, num_tasks)
    if mesh is None:
        return sample_tasks(prior, keys, num_points)
    keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P(axis)))
    draw = functools.partial(sample_tasks, prior, num_points=num_points)
    shard = jax.shard_map(draw, mesh=mesh, in_specs=P(axis), out_specs=P(axis), check_vma=False)
    return shard(keys)
