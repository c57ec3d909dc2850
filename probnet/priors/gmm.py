"""Gaussian-mixture priors and posteriors as tasks: the training data of a Distribution Transformer.

A task is a GMM prior over a parameter θ ∈ R^d drawn from a *meta-prior* (`GMMMetaPrior`),
a true θ drawn from that prior, and observations of θ from an *observation model*, padded to a
fixed number of points with a mask. Every observation model has an exact posterior:

- `LinearGaussianObservations`: y_i = Hθ + ε_i, ε_i ~ N(0, R). The posterior is the GMM
  `prior.condition_linear_gaussian(H, R, y, mask)`.
- `NormalVarianceObservations`: y_i ~ N(loc, exp θ) with θ = log σ² (d = 1). The posterior is
  not a GMM; it is computed by quadrature (`GridPosterior`) to about machine precision. Working in
  log-variance space puts the prior, the posterior and the network's output on the same line.

`LinearGaussianDynamics` moves a distribution through x' = Ax + q for sequential inference.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import (
    as_float_array,
    check_count,
    check_covariance,
    check_ndim,
    check_positive,
)
from probnet.distributions.gmm import GMM
from probnet.linalg import cholesky, solve_lower
from probnet.priors.base import AbstractPrior

__all__ = [
    "AbstractObservationModel",
    "GMMMetaPrior",
    "GMMPosteriorTasks",
    "GMMTask",
    "GridPosterior",
    "LinearGaussianDynamics",
    "LinearGaussianObservations",
    "NormalVarianceObservations",
]

_LOG_2PI = math.log(2 * math.pi)


def _matrix(x):
    """A float array from a nested sequence (Hydra ListConfig included) or an array."""
    if hasattr(x, "_content") or isinstance(x, list | tuple):
        from omegaconf import OmegaConf

        if not isinstance(x, list | tuple):
            x = OmegaConf.to_container(x)
        x = np.asarray(x, dtype=float)
    return as_float_array(x)


# ---------------------------------------------------------------------- meta-prior


class GMMMetaPrior(eqx.Module):
    """A distribution over K-component GMM priors on R^d.

    Weights ~ Dirichlet(concentration · 1); means ~ N(mean_loc, mean_scale² I); each component's
    standard deviations ~ U[std_low, std_high] per coordinate; correlations (d > 1) are those of
    a Wishart(correlation_df, I) draw (`correlation_df=None`: diagonal covariances). Smaller
    `correlation_df` (>= d) gives stronger correlations; the component Cholesky factor is
    diag(std) D^{-1/2} A, with A the Bartlett factor of the Wishart draw and D = diag(AAᵀ).
    """

    num_components: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    concentration: float = eqx.field(static=True, default=1.0)
    mean_loc: float = eqx.field(static=True, default=0.0)
    mean_scale: float = eqx.field(static=True, default=2.0)
    std_low: float = eqx.field(static=True, default=0.1)
    std_high: float = eqx.field(static=True, default=1.5)
    correlation_df: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_count("num_components", self.num_components)
        check_count("dim", self.dim)
        for name in ("concentration", "mean_scale", "std_low", "std_high"):
            check_positive(name, getattr(self, name))
        if not self.std_high >= self.std_low:
            raise ValueError(
                f"std_high must be >= std_low, got std_low={self.std_low}, std_high={self.std_high}"
            )
        if self.correlation_df is not None and not self.correlation_df > self.dim - 1:
            raise ValueError(
                f"correlation_df must be > dim - 1 = {self.dim - 1} (or null for diagonal "
                f"covariances), got {self.correlation_df}"
            )

    def sample(self, key: PRNGKeyArray) -> GMM:
        """One GMM prior."""
        k, d = self.num_components, self.dim
        k_w, k_m, k_s, k_c = jax.random.split(key, 4)
        dtype = jnp.result_type(float)
        # log-gamma draws: a small concentration never underflows to a zero weight.
        log_weights = jax.random.loggamma(k_w, jnp.full((k,), self.concentration, dtype))
        means = self.mean_loc + self.mean_scale * jax.random.normal(k_m, (k, d), dtype)
        std = jax.random.uniform(k_s, (k, d), dtype, self.std_low, self.std_high)
        if self.correlation_df is None or d == 1:
            chol = jax.vmap(jnp.diag)(std)
        else:
            chol = jax.vmap(lambda kk, s: s[:, None] * self._correlation_chol(kk))(
                jax.random.split(k_c, k), std
            )
        return GMM(log_weights=log_weights, means=means, chol=chol)

    def _correlation_chol(self, key):
        d, df = self.dim, self.correlation_df
        k_chi, k_off = jax.random.split(key)
        dtype = jnp.result_type(float)
        # Bartlett: A_ii² ~ χ²(df − i), A_ij ~ N(0, 1) below the diagonal; W = AAᵀ ~ Wishart.
        chi2 = 2.0 * jax.random.gamma(k_chi, (df - jnp.arange(d, dtype=dtype)) / 2.0, (d,), dtype)
        a = jnp.tril(jax.random.normal(k_off, (d, d), dtype), -1) + jnp.diag(jnp.sqrt(chi2))
        return a / jnp.sqrt(jnp.sum(a**2, axis=1, keepdims=True))  # D^{-1/2} A


# ---------------------------------------------------------------------- exact posteriors


class GridPosterior(eqx.Module):
    """A univariate density tabulated on a sorted grid, with trapezoid quadrature weights.

    `points` `[G]`, `log_density` `[G]` (normalised: Σ exp(log_quad_weights + log_density)
    = 1). Used as the exact posterior where the posterior is not a GMM (d = 1).
    """

    points: Float[Array, " G"]
    log_density: Float[Array, " G"]
    log_quad_weights: Float[Array, " G"]

    @classmethod
    def from_log_density(cls, points, log_unnormalised) -> "GridPosterior":
        """Normalise an unnormalised log density tabulated at sorted `points`."""
        gaps = jnp.diff(points)
        quad = 0.5 * (jnp.concatenate([gaps, jnp.zeros(1)]) + jnp.concatenate([jnp.zeros(1), gaps]))
        log_quad = jnp.log(jnp.maximum(quad, jnp.finfo(points.dtype).tiny))
        log_z = jax.nn.logsumexp(log_quad + log_unnormalised)
        return cls(points, log_unnormalised - log_z, log_quad)

    @property
    def dim(self) -> int:
        return 1

    def _mass(self):
        return jnp.exp(self.log_quad_weights + self.log_density)

    @property
    def mean(self) -> Float[Array, " 1"]:
        return jnp.sum(self._mass() * self.points)[None]

    @property
    def covariance(self) -> Float[Array, "1 1"]:
        m = self.mean[0]
        return jnp.sum(self._mass() * (self.points - m) ** 2)[None, None]

    def log_prob(self, x: Float[Array, "... 1"]) -> Float[Array, "..."]:
        """Log density at `x` (`[..., 1]`), linearly interpolated in log space; -inf outside."""
        x = jnp.asarray(x)[..., 0]
        inside = (x >= self.points[0]) & (x <= self.points[-1])
        lp = jnp.interp(x, self.points, self.log_density)
        return jnp.where(inside, lp, -jnp.inf)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()) -> Float[Array, "... 1"]:
        """Approximate draws: a grid node by its quadrature mass, jittered within its cell."""
        k_i, k_u = jax.random.split(key)
        idx = jax.random.categorical(k_i, self.log_quad_weights + self.log_density, shape=shape)
        half = 0.5 * jnp.exp(self.log_quad_weights[idx])
        u = jax.random.uniform(k_u, tuple(shape), self.points.dtype, -1.0, 1.0)
        return (self.points[idx] + u * half)[..., None]

    def kl_divergence(self, other, key=None, num_samples=None) -> Float[Array, ""]:
        """KL(self ‖ other) by quadrature on the grid (`key`, `num_samples` unused)."""
        del key, num_samples
        log_q = other.log_prob(self.points[:, None])
        return jnp.sum(self._mass() * (self.log_density - log_q))


# ---------------------------------------------------------------------- observation models


class AbstractObservationModel(eqx.Module):
    """How observations `[n, obs_dim]` of a parameter θ `[param_dim]` arise, with the exact
    posterior of a GMM prior under them."""

    param_dim: eqx.AbstractVar[int]
    obs_dim: eqx.AbstractVar[int]

    def sample(self, key: PRNGKeyArray, theta: Float[Array, " d"], num: int):
        """`num` i.i.d. observations `[num, obs_dim]` given θ."""
        raise NotImplementedError

    def log_likelihood(self, theta, y, mask=None) -> Float[Array, ""]:
        """Σ_i mask_i log p(y_i | θ)."""
        raise NotImplementedError

    def exact_posterior(self, prior: GMM, y, mask=None):
        """The exact posterior: a GMM or a `GridPosterior`."""
        raise NotImplementedError

    def _mask(self, y, mask):
        return jnp.ones(y.shape[0], bool) if mask is None else jnp.asarray(mask)


class LinearGaussianObservations(AbstractObservationModel):
    """y_i = Hθ + ε_i, ε_i ~ N(0, R): `H` `[m, d]`, `R` `[m, m]` symmetric positive definite."""

    H: Float[Array, "m d"] = eqx.field(converter=_matrix)
    R: Float[Array, "m m"] = eqx.field(converter=_matrix)

    def __check_init__(self):
        check_ndim("H", self.H, 2, "[m, d]")
        m = self.H.shape[0]
        if self.R.shape != (m, m):
            raise ValueError(f"R must have shape [m={m}, m={m}], got {self.R.shape}")
        check_covariance("R", self.R)

    @property
    def param_dim(self) -> int:
        return self.H.shape[1]

    @property
    def obs_dim(self) -> int:
        return self.H.shape[0]

    def sample(self, key, theta, num):
        eps = jax.random.normal(key, (num, self.obs_dim), self.H.dtype)
        return theta @ self.H.T + eps @ cholesky(self.R).T

    def log_likelihood(self, theta, y, mask=None):
        mask = self._mask(y, mask)
        chol = cholesky(self.R)
        z = solve_lower(chol, (y - theta @ self.H.T).T)
        per = -0.5 * jnp.sum(z**2, 0) - jnp.sum(jnp.log(jnp.diagonal(chol)))
        per = per - 0.5 * self.obs_dim * _LOG_2PI
        return jnp.sum(jnp.where(mask, per, 0.0))

    def exact_posterior(self, prior: GMM, y, mask=None) -> GMM:
        return prior.condition_linear_gaussian(self.H, self.R, y, mask)


class NormalVarianceObservations(AbstractObservationModel):
    """y_i ~ N(loc, exp θ), θ = log σ² a scalar (d = 1, obs_dim = 1).

    With a GMM prior on θ the posterior ∝ Σ_k w_k N(θ; μ_k, s_k²) exp(−nθ/2 − S e^{−θ}/2),
    S = Σ(y_i − loc)², is not a GMM. `exact_posterior` tabulates it on `grid_points` uniform
    nodes spanning the mode of each component's posterior term ± `grid_width` prior standard
    deviations (each term is more concentrated than N(mode, s_k²), since its log is strongly
    concave with modulus 1/s_k², so the span holds all but e^{−width²/2} of its mass), and
    normalises by trapezoid quadrature.
    """

    loc: float = eqx.field(static=True, default=0.0)
    grid_points: int = eqx.field(static=True, default=8192)
    grid_width: float = eqx.field(static=True, default=10.0)

    @property
    def param_dim(self) -> int:
        return 1

    @property
    def obs_dim(self) -> int:
        return 1

    def sample(self, key, theta, num):
        eps = jax.random.normal(key, (num, 1), jnp.result_type(float))
        return self.loc + jnp.exp(0.5 * theta) * eps

    def _stats(self, y, mask):
        mask = self._mask(y, mask)
        n = jnp.sum(mask.astype(jnp.result_type(float)))
        s = jnp.sum(jnp.where(mask, (y[:, 0] - self.loc) ** 2, 0.0))
        return n, s

    def _log_lik(self, theta, n, s):
        return -0.5 * n * (_LOG_2PI + theta) - 0.5 * s * jnp.exp(-theta)

    def log_likelihood(self, theta, y, mask=None):
        n, s = self._stats(y, mask)
        return self._log_lik(jnp.asarray(theta)[..., 0], n, s)

    def exact_posterior(self, prior: GMM, y, mask=None) -> GridPosterior:
        if prior.dim != 1:
            raise ValueError(f"NormalVarianceObservations needs a 1-D prior, got dim {prior.dim}")
        n, s = self._stats(y, mask)
        mu, sd = prior.means[:, 0], prior.chol[:, 0, 0]
        # Mode of N(θ; μ, s²)·lik: f'(θ) = −(θ − μ)/s² − n/2 + S e^{−θ}/2 is decreasing and
        # changes sign between μ and the likelihood's maximiser log(S/n): bisect.
        mle = jnp.where(n > 0, jnp.log(jnp.maximum(s, 1e-30) / jnp.maximum(n, 1.0)), mu)
        lo, hi = jnp.minimum(mu, mle), jnp.maximum(mu, mle)

        def grad(theta):
            return -(theta - mu) / sd**2 - 0.5 * n + 0.5 * s * jnp.exp(-theta)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            up = grad(mid) > 0
            return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 200, body, (lo, hi))
        mode = 0.5 * (lo + hi)
        # One uniform grid: the trapezoid rule converges exponentially fast for smooth,
        # rapidly decaying integrands on a uniform grid (an irregular merged grid would not).
        start = jnp.min(mode - self.grid_width * sd)
        stop = jnp.max(mode + self.grid_width * sd)
        points = jnp.linspace(start, stop, self.grid_points, dtype=mu.dtype)
        log_post = prior.log_prob(points[:, None]) + self._log_lik(points, n, s)
        return GridPosterior.from_log_density(points, log_post)


# ---------------------------------------------------------------------- dynamics


class LinearGaussianDynamics(eqx.Module):
    """x' = A x + q, q ~ N(0, Q)."""

    A: Float[Array, "d d"] = eqx.field(converter=_matrix)
    Q: Float[Array, "d d"] = eqx.field(converter=_matrix)

    def __check_init__(self):
        check_ndim("A", self.A, 2, "[d, d]")
        d = self.A.shape[0]
        if self.A.shape != (d, d) or self.Q.shape != (d, d):
            raise ValueError(
                f"A and Q must both be square [d, d], got {self.A.shape} and {self.Q.shape}"
            )
        check_covariance("Q", self.Q, definite=False)

    def push(self, distribution: GMM) -> GMM:
        """Exact: each component goes to (Aμ, AΣAᵀ + Q)."""
        return distribution.push_linear_gaussian(self.A, self.Q)

    def sample(self, key: PRNGKeyArray, x: Float[Array, " d"]) -> Float[Array, " d"]:
        eps = jax.random.normal(key, x.shape, x.dtype)
        return self.A @ x + cholesky(self.Q) @ eps


