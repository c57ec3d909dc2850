"""Gaussian-process prior over regression tasks, with optional hyperpriors."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probnet import gp
from probnet._checks import as_float_array, check_count, check_positive, is_traced
from probnet.distributions import AbstractDistribution, Discrete, Normal, NormalMixture, Uniform
from probnet.kernels import AbstractKernel
from probnet.linalg import SMALL_CHOLESKY, cholesky
from probnet.priors._draw import check_inputs, draw_inputs
from probnet.priors.base import AbstractPrior, Task

_HYPER = {"lengthscale": "lengthscale_prior", "variance": "variance_prior"}
# Up to this many points per task, CPU sampling factors the tasks' covariances with probnet's
# vectorised Cholesky loop, never LAPACK: jaxlib 0.10's batched LAPACK Cholesky splits its batch
# over XLA's thread pool and deadlocked a 2-core machine inside the compiled training step (both
# pool threads in spotrf, each waiting for the other's share).
_CPU_LOOP_CHOLESKY = 128


def _mass_at_or_below_zero(prior):
    """P(θ <= 0) of a concrete hyperprior with a cdf; None when it cannot be checked."""
    if prior is None:
        return None
    try:
        mass = prior.cdf(0.0)
    except NotImplementedError:
        return None
    return None if is_traced(mass) else mass


class GPPrior(AbstractPrior):
    """Tasks y = f(x) + ε with f ~ GP(0, kernel), ε ~ N(0, noise_variance), x ~ `inputs`.

    Optional hyperpriors (any probnet scalar distribution: `Gamma`, `Uniform`, `LogUniform`,
    `Discrete`, ...) replace the kernel's `lengthscale` (one draw per lengthscale entry), its
    `variance`, and the noise variance, independently for each task.
    """

    kernel: AbstractKernel
    noise_variance: Float[Array, ""] = eqx.field(converter=as_float_array)
    num_features: int = eqx.field(static=True)
    inputs: AbstractDistribution = eqx.field(default_factory=lambda: Uniform(0.0, 1.0))
    lengthscale_prior: AbstractDistribution | None = None
    variance_prior: AbstractDistribution | None = None
    noise_prior: AbstractDistribution | None = None

    def __check_init__(self):
        check_count("num_features", self.num_features)
        if not is_traced(self.noise_variance):
            check_positive("noise_variance", self.noise_variance)
        if not isinstance(self.kernel, AbstractKernel):
            raise ValueError(f"kernel must be a probnet kernel, got {type(self.kernel).__name__}")
        self.kernel.check_features(self.num_features)
        check_inputs(self.inputs, self.num_features)
        for field, prior_name in _HYPER.items():
            if getattr(self, prior_name) is not None and not hasattr(self.kernel, field):
                raise ValueError(
                    f"{prior_name} needs a kernel with a {field!r} parameter, got "
                    f"{type(self.kernel).__name__}"
                )
        for prior_name in (*_HYPER.values(), "noise_prior"):
            mass = _mass_at_or_below_zero(getattr(self, prior_name))
            if mass is not None and np.any(np.asarray(mass) > 0):
                raise ValueError(
                    f"{prior_name} must put no mass on values <= 0 (they are scales), but "
                    f"P(<= 0) = {np.asarray(mass)}"
                )

    def _hyperpriors(self):
        pairs = [(f, getattr(self, p)) for f, p in _HYPER.items()] + [
            ("noise_variance", self.noise_prior)
        ]
        return [(f, p) for f, p in pairs if p is not None]

    def with_hyperparameters(self, **values) -> tuple[AbstractKernel, Float[Array, ""]]:
        """Kernel and noise variance with the given lengthscale, variance or noise_variance."""
        kernel, noise = self.kernel, values.pop("noise_variance", self.noise_variance)
        for field, value in values.items():
            current = getattr(kernel, field)
            value = jnp.broadcast_to(jnp.asarray(value, current.dtype), current.shape)
            kernel = eqx.tree_at(lambda k, f=field: getattr(k, f), kernel, value)
        return kernel, noise

    def sample_hyperparameters(self, key: PRNGKeyArray) -> tuple[AbstractKernel, Float[Array, ""]]:
        """One draw of (kernel, noise_variance) from the hyperpriors."""
        values = {}
        for (field, prior), k in zip(self._hyperpriors(), jax.random.split(key, 3), strict=False):
            shape = () if field == "noise_variance" else jnp.shape(getattr(self.kernel, field))
            values[field] = prior.sample(k, shape)
        return self.with_hyperparameters(**values)

    def sample_task(self, key: PRNGKeyArray, num_points: int) -> Task:
        task = self.sample_batch(key[None], num_points)
        return jax.tree_util.tree_map(lambda a: a[0], task)

    def sample_batch(self, keys: PRNGKeyArray, num_points: int) -> Task:
        def parts(key):
            k_hyper, k_x, k_y = jax.random.split(key, 3)
            kernel, noise = self.sample_hyperparameters(k_hyper)
            x = draw_inputs(k_x, self.inputs, num_points, self.num_features)
            cov = kernel.gram(x, x) + noise * jnp.eye(num_points, dtype=x.dtype)
            return x, cov, jax.random.normal(k_y, (num_points,), x.dtype)

        x, cov, eps = jax.vmap(parts)(keys)
        cpu = jax.default_backend() == "cpu"
        chol = cholesky(cov, loop_up_to=_CPU_LOOP_CHOLESKY if cpu else SMALL_CHOLESKY)
        y = jnp.einsum("tij,tj->ti", chol, eps)
        return Task(x, y)

    @property
    def has_exact_predictive(self) -> bool:
        return all(isinstance(p, Discrete) for _, p in self._hyperpriors())

    def _grid(self):
        """All hyperparameter combinations of the discrete hyperpriors, with log prior weights."""
        axes, names = [], []
        for field, prior in self._hyperpriors():
            size = 1 if field == "noise_variance" else int(np.size(getattr(self.kernel, field)))
            options = list(
                zip(np.asarray(prior.values), np.log(np.asarray(prior.probs)), strict=True)
            )
            axes.append(list(itertools.product(options, repeat=size)))
            names.append(field)
        for combo in itertools.product(*axes):
            values = {
                n: np.array([v for v, _ in c]).squeeze() for n, c in zip(names, combo, strict=True)
            }
            yield values, sum(lp for c in combo for _, lp in c)

    def predictive(
        self,
        x_context: Float[Array, "N D"],
        y_context: Float[Array, " N"],
        x_target: Float[Array, "M D"],
        context_mask: Bool[Array, " N"] | None = None,
    ) -> Normal | NormalMixture:
        """Exact posterior predictive: a Normal with fixed hyperparameters; with discrete
        hyperpriors, the mixture Σ_j w_j p(y* | D, θ_j), w_j ∝ π_j p(y_D | θ_j)."""
        if not self.has_exact_predictive:
            raise NotImplementedError(
                "GPPrior has an exact predictive only with fixed or Discrete hyperpriors"
            )
        if not self._hyperpriors():
            mean, var = gp.predict(
                self.kernel,
                self.noise_variance,
                x_context,
                y_context,
                x_target,
                context_mask=context_mask,
            )
            return Normal.from_mean_variance(mean, var)
        logits, means, variances = [], [], []
        for values, log_prior in self._grid():
            kernel, noise = self.with_hyperparameters(**values)
            mean, var = gp.predict(
                kernel, noise, x_context, y_context, x_target, context_mask=context_mask
            )
            lml = gp.log_marginal_likelihood(kernel, noise, x_context, y_context, context_mask)
            logits.append(log_prior + lml)
            means.append(mean)
            variances.append(var)
        logits = jnp.broadcast_to(jnp.stack(logits), (x_target.shape[0], len(logits)))
        return NormalMixture(logits, jnp.stack(means, -1), jnp.sqrt(jnp.stack(variances, -1)))
