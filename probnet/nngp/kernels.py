"""NNGP kernels of deep networks by closed-form layer recursions.

A network is a sequence of layers, `serial(Dense(1.5, 0.1), ReLU(), Dense(1.5, 0.1))`, and its
infinite-width limit is a Gaussian process whose kernel follows from the input covariance
`K⁰ = x·x′/d` one layer at a time:

- `Dense(W_std, b_std)`:  K ← W_std²·K + b_std² (weights N(0, W_std²/fan_in), biases N(0, b_std²));
- `ReLU()` (arc-cosine):  K′ = √(K₁₁K₂₂)·(sin θ + (π − θ) cos θ)/(2π), θ = arccos(K₁₂/√(K₁₁K₂₂)),
  with diagonal K/2;
- `Erf()`:  K′ = (2/π)·arcsin(2K₁₂/√((1 + 2K₁₁)(1 + 2K₂₂))).

The state that flows through the layers is `NNGPState(k12, k11, k22)`: the cross covariance
`[N1, N2, *S]` and the two diagonals `[N1, *S]`, `[N2, *S]` (`S` the spatial shape of image
inputs, empty for vectors). Convolutions keep a spatial shape:

- `Conv(W_std, b_std, size)`: a `size × size` convolution, stride 1, zero ("same") padding,
  weights N(0, W_std²/(size²·channels)): K[p] ← W_std²·mean_{δ in window} K[p + δ] + b_std²;
- `Flatten()`: the readout of the flattened feature map, K ← mean_p K[p] (a following `Dense`
  supplies W_std² and b_std²).

With a flatten readout only same-position covariances K[p, p] are ever needed (the convolution
couples K[p + δ, p′ + δ] to K[p, p′], so p = p′ stays p = p′), which keeps the cost at
O(N1·N2·H·W) per layer. `serial(...)` returns an `NNGPKernel`, an `AbstractKernel` that works
with `probnet.gp` and composes with `+` and `*` like every other kernel.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probnet._checks import as_float_array, check_positive, is_traced
from probnet.kernels import AbstractKernel

__all__ = [
    "AbstractLayer",
    "Conv",
    "Dense",
    "Erf",
    "Flatten",
    "NNGPKernel",
    "NNGPState",
    "ReLU",
    "serial",
]


class NNGPState(eqx.Module):
    """Covariances after a layer: cross `k12` `[N1, N2, *S]` (None when only diagonals are
    propagated) and diagonals `k11` `[N1, *S]`, `k22` `[N2, *S]` (None in diagonal mode)."""

    k12: Float[Array, "N1 N2 *S"] | None
    k11: Float[Array, " N1 *S"]
    k22: Float[Array, " N2 *S"] | None

    @property
    def spatial_ndim(self) -> int:
        return self.k11.ndim - 1


def _check_std(name: str, value, allow_zero: bool):
    if is_traced(value):
        return
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    if allow_zero:
        if not (jnp.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    else:
        check_positive(name, value)


class AbstractLayer(eqx.Module):
    """One layer of an NNGP kernel: maps an `NNGPState` to the next."""

    @abc.abstractmethod
    def __call__(self, state: NNGPState) -> NNGPState:
        """The covariances after this layer."""

    def output_spatial_shape(self, spatial_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial shape after the layer (raises if the layer does not accept the input)."""
        return spatial_shape

    def num_finite_parameters(self, input_shape: tuple[int, ...], width: int) -> int:
        """Number of parameters of the finite layer (see `init_finite`)."""
        return 0

    def finite_output_shape(self, input_shape: tuple[int, ...], width: int) -> tuple[int, ...]:
        """Output shape of the finite layer for an input of shape `input_shape`."""
        return input_shape

    @abc.abstractmethod
    def init_finite(self, noise, input_shape: tuple[int, ...], width: int):
        """A finite-width Equinox layer of this architecture for an input of shape
        `input_shape` (`[*S, channels]`), its parameters made from `noise`, a flat array of
        `num_finite_parameters(...)` standard normals; returns `(layer, output_shape)`.
        `width` is the number of output units or channels (ignored by parameter-free layers)."""

    @property
    def has_parameters(self) -> bool:
        return False


