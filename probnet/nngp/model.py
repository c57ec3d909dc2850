"""Scale mixtures of NNGPs: a prior on the last-layer variance σ² of an infinitely wide network.

Given σ², the outputs are a GP with covariance σ²·K̃, K̃ = K + εI (the small noise ε sits inside
the scaled covariance, so the inverse-gamma case is conjugate):

    σ² ~ scale_prior,    y | σ² ~ N(0, σ²·K̃)  (independently for each of C output columns).

Everything about the data enters through three numbers: n (observed values, N·C), the quadratic
form Q = Σ_c y_cᵀK̃⁻¹y_c and log|K̃|; log p(y | σ²) = −(n/2)·log(2πσ²) − (C/2)·log|K̃| − Q/(2σ²).

- `scale_prior=None`: the plain NNGP (σ² = 1); Gaussian predictive.
- `InverseGamma(α, β)`: closed form. σ² | y ~ IG(α + n/2, β + Q/2); the predictive of each
  output is Student-t with 2α + n degrees of freedom, location the GP mean and scale² equal to
  the GP predictive variance times (β + Q/2)/(α + n/2) (a Student-t process).
- any other prior with `log_prob` and `sample` (Burr XII, half-Cauchy, log-normal, gamma, ...):
  self-normalised importance sampling over log σ² (`inference="importance"`, the default) or
  NUTS over log σ² (`inference="nuts"`); the predictive is a mixture of Gaussians.

Multi-output targets `y [N, C]` (e.g. one-hot classes) share the kernel, and by default one σ²
(n = N·C). With `per_output=True` each output column c has its own σ_c² drawn independently from
the scale prior (one variance per output unit of the last layer): every summary above is then
per column (Q_c = y_cᵀK̃⁻¹y_c, n = N) and the scale posteriors are independent. Class
probabilities come from `ScaleMixturePosterior.class_probabilities`.
"""

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr, ndtri
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet._checks import (
    as_float_array,
    check_count,
    check_finite,
    check_inputs_shape,
    check_mask,
    check_ndim,
    check_positive,
    is_traced,
)
from probnet.distributions import (
    AbstractDistribution,
    InverseGamma,
    Normal,
    NormalMixture,
)
from probnet.distributions.scalar import _log1pmx
from probnet.distributions.scale import StudentT, log_gamma_ratio
from probnet.gp import GPPosterior
from probnet.kernels import AbstractKernel
from probnet.linalg import cho_solve, cholesky

__all__ = ["ScaleMixtureNNGP", "ScaleMixturePosterior"]

_INFERENCE = ("auto", "fixed", "closed_form", "importance", "nuts")
_LOG_2PI = math.log(2 * math.pi)
_MIN_IMPORTANCE_ESS = 10.0  # warn below this many effective σ² draws


def _gaussian_loglik(log_s, quad, num_obs, logdet_c):
    """log N(y; 0, σ²K̃) for log σ² = `log_s`, from n, Q and C·log|K̃| (at one σ², e.g. σ² = 1;
    to compare many σ² use `_loglik_offset` + `_relative_loglik`)."""
    return -0.5 * num_obs * (_LOG_2PI + log_s) - 0.5 * logdet_c - 0.5 * quad * jnp.exp(-log_s)


def _ml_log_scale(quad, num_obs):
    """(t₀, has_max): t₀ = log(Q/n), the log σ² that maximises the likelihood, where it has a
    maximum (Q > 0 and n > 0); otherwise (y = 0, or nothing observed) t₀ = 0, has_max False."""
    dtype = jnp.result_type(quad)
    ratio = quad / jnp.maximum(num_obs, 1.0)
    has_max = (num_obs > 0) & (ratio >= jnp.finfo(dtype).tiny) & (ratio <= jnp.finfo(dtype).max)
    return jnp.log(jnp.where(has_max, ratio, 1.0)), has_max


def _xpexpm1(x):
    """x + expm1(−x) = e^{−x} − 1 + x ≥ 0, to round-off relative to the result: for |x| < 0.1
    (where the two terms cancel) as −log1pmx(expm1(−x)), log1pmx(u) = log1p(u) − u; else the
    plain form."""
    small = jnp.abs(x) < 0.1
    xs = jnp.where(small, x, 0.0)  # both branches finite: no NaN in gradients
    xl = jnp.where(small, 1.0, x)
    return jnp.where(small, -_log1pmx(jnp.expm1(-xs)), xl + jnp.expm1(-xl))


