"""The PFN training loss: bar-distribution NLL of held-out targets given a random context."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probnet._checks import check_count
from probnet.pfn.model import PFN
from probnet.priors import Task


def pfn_loss(
    model: PFN, batch: Task, key: PRNGKeyArray, min_context: int = 0
) -> tuple[Float[Array, ""], dict]:
    """Mean NLL (nats per target point) of a batch `[tasks, points]`.

    One context size k ~ U{min_context, ..., points - 1} is drawn per batch (as in the PFN
    paper): the first k points of every task are context, the rest are targets.
    """
    num_points = batch.y.shape[-1]
    check_count("min_context", min_context, 0)
    if min_context >= num_points:
        raise ValueError(
            f"min_context must be < the number of points per task ({num_points}) so that "
            f"targets remain, got {min_context}"
        )
    k = jax.random.randint(key, (), min_context, num_points)
    mask = jnp.arange(num_points) < k
    logits = model.batch_logits(batch.x, batch.y, mask)
    log_prob = model.distribution(logits).log_prob(batch.y)
    targets = jnp.broadcast_to(~mask, log_prob.shape)
    nll = -jnp.sum(jnp.where(targets, log_prob, 0.0)) / jnp.sum(targets)
    return nll, {"nll": nll, "num_context": k}