class AbstractPointwise(AbstractLayer):
    """A layer acting on each spatial position separately: `k12′ = cross(k12, k11, k22)` and
    each diagonal `k′ = diagonal(k)`."""

    @abc.abstractmethod
    def cross(self, k12, k11, k22):
        """New cross covariance from the old cross and (broadcast) diagonal covariances."""

    @abc.abstractmethod
    def diagonal(self, k):
        """New variance from the old variance."""

    def __call__(self, state: NNGPState) -> NNGPState:
        k11 = self.diagonal(state.k11)
        if state.k12 is None:
            return NNGPState(None, k11, None)
        k12 = self.cross(state.k12, state.k11[:, None], state.k22[None, :])
        return NNGPState(k12, k11, self.diagonal(state.k22))


class Dense(AbstractPointwise):
    """Fully connected layer: K ← W_std²·K + b_std² (acts on the channel axis of images, i.e. a
    1×1 convolution). `W_std` > 0, `b_std` ≥ 0."""

    W_std: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    b_std: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.0)

    def __check_init__(self):
        _check_std("W_std", self.W_std, allow_zero=False)
        _check_std("b_std", self.b_std, allow_zero=True)

    def cross(self, k12, k11, k22):
        return self.W_std**2 * k12 + self.b_std**2

    def diagonal(self, k):
        return self.W_std**2 * k + self.b_std**2

    @property
    def has_parameters(self) -> bool:
        return True

    def num_finite_parameters(self, input_shape, width):
        return (input_shape[-1] + 1) * width

    def finite_output_shape(self, input_shape, width):
        return (*input_shape[:-1], width)

    def init_finite(self, noise, input_shape, width):
        fan_in = input_shape[-1]
        weight = noise[: fan_in * width].reshape(fan_in, width) * self.W_std / math.sqrt(fan_in)
        bias = noise[fan_in * width :] * self.b_std
        return FiniteDense(weight, bias), (*input_shape[:-1], width)


def _asin_ratio_coefficients(degree: int = 14) -> tuple[float, ...]:
    """Chebyshev coefficients of g(t) = asin(√t)/√t on t ∈ [0, 1/4] (x = 8t − 1 ∈ [−1, 1]).

    g is analytic on a Bernstein ellipse of radius ≈ 13.9 around the interval (nearest
    singularity t = 1), so degree 14 is accurate to a few 1e-15 (relative)."""

    def g(x):
        t = np.maximum(0.125 * (x + 1), 1e-300)
        return np.arcsin(np.sqrt(t)) / np.sqrt(t)

    return tuple(float(c) for c in np.polynomial.chebyshev.chebinterpolate(g, degree))


_ASIN_RATIO = _asin_ratio_coefficients()


def _asin_ratio(t):
    """asin(√t)/√t for t ∈ [0, 1/4] by Clenshaw's recurrence (vectorises on CPU, where XLA's
    acos/asin/atan2 are scalar loops and ~20x slower)."""
    x = 8 * t - 1
    b1, b2 = jnp.zeros_like(x), jnp.zeros_like(x)
    for c in _ASIN_RATIO[:0:-1]:
        b1, b2 = 2 * x * b1 - b2 + c, b1
    return x * b1 - b2 + _ASIN_RATIO[0]


def _halves(z):
    """|z| ≤ 1/2: (a = |z|, asin(a)); else via asin(a) = π/2 − 2·asin(√((1 − a)/2))."""
    a = jnp.abs(z)
    small = a <= 0.5
    u = jnp.where(small, 0.0, 0.5 * (1 - a))
    tail = 2 * jnp.sqrt(u) * _asin_ratio(u)  # = π/2 − asin(a) = acos(a) for a > 1/2
    head = a * _asin_ratio(jnp.where(small, a * a, 0.0))  # = asin(a) for a ≤ 1/2
    return small, head, tail


