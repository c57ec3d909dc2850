"""The predictive-distribution protocol every model and reference shares."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractDistribution(eqx.Module):
    """A batch of independent univariate distributions with batch shape `batch_shape`.

    Evaluation code only uses this protocol, so any model can be compared with any reference.
    """

    @property
    @abc.abstractmethod
    def batch_shape(self) -> tuple[int, ...]:
        """Shape of the batch of distributions."""

    @abc.abstractmethod
    def log_prob(self, value: Float[Array, "..."]) -> Float[Array, "..."]:
        """Log density at `value` (broadcast against `batch_shape`), in nats."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()) -> Float[Array, "..."]:
        """Draws of shape `shape + batch_shape`."""

    @property
    @abc.abstractmethod
    def mean(self) -> Float[Array, "..."]:
        """Mean, shape `batch_shape`."""

    @property
    @abc.abstractmethod
    def variance(self) -> Float[Array, "..."]:
        """Variance, shape `batch_shape`."""

    def cdf(self, value: Float[Array, "..."]) -> Float[Array, "..."]:
        """Cumulative distribution function at `value`."""
        raise NotImplementedError(f"{type(self).__name__} has no cdf")

    def quantile(self, q: Float[Array, "..."]) -> Float[Array, "..."]:
        """Inverse of `cdf` for probabilities `q` in (0, 1)."""
        raise NotImplementedError(f"{type(self).__name__} has no quantile")

    @property
    def stddev(self) -> Float[Array, "..."]:
        """Standard deviation, shape `batch_shape`."""
        return self.variance**0.5
