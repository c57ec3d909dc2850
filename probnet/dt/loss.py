"""Training objective of the Distribution Transformer."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from probnet.priors.gmm import GMMTask

__all__ = ["dt_loss"]


def dt_loss(
    model, batch: GMMTask, key: PRNGKeyArray | None = None, prior_weight: float = 1.0
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Mean over tasks of −log q(θ | y) − prior_weight · log q₀(θ).

    q(· | y) is the predicted posterior and q₀ the network's output with zero observations (the
    reconstructed prior); θ is the task's true parameter, drawn from its prior. In expectation
    the first term is KL(exact posterior ‖ q) plus a constant, so it is minimised by the exact
    posterior. Metrics: `posterior_nll`, `prior_nll`.
    """
    del key

    def one(task):
        posterior = model(task.prior, task.y, task.mask)
        recon = model.reconstruct(task.prior)
        return -posterior.log_prob(task.theta), -recon.log_prob(task.theta)

    post_nll, prior_nll = jax.vmap(one)(batch)
    post_nll, prior_nll = jnp.mean(post_nll), jnp.mean(prior_nll)
    loss = post_nll + prior_weight * prior_nll
    return loss, {"posterior_nll": post_nll, "prior_nll": prior_nll}