@jax.custom_jvp
def fast_arcsin(z):
    """arcsin on [−1, 1], accurate to a few ulps, fast on CPU; derivative 1/√(1 − z²)."""
    small, head, tail = _halves(z)
    return jnp.sign(z) * jnp.where(small, head, 0.5 * jnp.pi - tail)


@fast_arcsin.defjvp
def _fast_arcsin_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return fast_arcsin(z), dz / jnp.sqrt(1 - z**2)


def fast_arccos(c):
    """arccos on [−1, 1] (relative accuracy also near c = 1), fast on CPU."""
    small, head, tail = _halves(c)
    positive = jnp.where(small, 0.5 * jnp.pi - head, tail)  # arccos(|c|)
    return jnp.where(c >= 0, positive, jnp.pi - positive)


@jax.custom_jvp
def _arccos_kernel(c):
    """J(c) = (√(1 − c²) + (π − arccos c)·c)/(2π), the normalised ReLU kernel, with its exact,
    finite derivative J′(c) = (π − arccos c)/(2π) (also at c = ±1, where arccos is not)."""
    c = jnp.clip(c, -1.0, 1.0)
    return (jnp.sqrt(jnp.maximum(1.0 - c**2, 0.0)) + (jnp.pi - fast_arccos(c)) * c) / (2 * jnp.pi)


@_arccos_kernel.defjvp
def _arccos_kernel_jvp(primals, tangents):
    (c,), (dc,) = primals, tangents
    slope = (jnp.pi - fast_arccos(jnp.clip(c, -1.0, 1.0))) / (2 * jnp.pi)
    return _arccos_kernel(c), slope * dc


class ReLU(AbstractPointwise):
    """ReLU (arc-cosine kernel of degree 1): K′ = √(K₁₁K₂₂)·J(K₁₂/√(K₁₁K₂₂)), diagonal K/2."""

    def cross(self, k12, k11, k22):
        norm = jnp.sqrt(jnp.maximum(k11 * k22, jnp.finfo(k12.dtype).tiny))
        return norm * _arccos_kernel(k12 / norm)

    def diagonal(self, k):
        return 0.5 * k

    def init_finite(self, noise, input_shape, width):
        return FiniteActivation("relu"), input_shape


class Erf(AbstractPointwise):
    """Erf: K′ = (2/π)·arcsin(2K₁₂/√((1 + 2K₁₁)(1 + 2K₂₂)))."""

    def cross(self, k12, k11, k22):
        return (2 / jnp.pi) * fast_arcsin(2 * k12 / jnp.sqrt((1 + 2 * k11) * (1 + 2 * k22)))

    def diagonal(self, k):
        return (2 / jnp.pi) * fast_arcsin(2 * k / (1 + 2 * k))

    def init_finite(self, noise, input_shape, width):
        return FiniteActivation("erf"), input_shape


def _box_mean(k, size: int):
    """Mean over a `size × size` window (zero padding, stride 1) on the last two axes."""
    lo = (size - 1) // 2
    hi = size - 1 - lo
    pad = [(0, 0)] * (k.ndim - 2) + [(lo, hi), (lo, hi)]
    padded = jnp.pad(k, pad)
    h, w = k.shape[-2:]
    total = sum(padded[..., i : i + h, j : j + w] for i in range(size) for j in range(size))
    return total / size**2