def _loglik_offset(quad, num_obs, logdet_c):
    """The constant L₀ with log N(y; 0, σ²K̃) = L₀ + `_relative_loglik`(log σ²): the maximum
    over σ², −(n/2)·(log 2π + t₀ + 1) − (C/2)·log|K̃| at t₀ = log(Q/n), or the value at σ² = 1
    where there is no maximum (Q = 0)."""
    t0, has_max = _ml_log_scale(quad, num_obs)
    # the constant log 2π + 1 and t₀ are not summed before scaling by n/2 (that rounding,
    # times n/2, was the largest error)
    at_one = -0.5 * num_obs * jnp.where(has_max, _LOG_2PI + 1.0, _LOG_2PI) - 0.5 * logdet_c
    return at_one - 0.5 * num_obs * t0


def _relative_loglik(log_s, quad, num_obs):
    """log N(y; 0, σ²K̃) − `_loglik_offset` for log σ² = `log_s`: −(n/2)·(Δ + e^{−Δ} − 1) with
    Δ = log σ² − log(Q/n), computed without cancelling terms of order n (the plain sum
    −(n/2)·log σ² − Q/(2σ²) − … lost 0.03 nats of the log weights at n = 2e5 in float32);
    −(n/2)·log σ² where Q = 0."""
    t0, has_max = _ml_log_scale(quad, num_obs)
    delta = jnp.where(has_max, log_s - t0, 0.0)
    return -0.5 * num_obs * jnp.where(has_max, _xpexpm1(delta), log_s)


def _log_target(log_s, prior, quad, num_obs):
    """log p(log σ²) + log p(y | σ²) − L₀ (`_loglik_offset`): the unnormalised posterior
    density of log σ², free of the constant of order n. Also the NUTS target (module level,
    so that the compiled sampler is cached across calls)."""
    return prior.log_prob(jnp.exp(log_s)) + log_s + _relative_loglik(log_s, quad, num_obs)


def _laplace(prior, quad, num_obs, num_steps: int = 30):
    """Mode and curvature of the log-σ² posterior by damped Newton steps, started at the best
    of the maximum-likelihood value log(Q/n) and a grid of log σ² over [-30, 30] (Q/n alone
    is no start without data, or with y ≈ 0, where the prior sets the scale).
    Returns (mode, standard deviation)."""
    target = lambda s: _log_target(s, prior, quad, num_obs)
    grad = jax.grad(target)
    hess = jax.grad(grad)
    dtype = jnp.result_type(quad)
    fit = _ml_log_scale(quad, num_obs)[0]
    starts = jnp.concatenate([fit[None], jnp.linspace(-30.0, 30.0, 61, dtype=dtype)])
    values = jax.vmap(target)(starts)
    start = starts[jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))]

    def step(s, _):
        g, h = grad(s), hess(s)
        newton = jnp.where(h < 0, -g / jnp.where(h < 0, h, -1.0), jnp.sign(g))
        new = s + jnp.clip(newton, -1.0, 1.0)
        return jnp.where(jnp.isfinite(new), new, s), None

    mode, _ = jax.lax.scan(step, start, None, length=num_steps)
    h = hess(mode)
    std = jnp.where((h < 0) & jnp.isfinite(h), 1.0 / jnp.sqrt(jnp.abs(h)), 1.0)
    return mode, std


def _importance(prior, quad, num_obs, logdet_c, key, num_samples: int, proposal: str = "laplace"):
    """Self-normalised importance sampling over log σ².

    `proposal="laplace"` (default): a mixture of two Normals around the Laplace approximation
    of the log-σ² posterior (mode m, standard deviation τ): N(m, (1.2τ)²) for 90% of the draws
    and a defensive N(m, (4τ)²) for 10%, both stratified, weighted by the deterministic-mixture
    (balance) rule. `proposal="prior"`: σ² drawn from the prior, weights ∝ N(y; 0, σ²K̃).
    The proposal is held fixed under differentiation, so the log-mean weight is a consistent
    estimate of log p(y) whose gradient in the model's parameters is well defined.
    Returns (log σ² draws [S], normalised log weights [S], log-evidence estimate).
    """
    fixed = jax.lax.stop_gradient
    dtype = jnp.result_type(quad)
    if proposal == "prior":
        draws = fixed(prior.sample(key, (num_samples,)))
        log_s = jnp.log(jnp.maximum(draws, jnp.finfo(dtype).tiny))
        log_w = _relative_loglik(log_s, quad, num_obs)
    else:
        mode, std = fixed(_laplace(prior, quad, num_obs))
        num_wide = max(num_samples // 10, 1)
        counts, stds = (num_samples - num_wide, num_wide), (1.2 * std, 4.0 * std)
        parts = []
        for k, count, sd in zip(jax.random.split(key), counts, stds, strict=True):
            u = jnp.arange(count, dtype=dtype) + jax.random.uniform(k, (count,), dtype)
            parts.append(mode + sd * ndtri(u / count))
        log_s = fixed(jnp.concatenate(parts))
        log_q = (
            jax.nn.logsumexp(
                jnp.stack(
                    [
                        math.log(c / num_samples) - 0.5 * ((log_s - mode) / sd) ** 2 - jnp.log(sd)
                        for c, sd in zip(counts, stds, strict=True)
                    ]
                ),
                axis=0,
            )
            - 0.5 * _LOG_2PI
        )
        log_w = _log_target(log_s, prior, quad, num_obs) - log_q
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    # the weights leave out L₀ (of order n, the same for every draw): added back once
    mean_w = jax.nn.logsumexp(log_w) - math.log(num_samples)
    log_evidence = _loglik_offset(quad, num_obs, logdet_c) + mean_w
    return log_s, jax.nn.log_softmax(log_w), log_evidence


@jax.custom_jvp
def _quad_logdet(gram, y2):
    """(y_cᵀK̃⁻¹y_c for each column `[C]`, log|K̃|) of a symmetric positive-definite `gram`
    [N, N], `y2` [N, C].

    Differentiated in closed form, dQ_c = 2α_cᵀdy_c − α_cᵀ dK̃ α_c and dlog|K̃| = tr(K̃⁻¹dK̃)
    (α = K̃⁻¹y): several times cheaper than differentiating through the Cholesky factorisation.
    The rule is a JVP (linear in the tangents), so reverse mode is its transpose and forward
    mode (jvp, Hessians) works too."""
    chol = cholesky(gram)
    return _quad_and_logdet(chol, y2, cho_solve(chol, y2))


def _quad_and_logdet(chol, y2, alpha):
    return jnp.sum(y2 * alpha, axis=0), 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))


