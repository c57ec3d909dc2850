"""Data parallelism: a 1-D device mesh with axis "data", replicated parameters, sharded tasks.

Single host: `make_mesh()` spans `jax.devices()`. Multi-host (a TPU pod slice, several GPU
nodes): call `initialize_distributed()` first, in every process, before any other JAX call
(`trainer.distributed=true` does this); `jax.devices()` then lists the devices of all hosts and
the same mesh spans them. Every process runs the same program on the same config and seed;
parameters are replicated, each device draws its own share of the tasks inside the compiled
step, and XLA all-reduces the gradients. Only process 0 writes checkpoints and metrics.

TPU pod slice, e.g. a v4-32 (4 hosts), run on every worker at once::

    gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=all --command \
      "cd probnet && python experiments/train.py experiment=mlp_gp trainer.distributed=true \
       trainer.num_tasks=1024 hydra.run.dir=/mnt/shared/runs/mlp_gp"

`trainer.num_tasks` is the global batch and must divide evenly over all chips (times
`trainer.micro_batches`). Give `hydra.run.dir` explicitly, on storage every host can read
(Filestore/NFS, or a gcsfuse mount), so all hosts agree on the folder and can resume from it.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

DATA_AXIS = "data"

_DISTRIBUTED = False


def initialize_distributed(**kwargs) -> None:
    """`jax.distributed.initialize(**kwargs)`, once per process.

    On Cloud TPU, SLURM and Open MPI the coordinator and process ids are detected; elsewhere pass
    `coordinator_address`, `num_processes` and `process_id` (or set `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`).
    """
    global _DISTRIBUTED
    if not _DISTRIBUTED:
        jax.distributed.initialize(**kwargs)
        _DISTRIBUTED = True


def make_mesh(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (default: all, on all hosts)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(
                f"num_devices must be between 1 and the {len(devices)} available devices, "
                f"got {num_devices}"
            )
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """Leading axis split over the mesh's data axis."""
    return NamedSharding(mesh, P(axis))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Fresh copies of the array leaves of `tree`, replicated on every device of `mesh`.

    Copies (never aliases) so that donating the result inside the training step leaves the
    caller's arrays valid. Works across hosts when every process passes the same values.
    """
    sharding = replicated(mesh)

    def put(x):
        if not isinstance(x, jax.Array | np.ndarray):
            return x
        if jax.process_count() == 1:
            # An explicit copy first: device_put(may_alias=False) can still alias device 0's
            # shard of a multi-device sharding, and the step donates its input.
            return jax.device_put(x.copy() if isinstance(x, jax.Array) else x, sharding)
        host = to_host(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host(x):
    """A NumPy copy of a (replicated) array, also when it spans devices of other hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("to_host needs a fully replicated array on a multi-host mesh")
        x = x.addressable_data(0)
    return np.asarray(x)


def is_main_process() -> bool:
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across hosts (no-op on one host)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