class Conv(AbstractLayer):
    """2-D convolution, `size × size`, stride 1, zero ("same") padding:
    K[p] ← W_std²·mean_{δ} K[p + δ] + b_std² (padding positions count as zero covariance)."""

    W_std: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.0)
    b_std: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.0)
    size: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        _check_std("W_std", self.W_std, allow_zero=False)
        _check_std("b_std", self.b_std, allow_zero=True)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be an integer >= 1, got {self.size!r}")

    def _apply(self, k):
        return None if k is None else self.W_std**2 * _box_mean(k, self.size) + self.b_std**2

    def __call__(self, state):
        return NNGPState(self._apply(state.k12), self._apply(state.k11), self._apply(state.k22))

    def output_spatial_shape(self, spatial_shape):
        if len(spatial_shape) != 2:
            raise ValueError(
                f"Conv needs image inputs with spatial shape (H, W) (pass "
                f"input_shape=(H, W, C) to serial), got spatial shape {spatial_shape}"
            )
        return spatial_shape

    @property
    def has_parameters(self) -> bool:
        return True

    def num_finite_parameters(self, input_shape, width):
        return (self.size**2 * input_shape[-1] + 1) * width

    def finite_output_shape(self, input_shape, width):
        return (*input_shape[:-1], width)

    def init_finite(self, noise, input_shape, width):
        fan_in = self.size**2 * input_shape[-1]
        shape = (self.size, self.size, input_shape[-1], width)
        weight = noise[: fan_in * width].reshape(shape) * self.W_std / math.sqrt(fan_in)
        bias = noise[fan_in * width :] * self.b_std
        return FiniteConv(weight, bias), (*input_shape[:-1], width)


class Flatten(AbstractLayer):
    """Flatten the feature map for a dense readout: K ← mean over positions of K[p]."""

    def _apply(self, k, lead: int):
        if k is None:
            return None
        return jnp.mean(k, axis=tuple(range(lead, k.ndim)))

    def __call__(self, state):
        return NNGPState(
            self._apply(state.k12, 2), self._apply(state.k11, 1), self._apply(state.k22, 1)
        )

    def output_spatial_shape(self, spatial_shape):
        return ()

    def finite_output_shape(self, input_shape, width):
        return (math.prod(input_shape),)

    def init_finite(self, noise, input_shape, width):
        return FiniteFlatten(), (math.prod(input_shape),)


