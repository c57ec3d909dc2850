"""Covariance functions: `kernel(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`, composable by `+` and `*`."""

from probnet.kernels.base import AbstractKernel, Product, Scaled, Sum
from probnet.kernels.stationary import (
    RBF,
    AbstractParametrisedKernel,
    AbstractStationaryKernel,
    Linear,
    Matern12,
    Matern32,
    Matern52,
    Periodic,
)

__all__ = [
    "AbstractKernel",
    "AbstractParametrisedKernel",
    "AbstractStationaryKernel",
    "Linear",
    "Matern12",
    "Matern32",
    "Matern52",
    "Periodic",
    "Product",
    "RBF",
    "Scaled",
    "Sum",
]