# ---------------------------------------------------------------------- tasks


class GMMTask(eqx.Module):
    """A prior, the true parameter and its observations (tasks leading when batched).

    `prior`: a GMM (leaves `[*tasks, K, ...]`); `theta` `[*tasks, d]`; `y` `[*tasks, N, m]`
    padded to N points; `mask` `[*tasks, N]` true for the real observations (the first n).
    """

    prior: GMM
    theta: Float[Array, "*tasks d"]
    y: Float[Array, "*tasks N m"]
    mask: Bool[Array, "*tasks N"]

    @property
    def num_observations(self):
        return jnp.sum(self.mask, axis=-1)


class GMMPosteriorTasks(AbstractPrior):
    """Tasks for amortized GMM-prior inference: prior ~ `meta`, θ ~ prior, y | θ ~ `observation`.

    The number of observations n is uniform on {min_observations, …, max_observations}
    (`max_observations=None`: the padded length `num_points` of `sample_task`). `num_features`
    is the parameter dimension d.
    """

    meta: GMMMetaPrior
    observation: AbstractObservationModel
    min_observations: int = eqx.field(static=True)
    max_observations: int | None = eqx.field(static=True)
    num_features: int = eqx.field(static=True)

    def __init__(
        self,
        meta: GMMMetaPrior,
        observation: AbstractObservationModel,
        min_observations: int = 1,
        max_observations: int | None = None,
        num_features: int | None = None,
    ):
        if not isinstance(meta, GMMMetaPrior):
            raise ValueError(f"meta must be a GMMMetaPrior, got {type(meta).__name__}")
        if not isinstance(observation, AbstractObservationModel):
            raise ValueError(
                f"observation must be an observation model, got {type(observation).__name__}"
            )
        if observation.param_dim != meta.dim:
            raise ValueError(
                f"the observation model is for parameters of dimension {observation.param_dim} "
                f"but the meta-prior draws dimension {meta.dim}"
            )
        if num_features is not None and num_features != meta.dim:
            raise ValueError(f"num_features must equal meta.dim={meta.dim}, got {num_features}")
        check_count("min_observations", min_observations, 0)
        if max_observations is not None:
            check_count("max_observations", max_observations, max(min_observations, 1))
        self.meta = meta
        self.observation = observation
        self.min_observations = int(min_observations)
        self.max_observations = None if max_observations is None else int(max_observations)
        self.num_features = meta.dim

    def sample_task(self, key: PRNGKeyArray, num_points: int) -> GMMTask:
        """A task with observations padded to `num_points`."""
        high = num_points if self.max_observations is None else self.max_observations
        if high > num_points or self.min_observations > high:
            raise ValueError(
                f"need min_observations <= max_observations <= num_points, got "
                f"{self.min_observations}, {high}, {num_points}"
            )
        k_prior, k_theta, k_n, k_y = jax.random.split(key, 4)
        prior = self.meta.sample(k_prior)
        theta = prior.sample(k_theta)
        n = jax.random.randint(k_n, (), self.min_observations, high + 1)
        mask = jnp.arange(num_points) < n
        y = self.observation.sample(k_y, theta, num_points)
        return GMMTask(prior, theta, jnp.where(mask[:, None], y, 0.0), mask)

    def exact_posterior(self, task: GMMTask):
        """The exact posterior of one task."""
        return self.observation.exact_posterior(task.prior, task.y, task.mask)