class NNGPKernel(AbstractKernel):
    """The NNGP kernel of a network `layers` (built by `serial`); an `AbstractKernel`.

    Inputs are `[N, D]`; with `input_shape=(H, W, C)` each row is an image flattened in
    (H, W, C) order. `block_size` computes the Gram matrix `block_size` rows at a time
    (`lax.map`), bounding memory for convolutional kernels (N1·N2·H·W per layer otherwise).
    """

    layers: tuple[AbstractLayer, ...]
    input_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)
    block_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.layers, tuple) or not all(
            isinstance(layer, AbstractLayer) for layer in self.layers
        ):
            raise ValueError(f"layers must be a tuple of NNGP layers, got {self.layers!r}")
        if self.input_shape is not None:
            if len(self.input_shape) != 3 or not all(
                isinstance(s, int) and s >= 1 for s in self.input_shape
            ):
                raise ValueError(
                    f"input_shape must be None (vector inputs) or (H, W, C) with positive "
                    f"integers, got {self.input_shape!r}"
                )
        if self.block_size is not None and (
            not isinstance(self.block_size, int) or self.block_size < 1
        ):
            raise ValueError(f"block_size must be None or an integer >= 1, got {self.block_size!r}")
        spatial = () if self.input_shape is None else tuple(self.input_shape[:-1])
        for layer in self.layers:
            spatial = layer.output_spatial_shape(spatial)
        if spatial:
            raise ValueError(
                f"the network ends with a feature map of spatial shape {spatial}; add Flatten() "
                "(and a Dense readout) after the convolutions"
            )

    def check_features(self, num_features):
        if self.input_shape is not None and math.prod(self.input_shape) != num_features:
            raise ValueError(
                f"this NNGP kernel takes images of shape {self.input_shape} flattened to "
                f"D = {math.prod(self.input_shape)} features, got D = {num_features}"
            )

    def _reshape(self, x):
        if self.input_shape is None:
            return x
        return x.reshape(x.shape[0], *self.input_shape)

    def input_state(self, x1, x2=None) -> NNGPState:
        """K⁰: the input covariance x·x′/(number of channels), per spatial position."""
        a = self._reshape(x1)
        c = a.shape[-1]
        k11 = jnp.sum(a * a, axis=-1) / c
        if x2 is None:
            return NNGPState(None, k11, None)
        b = self._reshape(x2)
        k12 = jnp.einsum("a...c,b...c->ab...", a, b) / c
        return NNGPState(k12, k11, jnp.sum(b * b, axis=-1) / c)

    def propagate(self, state: NNGPState) -> NNGPState:
        for layer in self.layers:
            state = layer(state)
        return state

    def _gram(self, x1, x2):
        return self.propagate(self.input_state(x1, x2)).k12

    def gram(self, x1, x2):
        n1 = x1.shape[0]
        if self.block_size is None or n1 <= self.block_size:
            return self._gram(x1, x2)
        bs = self.block_size
        num_blocks = -(-n1 // bs)
        padded = jnp.pad(x1, ((0, num_blocks * bs - n1), (0, 0)))
        blocks = padded.reshape(num_blocks, bs, x1.shape[1])
        out = jax.lax.map(lambda b: self._gram(b, x2), blocks)
        return out.reshape(num_blocks * bs, x2.shape[0])[:n1]

    def diag(self, x):
        return self.propagate(self.input_state(x)).k11

    def finite_network(
        self, key, num_features=None, width: int = 512, num_outputs: int = 1, scale_prior=None
    ):
        """A random finite network of this architecture (see `probnet.nngp.finite_network`)."""
        from probnet.nngp.finite import finite_network

        return finite_network(self, key, num_features, width, num_outputs, scale_prior)


def serial(*layers, input_shape: tuple[int, int, int] | None = None, block_size=None) -> NNGPKernel:
    """Compose layers (or `NNGPKernel`s, whose layers are spliced in) into an `NNGPKernel`.

    `input_shape=(H, W, C)` declares image inputs (needed before `Conv`); the network must end
    with a flat output (`Flatten()` after convolutions).
    """
    flat: list[AbstractLayer] = []
    for layer in layers:
        if isinstance(layer, NNGPKernel):
            if layer.input_shape is not None and input_shape is None:
                input_shape = layer.input_shape
            flat.extend(layer.layers)
        elif isinstance(layer, AbstractLayer):
            flat.append(layer)
        else:
            raise ValueError(
                f"serial takes NNGP layers (Dense, ReLU, Erf, Conv, Flatten) or NNGP kernels, got "
                f"{type(layer).__name__}"
            )
    if not flat:
        raise ValueError("serial needs at least one layer")
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    return NNGPKernel(tuple(flat), shape, block_size)


# Finite layers live here too so that each NNGP layer can build its own finite counterpart.


class FiniteDense(eqx.Module):
    """h ↦ h @ weight + bias on the last axis."""

    weight: Float[Array, "fan_in width"]
    bias: Float[Array, " width"]

    def __call__(self, h):
        return h @ self.weight + self.bias


class FiniteConv(eqx.Module):
    """'Same' 2-D convolution of an `[H, W, C]` feature map, stride 1."""

    weight: Float[Array, "q q cin cout"]
    bias: Float[Array, " cout"]

    def __call__(self, h):
        out = jax.lax.conv_general_dilated(
            h[None],
            self.weight,
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out[0] + self.bias


class FiniteActivation(eqx.Module):
    """Elementwise nonlinearity by name ("relu" or "erf")."""

    name: str = eqx.field(static=True)

    def __call__(self, h):
        return jax.nn.relu(h) if self.name == "relu" else jax.scipy.special.erf(h)


class FiniteFlatten(eqx.Module):
    def __call__(self, h):
        return h.reshape(-1)