@_quad_logdet.defjvp
def _quad_logdet_jvp(primals, tangents):
    (gram, y2), (d_gram, d_y2) = primals, tangents
    chol = cholesky(gram)
    alpha = cho_solve(chol, y2)
    inverse = cho_solve(chol, jnp.eye(chol.shape[0], dtype=chol.dtype))
    d_quad = 2 * jnp.sum(alpha * d_y2, axis=0) - jnp.einsum("ic,ij,jc->c", alpha, d_gram, alpha)
    d_logdet = jnp.sum(inverse * d_gram)
    return _quad_and_logdet(chol, y2, alpha), (d_quad, d_logdet)


def _hermite(num_nodes: int, dtype):
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return jnp.asarray(nodes, dtype), jnp.asarray(np.log(weights / math.sqrt(2 * math.pi)), dtype)


class ScaleMixturePosterior(eqx.Module):
    """A scale mixture of NNGPs conditioned on data.

    `gp` holds the Cholesky factor of K̃ and `alpha` = K̃⁻¹y `[N, C]`; `quad` Q, `num_obs` n and
    `logdet` log|K̃| summarise the data. The posterior of σ² is `scale_posterior` (an
    `InverseGamma`, closed form), or weighted draws `log_scale_draws` / `log_weights`, or σ² = 1
    (`kind="fixed"`). `log_evidence` is log p(y): exact for "fixed" and "inverse_gamma", an
    importance-sampling estimate for "importance", NaN for "nuts". With `per_output`, `quad` is
    `[C]`, the scale posterior has batch `[C]` and the draws and weights are `[C, S]`.
    """

    gp: GPPosterior
    quad: Float[Array, " *C"]
    num_obs: Float[Array, ""]
    logdet: Float[Array, ""]
    log_evidence: Float[Array, ""]
    scale_posterior: InverseGamma | None
    log_scale_draws: Float[Array, "*C S"] | None
    log_weights: Float[Array, "*C S"] | None
    kind: str = eqx.field(static=True)
    vector_targets: bool = eqx.field(static=True)
    per_output: bool = eqx.field(static=True, default=False)

    def mean(self, x_target: Float[Array, "M D"]) -> Float[Array, " M *C"]:
        """Predictive mean: the NNGP mean for every scale prior (σ² cancels)."""
        mean = self.gp.mean(x_target)
        return mean[:, 0] if self.vector_targets else mean

    def gp_variance(self, x_target: Float[Array, "M D"], include_noise: bool = True):
        """The NNGP predictive variance at σ² = 1, `[M]` (shared by all outputs)."""
        return self.gp.variance(x_target, include_noise)

    @property
    def effective_sample_size(self) -> Float[Array, " *C"] | None:
        """Kish's effective sample size 1/Σw² of the importance weights of the σ² draws, `[]`
        or `[C]` (None for the closed-form and fixed posteriors; for NUTS, whose draws are
        equally weighted, it is their count, not an autocorrelation-aware ESS). Far below the
        number of draws means the importance-sampling proposal missed the posterior of σ²."""
        if self.log_weights is None:
            return None
        return jnp.exp(-jax.nn.logsumexp(2 * self.log_weights, axis=-1))

    def _expand(self, v):
        return v if self.vector_targets else v[:, None]

    def predictive(
        self, x_target: Float[Array, "M D"], include_noise: bool = True
    ) -> AbstractDistribution:
        """Marginal predictive of each output at `x_target`: batch `[M]` (vector targets) or
        `[M, C]`. Normal (NNGP), StudentT (inverse-gamma) or NormalMixture over σ² draws.
        `include_noise` gives the predictive of a noisy observation (σ²(k** − k*ᵀK̃⁻¹k* + ε)),
        otherwise of the latent output."""
        x_target = check_inputs_shape("x_target", x_target, self.gp.x_context.shape[1])
        mean = self.mean(x_target)
        var = self.gp_variance(x_target, include_noise)
        if self.kind == "fixed":
            return Normal(mean, jnp.sqrt(self._expand(var)))
        if self.kind == "inverse_gamma":
            post = self.scale_posterior
            ratio = post.scale / post.concentration  # [] or [C]
            scale2 = self._expand(var) * ratio if self.per_output else self._expand(var * ratio)
            df = 2 * post.concentration
            return StudentT(df, mean, jnp.sqrt(scale2))
        log_s, log_w = self.log_scale_draws, self.log_weights  # [S], or [C, S] per output
        if self.per_output and self.vector_targets:
            log_s, log_w = log_s[0], log_w[0]
        scale = jnp.sqrt(self._expand(var)[..., None] * jnp.exp(log_s))  # [M, S] or [M, C, S]
        return NormalMixture(log_w, mean[..., None], scale)

    def sample_scale(self, key: PRNGKeyArray, num_draws: int) -> Float[Array, " num_draws *C"]:
        """Draws of σ² from its posterior (resampled for weighted draws): `[num_draws]`, or
        `[num_draws, C]` with `per_output` (independent across outputs)."""
        check_count("num_draws", num_draws)
        dtype = self.quad.dtype
        if self.kind == "fixed":
            return jnp.ones((num_draws,) + jnp.shape(self.quad), dtype)
        if self.kind == "inverse_gamma":
            return self.scale_posterior.sample(key, (num_draws,))

        def resample(k, log_s, log_w):  # systematic resampling of the weighted draws
            u = (jnp.arange(num_draws, dtype=dtype) + jax.random.uniform(k, (), dtype)) / num_draws
            cdf = jnp.cumsum(jnp.exp(log_w))
            idx = jnp.clip(jnp.searchsorted(cdf, u), 0, log_w.shape[0] - 1)
            return jnp.exp(log_s[idx])

        if self.per_output:
            keys = jax.random.split(key, self.log_weights.shape[0])
            return jax.vmap(resample)(keys, self.log_scale_draws, self.log_weights).T
        return resample(key, self.log_scale_draws, self.log_weights)

    def class_probabilities(
        self,
        key: PRNGKeyArray,
        x_target: Float[Array, "M D"],
        num_scale_draws: int = 64,
        num_nodes: int = 32,
        include_noise: bool = False,
    ) -> Float[Array, "M C"]:
        """P(argmax_c f_c(x*) = c) under the predictive of the C outputs (one-hot regression).

        The class probability is the probability that class c has the largest sampled output.
        Given σ², the C outputs at x* are independent Normals with means μ_c and standard
        deviations s_c = √(σ_c²·v(x*)) (σ_c² = σ² unless `per_output`), so
        P(c | σ²) = E_z[Π_{c′≠c} Φ((μ_c − μ_c′ + s_c·z)/s_c′)], z ~ N(0, 1), is computed by
        Gauss-Hermite quadrature (`num_nodes`, shifted towards the integrand's mass so that
        small probabilities stay accurate); σ² is integrated by Monte Carlo over
        `num_scale_draws` posterior draws. `include_noise` samples noisy outputs y* instead of
        the network outputs f*.
        """
        if self.vector_targets:
            raise ValueError("class_probabilities needs one-hot targets y of shape [N, C]")
        check_count("num_scale_draws", num_scale_draws)
        check_count("num_nodes", num_nodes)
        mean = self.mean(x_target)  # [M, C]
        var = self.gp_variance(x_target, include_noise)  # [M]
        draws = self.sample_scale(key, num_scale_draws)
        nodes, log_w = _hermite(num_nodes, mean.dtype)
        diff = mean[:, :, None] - mean[:, None, :]  # [M, c, c']
        num_classes = mean.shape[1]
        others = ~jnp.eye(num_classes, dtype=bool)

        def given_scale(carry, s2):
            std = jnp.sqrt(var[:, None] * jnp.broadcast_to(s2, (num_classes,)))  # [M, C]
            d = diff / std[:, None, :]  # (μ_c − μ_c′)/s_c′
            ratio = std[:, :, None] / std[:, None, :]  # s_c/s_c′
            lowest = jnp.max(jnp.where(others, -d / ratio, -jnp.inf), axis=-1)
            shift = 0.5 * jnp.maximum(lowest, 0.0)
            z = nodes + shift[..., None]  # [M, c, G]
            terms = log_ndtr(d[..., None] + ratio[..., None] * z[:, :, None, :])  # [M, c, c', G]
            log_prod = jnp.sum(jnp.where(others[None, :, :, None], terms, 0.0), axis=2)
            log_ratio = -shift[..., None] * nodes - 0.5 * shift[..., None] ** 2
            log_p = jax.nn.logsumexp(log_w + log_ratio + log_prod, axis=-1)  # [M, c]
            return carry + jnp.exp(log_p - jax.nn.logsumexp(log_p, axis=-1, keepdims=True)), None

        total, _ = jax.lax.scan(given_scale, jnp.zeros_like(mean), draws)
        return total / num_scale_draws


