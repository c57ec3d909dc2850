"""Kernel protocol and composition (sums, products, scaling)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from probnet._checks import as_float_array, check_ndim, check_positive, is_traced


class AbstractKernel(eqx.Module):
    """A covariance function. `kernel(x1, x2)` maps `[N1, D]`, `[N2, D]` to the `[N1, N2]` Gram
    matrix; jit, vmap and grad work through it."""

    def __call__(self, x1: Float[Array, "N1 D"], x2: Float[Array, "N2 D"]) -> Float[Array, "N1 N2"]:
        check_ndim("x1", x1, 2, "[N1, D]")
        check_ndim("x2", x2, 2, "[N2, D]")
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(
                f"x1 and x2 must have the same number of features D, got x1 {x1.shape} "
                f"and x2 {x2.shape}"
            )
        self.check_features(x1.shape[1])
        return self.gram(x1, x2)

    @abc.abstractmethod
    def gram(self, x1: Float[Array, "N1 D"], x2: Float[Array, "N2 D"]) -> Float[Array, "N1 N2"]:
        """The Gram matrix, without input checks."""

    def diag(self, x: Float[Array, "N D"]) -> Float[Array, " N"]:
        """The diagonal k(x_i, x_i), shape `[N]`."""
        return jnp.diagonal(self.gram(x, x))

    def check_features(self, num_features: int) -> None:
        """Raise if the kernel's parameters do not fit `num_features` input dimensions."""

    def __add__(self, other: "AbstractKernel") -> "Sum":
        return Sum(self, other)

    def __mul__(self, other) -> "AbstractKernel":
        if isinstance(other, AbstractKernel):
            return Product(self, other)
        return Scaled(self, other)

    __rmul__ = __mul__


def _check_lengthscale_features(lengthscale, num_features: int, name: str = "lengthscale"):
    shape = jnp.shape(lengthscale)
    if shape not in ((), (num_features,)):
        raise ValueError(
            f"{name} must be a scalar (shared) or have shape [D] = [{num_features}] (ARD), "
            f"got shape {shape}"
        )


class Sum(AbstractKernel):
    """k1 + k2."""

    k1: AbstractKernel
    k2: AbstractKernel

    def gram(self, x1, x2):
        return self.k1.gram(x1, x2) + self.k2.gram(x1, x2)

    def diag(self, x):
        return self.k1.diag(x) + self.k2.diag(x)

    def check_features(self, num_features):
        self.k1.check_features(num_features)
        self.k2.check_features(num_features)


class Product(AbstractKernel):
    """k1 · k2 (elementwise)."""

    k1: AbstractKernel
    k2: AbstractKernel

    def gram(self, x1, x2):
        return self.k1.gram(x1, x2) * self.k2.gram(x1, x2)

    def diag(self, x):
        return self.k1.diag(x) * self.k2.diag(x)

    def check_features(self, num_features):
        self.k1.check_features(num_features)
        self.k2.check_features(num_features)


class Scaled(AbstractKernel):
    """scale · kernel, for a positive scalar `scale`."""

    kernel: AbstractKernel
    scale: Float[Array, ""] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        if jnp.ndim(self.scale) != 0:
            raise ValueError(f"scale must be a scalar, got shape {jnp.shape(self.scale)}")
        if not is_traced(self.scale):
            check_positive("scale", self.scale)

    def gram(self, x1, x2):
        return self.scale * self.kernel.gram(x1, x2)

    def diag(self, x):
        return self.scale * self.kernel.diag(x)

    def check_features(self, num_features):
        self.kernel.check_features(num_features)
