"""Prior-Data Fitted Network (Müller et al., 2022): a transformer whose one forward pass gives
the posterior predictive of the prior it was trained on, as a bar distribution."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import as_float_array, check_count, check_finite, check_ndim, check_positive
from probnet.distributions.bar import BarDistribution, check_borders


def _dense(key, fan_in, fan_out, shape_prefix=()):
    """Weights `[*prefix, fan_in, fan_out]` ~ U(±1/√fan_in) and zero biases."""
    bound = 1.0 / math.sqrt(fan_in)
    w = jax.random.uniform(key, shape_prefix + (fan_in, fan_out), minval=-bound, maxval=bound)
    return w, jnp.zeros(shape_prefix + (fan_out,))


def _rows(v: Float[Array, " E"], n: int) -> Float[Array, "n E"]:
    """`n` copies of `v` as the outer product `ones[n, 1] @ v[None]`. Used for tangents of
    parameters broadcast over rows: their transpose, the parameter's gradient, is then the dot
    `ones[n] @ g` (XLA CPU rewrites a long column reduction into slow reduce-window loops, while
    a dot runs at matmul speed)."""
    return jnp.ones((n, 1), v.dtype) @ v[None]


@jax.custom_jvp
def _linear(x: Float[Array, "N K"], w: Float[Array, "K M"], b: Float[Array, " M"]):
    """`x @ w + b`, whose bias gradient is a dot (see `_rows`)."""
    return x @ w + b


@_linear.defjvp
def _linear_jvp(primals, tangents):
    (x, w, b), (dx, dw, db) = primals, tangents
    return x @ w + b, dx @ w + x @ dw + _rows(db, x.shape[0])


@jax.custom_jvp
def _affine(x: Float[Array, "N E"], scale: Float[Array, " E"], b: Float[Array, " E"]):
    """`x * scale + b`, whose parameter gradients are dots (see `_rows`)."""
    return x * scale + b


@_affine.defjvp
def _affine_jvp(primals, tangents):
    (x, scale, b), (dx, dscale, db) = primals, tangents
    n = x.shape[0]
    return x * scale + b, dx * scale + x * _rows(dscale, n) + _rows(db, n)


@jax.custom_jvp
def _grad_barrier(x):
    """Identity whose tangent, and so its transpose, the incoming gradient, goes through a
    conditional that XLA cannot fold (its predicate, computed from `x`, is always true): the
    gradient is computed once, into a buffer (see `TransformerLayers`).
    `lax.optimization_barrier` does not do this on CPU, where XLA expands barriers before
    fusion."""
    return x


@_grad_barrier.defjvp
def _grad_barrier_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    keep = jnp.sum(jnp.isnan(x[:1, :1]).astype(jnp.int32)) >= 0
    return x, jax.lax.cond(keep, lambda t: t, lambda t: t * 1.0, dx)


def _split3(qkv):
    """`qkv[:, :, i]` for i = 0, 1, 2 of `[B, T, 3, H, Dh]`, by `lax.split`: its gradient is one
    concatenation, not three zero-padded copies added together."""
    return tuple(part[:, :, 0] for part in jnp.split(qkv, 3, axis=2))


def _layer_norm(x: Float[Array, "N E"], scale, bias, eps=1e-5) -> Float[Array, "N E"]:
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return _affine((x - mean) * jax.lax.rsqrt(var + eps), scale, bias)


class TransformerLayers(eqx.Module):
    """`num_layers` pre-norm transformer layers, parameters stacked on a leading axis. Every
    token attends only to the context tokens.

    Works on a batch of datasets at once (tokens flattened to `[B * T, E]` for the dense maps,
    attention in the `[B, T, H, Dh]` layout, so no head transposes). With `_linear` and
    `_affine` this cut XLA CPU's gradient time about 1.3-2x against a `vmap` over datasets
    (the transposed copies, reduce-windows and recomputed elementwise chains went away).

    XLA CPU notes (profiled with `jax.profiler` on the benchmark configuration, 2 cores):

    * The layers are unrolled in Python, not `lax.scan`ned: the scan spent ~17% of the
      gradient's time stacking and slicing saved activations (dynamic-update-slice /
      dynamic-slice) and zero-filling their buffers; unrolled, about 1.15-1.2x faster.
    * `_grad_barrier` after each residual add: otherwise XLA fuses the residual stream's
      gradient of every layer from scratch out of all the layer-norm backward terms above it
      (fusions with up to 60 operands, quadratic in depth), about 10% of the step.
    * `_split3`: the gradient of the q/k/v split is one stacked copy, not three zero-padded
      `[B * T, 3E]` arrays added together (about 5%).
    """

    qkv_w: Float[Array, "L E 3E"]
    qkv_b: Float[Array, "L 3E"]
    out_w: Float[Array, "L E E"]
    out_b: Float[Array, "L E"]
    ff1_w: Float[Array, "L E F"]
    ff1_b: Float[Array, "L F"]
    ff2_w: Float[Array, "L F E"]
    ff2_b: Float[Array, "L E"]
    norm1: Float[Array, "L 2 E"]
    norm2: Float[Array, "L 2 E"]
    num_heads: int = eqx.field(static=True)

    def __init__(self, key, num_layers, emb_size, ff_size, num_heads):
        if emb_size % num_heads:
            raise ValueError(f"emb_size ({emb_size}) must be divisible by num_heads ({num_heads})")
        k = jax.random.split(key, 4)
        pre = (num_layers,)
        self.qkv_w, self.qkv_b = _dense(k[0], emb_size, 3 * emb_size, pre)
        self.out_w, self.out_b = _dense(k[1], emb_size, emb_size, pre)
        self.ff1_w, self.ff1_b = _dense(k[2], emb_size, ff_size, pre)
        self.ff2_w, self.ff2_b = _dense(k[3], ff_size, emb_size, pre)
        norm = jnp.stack([jnp.ones(emb_size), jnp.zeros(emb_size)])
        self.norm1 = jnp.broadcast_to(norm, pre + norm.shape)
        self.norm2 = jnp.broadcast_to(norm, pre + norm.shape)
        self.num_heads = num_heads

    def __call__(
        self, h: Float[Array, "B T E"], key_mask: Bool[Array, " T"]
    ) -> Float[Array, "B T E"]:
        batch, tokens, emb = h.shape
        heads, head_dim = self.num_heads, emb // self.num_heads
        bias = jnp.where(key_mask, 0.0, -1e9)  # finite: no NaN gradients with zero context
        any_key = jnp.any(key_mask)

        def layer(h, p):
            qkv_w, qkv_b, out_w, out_b, ff1_w, ff1_b, ff2_w, ff2_b, n1, n2 = p
            z = _layer_norm(h, n1[0], n1[1])
            qkv = _linear(z, qkv_w, qkv_b).reshape(batch, tokens, 3, heads, head_dim)
            q, k_, v_ = _split3(qkv)
            q = q * (1.0 / math.sqrt(head_dim))
            scores = jnp.einsum("bthd,bshd->bhts", q, k_) + bias
            # no context at all: attention contributes nothing (the prior predictive)
            weights = jnp.where(any_key, jax.nn.softmax(scores, axis=-1), 0.0)
            att = jnp.einsum("bhts,bshd->bthd", weights, v_)
            h = h + _linear(att.reshape(batch * tokens, emb), out_w, out_b)
            h = _grad_barrier(h)
            z = _layer_norm(h, n2[0], n2[1])
            h = h + _linear(jax.nn.gelu(_linear(z, ff1_w, ff1_b)), ff2_w, ff2_b)
            return _grad_barrier(h)

        params = (
            self.qkv_w,
            self.qkv_b,
            self.out_w,
            self.out_b,
            self.ff1_w,
            self.ff1_b,
            self.ff2_w,
            self.ff2_b,
            self.norm1,
            self.norm2,
        )
        h = h.reshape(batch * tokens, emb)
        for i in range(self.qkv_w.shape[0]):
            h = layer(h, tuple(a[i] for a in params))
        return h.reshape(batch, tokens, emb)


class PFN(eqx.Module):
    """Prior-data fitted network for regression with a bar-distribution output.

    A context token is embed(x) + embed(y), a query token embed(x); no positional encoding;
    context tokens attend to context tokens and each query attends to the context only, so the
    output does not depend on the order of the context nor on the other queries. Inputs and
    targets are standardised inside with fixed statistics of the prior (`x_loc`, `x_scale`,
    `y_loc`, `y_scale`), so raw data goes in and the bar borders are in raw target units.
    """

    x_embed: tuple[Float[Array, "D E"], Float[Array, " E"]]
    y_embed: tuple[Float[Array, "1 E"], Float[Array, " E"]]
    layers: TransformerLayers
    final_norm: Float[Array, "2 E"]
    decoder: tuple[Float[Array, "E F"], Float[Array, " F"], Float[Array, "F B"], Float[Array, " B"]]
    borders: Float[Array, " B1"]
    x_loc: Float[Array, " D"]
    x_scale: Float[Array, " D"]
    y_loc: Float[Array, ""]
    y_scale: Float[Array, ""]

    def __init__(
        self,
        key: PRNGKeyArray,
        borders: Float[Array, " B1"],
        num_features: int = 1,
        emb_size: int = 128,
        ff_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        x_loc=0.0,
        x_scale=1.0,
        y_loc=0.0,
        y_scale=1.0,
    ):
        check_count("num_features", num_features)
        check_count("num_layers", num_layers)
        borders = check_borders(borders)
        x_scale = check_positive("x_scale", as_float_array(x_scale))
        y_scale = check_positive("y_scale", as_float_array(y_scale))
        k = jax.random.split(key, 5)
        self.x_embed = _dense(k[0], num_features, emb_size)
        self.y_embed = _dense(k[1], 1, emb_size)
        self.layers = TransformerLayers(k[2], num_layers, emb_size, ff_size, num_heads)
        self.final_norm = jnp.stack([jnp.ones(emb_size), jnp.zeros(emb_size)])
        w1, b1 = _dense(k[3], emb_size, ff_size)
        w2, b2 = _dense(k[4], ff_size, borders.shape[0] - 1)
        self.decoder = (w1, b1, w2 * 0.0, b2)  # start at uniform bucket probabilities
        self.borders = borders
        self.x_loc = jnp.broadcast_to(as_float_array(x_loc), (num_features,))
        self.x_scale = jnp.broadcast_to(as_float_array(x_scale), (num_features,))
        self.y_loc = as_float_array(y_loc)
        self.y_scale = as_float_array(y_scale)

    @property
    def num_features(self) -> int:
        return self.x_embed[0].shape[0]

    def trainable_mask(self) -> "PFN":
        """Filter for `probnet.training.Trainer`: every weight is trained; the bar borders and the
        normalisation statistics of the prior stay fixed."""
        mask = jax.tree.map(eqx.is_inexact_array, self)
        fixed = lambda m: (m.borders, m.x_loc, m.x_scale, m.y_loc, m.y_scale)  # noqa: E731
        return eqx.tree_at(fixed, mask, (False,) * 5)

    def logits(
        self, x: Float[Array, "T D"], y: Float[Array, " T"], context_mask: Bool[Array, " T"]
    ) -> Float[Array, "T B"]:
        """Bar logits for every token, with static shapes: tokens in `context_mask` are context
        (their `y` is used); the others are queries (their `y` is ignored)."""
        return self.batch_logits(x[None], y[None], context_mask)[0]

    def batch_logits(
        self, x: Float[Array, "N T D"], y: Float[Array, "N T"], context_mask: Bool[Array, " T"]
    ) -> Float[Array, "N T B"]:
        """`logits` of `N` datasets sharing one context mask, computed together (equal to a
        `vmap` of `logits`, and faster to differentiate)."""
        n, t = y.shape
        xs = ((x - self.x_loc) / self.x_scale).reshape(n * t, -1)
        ys = ((y - self.y_loc) / self.y_scale).reshape(n * t, 1)
        h = _linear(xs, *self.x_embed)
        is_context = jnp.tile(context_mask, n)[:, None]
        h = h + jnp.where(is_context, _linear(ys, *self.y_embed), 0.0)
        h = self.layers(h.reshape(n, t, -1), context_mask).reshape(n * t, -1)
        h = _layer_norm(h, self.final_norm[0], self.final_norm[1])
        w1, b1, w2, b2 = self.decoder
        return _linear(jax.nn.gelu(_linear(h, w1, b1)), w2, b2).reshape(n, t, -1)

    def __call__(
        self,
        x_context: Float[Array, "N D"],
        y_context: Float[Array, " N"],
        x_target: Float[Array, "M D"],
    ) -> BarDistribution:
        """The posterior predictive at each of the `M` targets (batch shape `[M]`) given one
        dataset's context; `N = 0` gives the prior predictive. Use `jax.vmap` for batches."""
        for name, x in (("x_context", x_context), ("x_target", x_target)):
            check_ndim(name, x, 2, f"[N, {self.num_features}]")
            if x.shape[1] != self.num_features:
                raise ValueError(
                    f"{name} must have {self.num_features} features, got shape {x.shape}"
                )
        check_ndim("y_context", y_context, 1, "[N]")
        if y_context.shape[0] != x_context.shape[0]:
            raise ValueError(
                f"x_context and y_context must have the same number of points, got "
                f"{x_context.shape} and {y_context.shape}"
            )
        x_context = check_finite("x_context", x_context)
        y_context = check_finite("y_context", y_context)
        x_target = check_finite("x_target", x_target)
        n = x_context.shape[0]
        x = jnp.concatenate([x_context, x_target])
        y = jnp.concatenate([y_context, jnp.zeros(x_target.shape[0], y_context.dtype)])
        mask = jnp.arange(x.shape[0]) < n
        return BarDistribution(self.borders, self.logits(x, y, mask)[n:])

    def distribution(self, logits: Float[Array, "... B"]) -> BarDistribution:
        """The bar distribution of given logits."""
        return BarDistribution(self.borders, logits)
