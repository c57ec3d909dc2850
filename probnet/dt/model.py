"""The Distribution Transformer (Whittle, Ziomek, Rawling, Osborne, arXiv 2502.02463).

A GMM prior and a set of observations in, a GMM posterior out. One token per prior component,
one per observation; blocks of self-attention among the component tokens, cross-attention from
the components to the observations (plus a learned "no observation" sink token, so that zero
observations and padded ones are handled by one compiled function) and a feed-forward layer.
The head predicts, for each component, a *residual* update of the input component:

    log w_k' = log w_k + a_k                 (then normalised)
    μ_k'     = μ_k + L_k b_k
    L_k'     = L_k T_k,   T_k lower triangular, diag exp(c_k), strict lower part from the head

so the output is always a valid GMM (weights sum to one, L_k' lower triangular with positive
diagonal) and a zero head returns the prior. The head is initialised at zero.

Inputs are standardised by the prior mixture's mean m and per-coordinate standard deviation s
(a component token holds log w_k, (μ_k − m)/s, log diag and strict lower part of
diag(1/s)L_k, log s and log(1 + n)); observations go through a feature map (`y` or
`log y²`) and are standardised by the same (m, s) when `standardise_obs` (observations that
live in parameter space, e.g. H = I) or divided by `obs_scale` otherwise. No positional
information is used anywhere: permuting the components permutes the output, permuting the
observations changes nothing, and masked observations get exactly zero attention.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import check_finite
from probnet.distributions.gmm import GMM

__all__ = ["DistributionTransformer", "OBS_FEATURES"]

OBS_FEATURES = ("linear", "log_square")
_FEATURE_CLIP = 30.0
_MAX_LOG_SCALE_CHANGE = 12.0
_MIN_LOG_WEIGHT = -30.0


class _Block(eqx.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to observations, feed-forward."""

    norm_self: eqx.nn.LayerNorm
    self_attention: eqx.nn.MultiheadAttention
    norm_cross: eqx.nn.LayerNorm
    norm_obs: eqx.nn.LayerNorm
    cross_attention: eqx.nn.MultiheadAttention
    norm_ff: eqx.nn.LayerNorm
    feed_forward: eqx.nn.MLP

    def __init__(self, width: int, num_heads: int, hidden: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm_self = eqx.nn.LayerNorm(width)
        self.self_attention = eqx.nn.MultiheadAttention(num_heads, width, key=k1)
        self.norm_cross = eqx.nn.LayerNorm(width)
        self.norm_obs = eqx.nn.LayerNorm(width)
        self.cross_attention = eqx.nn.MultiheadAttention(num_heads, width, key=k2)
        self.norm_ff = eqx.nn.LayerNorm(width)
        self.feed_forward = eqx.nn.MLP(width, width, hidden, 1, activation=jax.nn.gelu, key=k3)

    def __call__(self, h, obs, cross_mask):
        x = jax.vmap(self.norm_self)(h)
        h = h + self.self_attention(x, x, x)
        x = jax.vmap(self.norm_cross)(h)
        o = jax.vmap(self.norm_obs)(obs)
        h = h + self.cross_attention(x, o, o, mask=cross_mask)
        return h + jax.vmap(self.feed_forward)(jax.vmap(self.norm_ff)(h))


class DistributionTransformer(eqx.Module):
    """GMM prior `[K components on R^d]` + observations `[N, obs_dim]` (masked) → GMM posterior.

    **Arguments:**

    - `dim`: parameter dimension d; `obs_dim`: observation dimension m.
    - `width`: token width; `depth`: number of blocks; `num_heads`; `hidden`: feed-forward width
      (default 2·width); `embed_depth`: hidden layers of the two embedding MLPs.
    - `obs_features`: "linear" (y) or "log_square" (log y², for observations whose scale is the
      parameter, e.g. θ = log σ²).
    - `standardise_obs`: standardise observation features with the prior's (m, s) (needs
      obs_dim = d); else divide them by `obs_scale`.
    - `key`: PRNG key for the initial weights.

    Works for any number of components K and observations N (N = 0 included); call on one
    problem, `jax.vmap` over a batch.
    """

    component_embed: eqx.nn.MLP
    obs_embed: eqx.nn.MLP
    sink: Float[Array, " width"]
    blocks: tuple[_Block, ...]
    head_norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    obs_features: str = eqx.field(static=True)
    standardise_obs: bool = eqx.field(static=True)
    obs_scale: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        obs_dim: int | None = None,
        width: int = 64,
        depth: int = 3,
        num_heads: int = 4,
        hidden: int | None = None,
        embed_depth: int = 1,
        obs_features: str = "linear",
        standardise_obs: bool = True,
        obs_scale: float = 1.0,
        *,
        key: PRNGKeyArray,
    ):
        obs_dim = dim if obs_dim is None else obs_dim
        for name, value, low in (
            ("dim", dim, 1),
            ("obs_dim", obs_dim, 1),
            ("width", width, 1),
            ("depth", depth, 0),
            ("num_heads", num_heads, 1),
            ("embed_depth", embed_depth, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if width % num_heads:
            raise ValueError(f"width ({width}) must be a multiple of num_heads ({num_heads})")
        if obs_features not in OBS_FEATURES:
            raise ValueError(f"obs_features must be one of {OBS_FEATURES}, got {obs_features!r}")
        if standardise_obs and obs_dim != dim:
            raise ValueError(
                f"standardise_obs needs obs_dim == dim (observations in parameter space), got "
                f"obs_dim={obs_dim}, dim={dim}; set standardise_obs=false"
            )
        if not obs_scale > 0:
            raise ValueError(f"obs_scale must be > 0, got {obs_scale}")
        hidden = 2 * width if hidden is None else hidden
        k_comp, k_obs, k_sink, k_blocks, k_head = jax.random.split(key, 5)
        num_in = 1 + 2 * dim + dim * (dim - 1) // 2 + dim + 1
        self.component_embed = eqx.nn.MLP(
            num_in, width, width, embed_depth, activation=jax.nn.gelu, key=k_comp
        )
        self.obs_embed = eqx.nn.MLP(
            obs_dim, width, width, embed_depth, activation=jax.nn.gelu, key=k_obs
        )
        self.sink = 0.02 * jax.random.normal(k_sink, (width,))
        self.blocks = tuple(
            _Block(width, num_heads, hidden, key=k) for k in jax.random.split(k_blocks, depth)
        )
        self.head_norm = eqx.nn.LayerNorm(width)
        num_out = 1 + dim + dim + dim * (dim - 1) // 2
        head = eqx.nn.Linear(width, num_out, key=k_head)
        self.head = eqx.tree_at(
            lambda m: (m.weight, m.bias), head, (jnp.zeros_like(head.weight), jnp.zeros(num_out))
        )
        self.dim, self.obs_dim = dim, obs_dim
        self.obs_features = obs_features
        self.standardise_obs = bool(standardise_obs)
        self.obs_scale = float(obs_scale)

    # ------------------------------------------------------------------ features

    def _frame(self, prior: GMM):
        """Mixture mean and per-coordinate standard deviation of the prior."""
        dtype = prior.means.dtype
        var = jnp.maximum(prior.variance, jnp.finfo(dtype).tiny)
        return prior.mean, jnp.sqrt(var)

    def _component_features(self, prior: GMM, loc, scale, num_obs):
        d = self.dim
        lower = jnp.tril_indices(d, -1)
        chol = prior.chol / scale[:, None]  # diag(1/s) L_k
        log_diag = jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1))
        k = prior.num_components
        columns = [
            jnp.maximum(prior.log_weights, _MIN_LOG_WEIGHT)[:, None],
            (prior.means - loc) / scale,
            log_diag,
            chol[:, lower[0], lower[1]],
            jnp.broadcast_to(jnp.log(scale), (k, d)),
            jnp.broadcast_to(jnp.log1p(num_obs), (k, 1)),
        ]
        feats = jnp.concatenate(columns, axis=1)
        return jnp.clip(jnp.nan_to_num(feats), -_FEATURE_CLIP, _FEATURE_CLIP)

    def _obs_features(self, y, loc, scale):
        if self.obs_features == "log_square":
            y = jnp.log(y**2 + jnp.finfo(y.dtype).tiny)
        y = (y - loc) / scale if self.standardise_obs else y / self.obs_scale
        return jnp.clip(jnp.nan_to_num(y), -_FEATURE_CLIP, _FEATURE_CLIP)

    # ------------------------------------------------------------------ forward

    def __call__(
        self,
        prior: GMM,
        y: Float[Array, "N m"],
        mask: Bool[Array, " N"] | None = None,
    ) -> GMM:
        """The predicted posterior GMM (K components) given the observations with `mask` true."""
        if prior.dim != self.dim:
            raise ValueError(f"prior must be a GMM on R^{self.dim}, got dimension {prior.dim}")
        y = jnp.asarray(y, prior.means.dtype)
        if y.ndim == 1 and self.obs_dim == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != self.obs_dim:
            raise ValueError(f"y must have shape [N, obs_dim={self.obs_dim}], got {y.shape}")
        mask = jnp.ones(y.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
        if mask.shape != (y.shape[0],):
            raise ValueError(f"mask must have shape [N={y.shape[0]}], got {mask.shape}")
        check_finite("y", jnp.where(mask[:, None], y, 0.0))  # observations in the mask
        loc, scale = self._frame(prior)
        num_obs = jnp.sum(mask.astype(prior.means.dtype))
        h = jax.vmap(self.component_embed)(self._component_features(prior, loc, scale, num_obs))
        obs = jax.vmap(self.obs_embed)(self._obs_features(y, loc, scale))
        obs = jnp.concatenate([self.sink[None].astype(obs.dtype), obs], axis=0)
        k = prior.num_components
        cross_mask = jnp.broadcast_to(jnp.concatenate([jnp.ones(1, bool), mask]), (k, 1 + len(y)))
        for block in self.blocks:
            h = block(h, obs, cross_mask)
        out = jax.vmap(lambda t: self.head(self.head_norm(t)))(h)
        return self._apply_update(prior, out)

    def _apply_update(self, prior: GMM, out):
        d = self.dim
        d_logit = out[:, 0]
        d_mean = out[:, 1 : 1 + d]
        d_diag = out[:, 1 + d : 1 + 2 * d]
        d_off = out[:, 1 + 2 * d :]
        d_diag = _MAX_LOG_SCALE_CHANGE * jnp.tanh(d_diag / _MAX_LOG_SCALE_CHANGE)
        lower = jnp.tril_indices(d, -1)
        tri = jax.vmap(jnp.diag)(jnp.exp(d_diag))
        tri = tri.at[:, lower[0], lower[1]].set(d_off)
        means = prior.means + jnp.einsum("kij,kj->ki", prior.chol, d_mean)
        chol = prior.chol @ tri
        return GMM(log_weights=prior.log_weights + d_logit, means=means, chol=chol)

    def reconstruct(self, prior: GMM) -> GMM:
        """The network's output with zero observations (ideally the prior itself)."""
        return self(prior, jnp.zeros((0, self.obs_dim), prior.means.dtype))