def _check_targets(x, y, x_name="x", y_name="y"):
    check_ndim(x_name, x, 2, "[N, D]")
    if jnp.ndim(y) not in (1, 2):
        raise ValueError(f"{y_name} must have shape [N] or [N, C], got shape {jnp.shape(y)}")
    if jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of points N, got {x_name} "
            f"{jnp.shape(x)} and {y_name} {jnp.shape(y)}"
        )
    return check_finite(x_name, jnp.asarray(x)), check_finite(y_name, jnp.asarray(y))


class ScaleMixtureNNGP(eqx.Module):
    """NNGP with a prior on the last-layer variance σ²: y | σ² ~ N(0, σ²(K + εI)).

    - `kernel`: any `AbstractKernel` (an `NNGPKernel` from `serial`, or a stationary kernel).
    - `scale_prior`: distribution of σ² with `log_prob` and `sample`, or None for the NNGP.
    - `noise`: ε > 0 (for the NNGP simply the observation-noise variance).
    - `inference`: "auto" (fixed / closed form for `InverseGamma` / importance sampling),
      or "closed_form", "importance", "nuts".
    - `num_samples`: importance-sampling draws, or NUTS draws in total over `num_chains`
      (after `num_warmup` adaptation steps per chain).
    - `proposal`: importance proposal, "laplace" (Normals around the Laplace approximation of
      the log-σ² posterior; default) or "prior" (σ² from the prior, weights ∝ N(y; 0, σ²K̃)).
    - `per_output`: one σ_c² per output column of `y [N, C]`, independent draws from
      `scale_prior` (default False: one σ² shared by all outputs). Not with NUTS.
    """

    kernel: AbstractKernel
    scale_prior: AbstractDistribution | None
    noise: Float[Array, ""] = eqx.field(converter=as_float_array)
    inference: str = eqx.field(static=True, default="auto")
    num_samples: int = eqx.field(static=True, default=1000)
    num_warmup: int = eqx.field(static=True, default=500)
    num_chains: int = eqx.field(static=True, default=4)
    proposal: str = eqx.field(static=True, default="laplace")
    per_output: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.kernel, AbstractKernel):
            raise ValueError(f"kernel must be an AbstractKernel, got {type(self.kernel).__name__}")
        if self.scale_prior is not None and not (
            hasattr(self.scale_prior, "log_prob") and hasattr(self.scale_prior, "sample")
        ):
            raise ValueError(
                "scale_prior must be None or a distribution of σ² with log_prob and sample, got "
                f"{type(self.scale_prior).__name__}"
            )
        if not is_traced(self.noise):
            if jnp.ndim(self.noise) != 0:
                raise ValueError(f"noise must be a scalar, got shape {jnp.shape(self.noise)}")
            check_positive("noise", self.noise)
        if self.inference not in _INFERENCE:
            raise ValueError(f"inference must be one of {_INFERENCE}, got {self.inference!r}")
        if self.inference == "closed_form" and not isinstance(self.scale_prior, InverseGamma):
            raise ValueError(
                "inference='closed_form' needs an InverseGamma scale_prior, got "
                f"{type(self.scale_prior).__name__}"
            )
        if self.inference in ("importance", "nuts") and self.scale_prior is None:
            raise ValueError(f"inference={self.inference!r} needs a scale_prior, got None")
        check_count("num_samples", self.num_samples, 2)
        check_count("num_warmup", self.num_warmup, 0)
        check_count("num_chains", self.num_chains)
        if self.proposal not in ("laplace", "prior"):
            raise ValueError(f"proposal must be 'laplace' or 'prior', got {self.proposal!r}")
        if self.per_output and self.method == "nuts":
            raise ValueError("per_output=True is not supported with inference='nuts'")

    @property
    def method(self) -> str:
        """The inference actually used: "fixed", "closed_form", "importance" or "nuts"."""
        if self.inference != "auto":
            return self.inference
        if self.scale_prior is None:
            return "fixed"
        if isinstance(self.scale_prior, InverseGamma):
            return "closed_form"
        return "importance"

    def _needs_key(self, key):
        if self.method in ("importance", "nuts") and key is None:
            raise ValueError(f"inference {self.method!r} needs a PRNG key: pass key=...")
        return key

    # -- conditioning -------------------------------------------------------------------------

    def _condition_gp(self, x, y2, mask):
        n = x.shape[0]
        gram = self.kernel.gram(x, x) + self.noise * jnp.eye(n, dtype=x.dtype)
        both = mask[:, None] & mask[None, :]
        gram = jnp.where(both, gram, jnp.eye(n, dtype=gram.dtype))
        chol = cholesky(gram)
        y2 = jnp.where(mask[:, None], y2, 0.0)
        alpha = cho_solve(chol, y2)
        gp = GPPosterior(self.kernel, self.noise, x, chol, alpha, mask)
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return (gp, *self._summaries(y2, alpha, mask, logdet))

    def _summaries(self, y2, alpha, mask, logdet):
        """(Q, n, log|K̃| per σ² group) for one shared σ² (Q = Σ_c y_cᵀK̃⁻¹y_c, n = N·C) or,
        with `per_output`, per column (Q_c [C], n = N)."""
        num_points = jnp.sum(mask).astype(logdet.dtype)
        if self.per_output:
            return jnp.sum(y2 * alpha, axis=0), num_points, logdet
        return jnp.sum(y2 * alpha), num_points * y2.shape[1], y2.shape[1] * logdet

    def _closed_form_evidence(self, quad, num_obs, logdet_c):
        a, b = self.scale_prior.concentration, self.scale_prior.scale
        half_n = 0.5 * num_obs
        a_n, b_n = a + half_n, b + 0.5 * quad
        # a·log b − a_n·log b_n as −a·log1p(Q/2b) − (n/2)·log b_n: the plain difference (and
        # that of the log-gammas) loses whole nats in float32 as the prior tightens towards a
        # point mass (a → ∞ with b/a fixed)
        log_ev = (
            log_gamma_ratio(a, half_n) - a * jnp.log1p(0.5 * quad / b) - half_n * jnp.log(b_n)
            - 0.5 * num_obs * _LOG_2PI - 0.5 * logdet_c
        )  # fmt: skip
        return jnp.sum(log_ev), a_n, b_n

    def _importance(self, quad, num_obs, logdet_c, key):
        """Importance sampling over log σ², independently per output with `per_output`."""
        run = lambda q, k: _importance(
            self.scale_prior, q, num_obs, logdet_c, k, self.num_samples, self.proposal
        )
        if jnp.ndim(quad) == 0:
            return run(quad, key)
        log_s, log_w, log_ev = jax.vmap(run)(quad, jax.random.split(key, quad.shape[0]))
        return log_s, log_w, jnp.sum(log_ev)

    def _log_evidence(self, x, y, mask, key, method):
        """log p(y) only (the fitting objective): same value as `_posterior(...).log_evidence`,
        with the closed-form gradient of the Gaussian terms (`_quad_logdet`)."""
        y2 = y[:, None] if y.ndim == 1 else y
        n = x.shape[0]
        gram = self.kernel.gram(x, x) + self.noise * jnp.eye(n, dtype=x.dtype)
        gram = jnp.where(mask[:, None] & mask[None, :], gram, jnp.eye(n, dtype=gram.dtype))
        y2 = jnp.where(mask[:, None], y2, 0.0)
        quad, logdet = _quad_logdet(gram, y2)
        if self.per_output:
            num_obs = jnp.sum(mask).astype(quad.dtype)
            logdet_c = logdet
        else:
            quad = jnp.sum(quad)
            num_obs = jnp.sum(mask).astype(quad.dtype) * y2.shape[1]
            logdet_c = y2.shape[1] * logdet
        if method == "fixed":
            return jnp.sum(_gaussian_loglik(jnp.zeros_like(quad), quad, num_obs, logdet_c))
        if method == "closed_form":
            return self._closed_form_evidence(quad, num_obs, logdet_c)[0]
        return self._importance(quad, num_obs, logdet_c, key)[2]

    def _posterior(self, x, y, mask, key, method):
        vector = y.ndim == 1
        y2 = y[:, None] if vector else y
        gp, quad, num_obs, logdet_c = self._condition_gp(x, y2, mask)
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(gp.chol)))
        common = dict(
            gp=gp, quad=quad, num_obs=num_obs, logdet=logdet, vector_targets=vector,
            per_output=self.per_output,
        )  # fmt: skip
        none = dict(scale_posterior=None, log_scale_draws=None, log_weights=None)
        if method == "fixed":
            log_ev = jnp.sum(_gaussian_loglik(jnp.zeros_like(quad), quad, num_obs, logdet_c))
            return ScaleMixturePosterior(**common, **none, log_evidence=log_ev, kind="fixed")
        if method == "closed_form":
            log_ev, a_n, b_n = self._closed_form_evidence(quad, num_obs, logdet_c)
            return ScaleMixturePosterior(
                **common,
                log_evidence=log_ev,
                scale_posterior=InverseGamma(a_n, b_n),
                log_scale_draws=None,
                log_weights=None,
                kind="inverse_gamma",
            )
        log_s, log_w, log_ev = self._importance(quad, num_obs, logdet_c, key)
        return ScaleMixturePosterior(
            **common,
            log_evidence=log_ev,
            scale_posterior=None,
            log_scale_draws=log_s,
            log_weights=log_w,
            kind="draws",
        )

    def _nuts_posterior(self, x, y, mask, key):
        from probnet import samplers

        post = _posterior_jit(self, x, y, mask, None, "fixed")
        data = (self.scale_prior, post.quad, post.num_obs)
        mode, std = _laplace_jit(*data)
        k_init, k_run = jax.random.split(key)
        init = mode + std * jax.random.normal(k_init, (self.num_chains,), mode.dtype)
        per_chain = -(-self.num_samples // self.num_chains)
        result = samplers.nuts(
            _log_target,
            init,
            k_run,
            data=data,
            num_warmup=self.num_warmup,
            num_samples=per_chain,
            num_chains=self.num_chains,
            warn=False,
        )
        log_s = jnp.reshape(result.draws, (-1,))
        log_w = jnp.full(log_s.shape, -math.log(log_s.shape[0]), log_s.dtype)
        return ScaleMixturePosterior(
            gp=post.gp,
            quad=post.quad,
            num_obs=post.num_obs,
            logdet=post.logdet,
            log_evidence=jnp.asarray(jnp.nan, log_s.dtype),
            scale_posterior=None,
            log_scale_draws=log_s,
            log_weights=log_w,
            kind="draws",
            vector_targets=post.vector_targets,
        )

    def condition(
        self,
        x: Float[Array, "N D"],
        y: Float[Array, " N *C"],
        key: PRNGKeyArray | None = None,
        context_mask: Bool[Array, " N"] | None = None,
    ) -> ScaleMixturePosterior:
        """Condition on data `x [N, D]`, `y [N]` or `[N, C]` (C outputs sharing the kernel and
        σ²). `key` is needed for importance sampling and NUTS. Masked-out points (False in
        `context_mask`) are removed exactly."""
        x, y = _check_targets(x, y)
        self.kernel.check_features(x.shape[1])
        mask = _mask(context_mask, x.shape[0])
        key = self._needs_key(key)
        if self.method == "nuts":
            return self._nuts_posterior(x, y, mask, key)
        post = _posterior_jit(self, x, y, mask, key, self.method)
        if self.method == "importance" and not is_traced(post.log_weights):
            ess = float(jnp.min(post.effective_sample_size))
            if ess < _MIN_IMPORTANCE_ESS:
                warnings.warn(
                    f"importance sampling over σ² kept {ess:.1f} effective draws of "
                    f"{self.num_samples}: the estimate is unreliable (proposal="
                    f"{self.proposal!r}; the Laplace proposal or more num_samples may help)",
                    stacklevel=2,
                )
        return post

    def predict(
        self,
        x: Float[Array, "N D"],
        y: Float[Array, " N *C"],
        x_target: Float[Array, "M D"],
        key: PRNGKeyArray | None = None,
        include_noise: bool = True,
        context_mask: Bool[Array, " N"] | None = None,
    ) -> AbstractDistribution:
        """Posterior predictive at `x_target` (batch `[M]` or `[M, C]`): Normal, StudentT or
        NormalMixture; it has log_prob, mean, variance, cdf, quantile and sample."""
        check_ndim("x_target", x_target, 2, "[M, D]")
        x_target = check_finite("x_target", jnp.asarray(x_target))
        if x_target.shape[1] != jnp.shape(x)[1]:
            raise ValueError(
                f"x_target and x must have the same number of features D, got x_target "
                f"{x_target.shape} and x {jnp.shape(x)}"
            )
        post = self.condition(x, y, key, context_mask)
        return _predictive_jit(post, x_target, include_noise)

    def log_marginal_likelihood(
        self,
        x: Float[Array, "N D"],
        y: Float[Array, " N *C"],
        key: PRNGKeyArray | None = None,
        context_mask: Bool[Array, " N"] | None = None,
    ) -> Float[Array, ""]:
        """log p(y | X) in nats: exact for the NNGP and the inverse-gamma prior, otherwise the
        importance-sampling estimate (also used when `inference="nuts"`)."""
        x, y = _check_targets(x, y)
        self.kernel.check_features(x.shape[1])
        mask = _mask(context_mask, x.shape[0])
        method = "importance" if self.method == "nuts" else self.method
        if method == "importance" and key is None:
            raise ValueError("the importance-sampling marginal likelihood needs key=...")
        return _posterior_jit(self, x, y, mask, key, method).log_evidence

    # -- type-II maximum likelihood -----------------------------------------------------------

    def fit(
        self,
        x: Float[Array, "N D"],
        y: Float[Array, " N *C"],
        key: PRNGKeyArray | None = None,
        num_steps: int = 300,
        learning_rate: float = 0.05,
        fit_kernel: bool = True,
        fit_noise: bool = True,
        fit_prior: bool = True,
        min_noise: float = 1e-6,
        context_mask: Bool[Array, " N"] | None = None,
    ) -> "ScaleMixtureNNGP":
        """Maximise the log marginal likelihood by Adam (optax) over the kernel's parameters
        (W_std, b_std, ...), the noise ε and the scale prior's parameters.

        Parameters that start > 0 are optimised on the log scale (they stay positive; noise
        stays above `min_noise`), others (e.g. a log-normal `loc`, a zero `b_std`) as they are.
        Importance sampling (also for `inference="nuts"`) uses one fixed `key` for every step,
        so the objective is deterministic. A step whose objective or gradient is not finite is
        skipped. Pure and compiled as one `lax.scan`; returns the fitted model.
        """
        check_count("num_steps", num_steps)
        x, y = _check_targets(x, y)
        self.kernel.check_features(x.shape[1])
        mask = _mask(context_mask, x.shape[0])
        method = "importance" if self.method == "nuts" else self.method
        if method == "importance" and key is None:
            raise ValueError("fitting with importance sampling needs key=...")
        spec = jax.tree_util.tree_map(lambda _: False, self)
        spec = eqx.tree_at(
            lambda m: (m.kernel, m.scale_prior),
            spec,
            (
                jax.tree_util.tree_map(
                    lambda v: fit_kernel and eqx.is_inexact_array(v), self.kernel
                ),
                jax.tree_util.tree_map(
                    lambda v: fit_prior and eqx.is_inexact_array(v), self.scale_prior
                ),
            ),
            is_leaf=lambda v: v is None,
        )
        params, static = eqx.partition(self, spec)
        positive = jax.tree_util.tree_map(lambda v: bool(np.all(np.asarray(v) > 0)), params)
        raw = jax.tree_util.tree_map(lambda v, p: jnp.log(v) if p else v, params, positive)
        # the noise is held exactly when not fitted (None: no trainable leaf)
        raw_noise = jnp.log(jnp.maximum(self.noise - min_noise, min_noise)) if fit_noise else None
        model = _fit(
            static, positive, raw, raw_noise, x, y, mask, key, method,
            num_steps, float(learning_rate), float(min_noise),
        )  # fmt: skip
        return model


def _mask(context_mask, n):
    mask = check_mask("context_mask", context_mask, n)
    return jnp.ones((n,), bool) if mask is None else mask


@eqx.filter_jit
def _posterior_jit(model, x, y, mask, key, method):
    return model._posterior(x, y, mask, key, method)


_predictive_jit = eqx.filter_jit(ScaleMixturePosterior.predictive)
class_probabilities = eqx.filter_jit(ScaleMixturePosterior.class_probabilities)


@eqx.filter_jit
def _laplace_jit(prior, quad, num_obs):
    return _laplace(prior, quad, num_obs)


@eqx.filter_jit
def _fit(static, positive, raw, raw_noise, x, y, mask, key, method, num_steps, lr, floor):
    def unpack(raw, raw_noise):
        params = jax.tree_util.tree_map(lambda v, p: jnp.exp(v) if p else v, raw, positive)
        model = eqx.combine(params, static)
        if raw_noise is None:
            return model
        return eqx.tree_at(lambda m: m.noise, model, floor + jnp.exp(raw_noise))

    num_values = x.shape[0] if y.ndim == 1 else x.shape[0] * y.shape[1]

    def loss(trainable):
        model = unpack(*trainable)
        return -model._log_evidence(x, y, mask, key, method) / num_values

    optimiser = optax.adam(lr)

    def step(carry, _):
        trainable, state = carry
        value, grad = jax.value_and_grad(loss)(trainable)
        finite = jnp.isfinite(value)
        for g in jax.tree_util.tree_leaves(grad):
            finite = finite & jnp.all(jnp.isfinite(g))
        grad = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grad)
        updates, new_state = optimiser.update(grad, state, trainable)
        new = optax.apply_updates(trainable, updates)
        # a step whose objective or gradient is not finite is skipped
        keep = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(finite, u, v), a, b)
        return (keep(new, trainable), keep(new_state, state)), value

    trainable = (raw, raw_noise)
    (trainable, _), _ = jax.lax.scan(
        step, (trainable, optimiser.init(trainable)), None, length=num_steps
    )
    return unpack(*trainable)
