"""Evaluation of a trained Distribution Transformer against exact posteriors, floors and NUTS.

`evaluate_posteriors` and `evaluate_filtering` are evaluators in the sense of
`probnet.training` (`(model, prior, key, **options) -> dict[str, float]`): name them under
`evaluators:` in an experiment config and `experiments/evaluate.py` runs them, writes
`evaluation.json` and the plots into the run folder.

KL divergences are KL(exact ‖ approximation): by Monte Carlo with draws of the exact posterior
when it is a GMM (linear-Gaussian observations), by quadrature on its grid otherwise.
"""

import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probnet._checks import check_count
from probnet.distributions.gmm import GMM, fit_gmm, gmm_kl_divergence
from probnet.dt.filtering import exact_filter, filter
from probnet.linalg import cholesky
from probnet.priors.gmm import GMMPosteriorTasks, GridPosterior, LinearGaussianDynamics

__all__ = [
    "evaluate_filtering",
    "evaluate_posteriors",
    "gaussian_fit",
    "kl_to_exact",
    "nuts_posterior",
]


def gaussian_fit(distribution) -> GMM:
    """The single Gaussian (a K = 1 GMM) with the distribution's mean and covariance."""
    return GMM(
        log_weights=jnp.zeros((1,), distribution.mean.dtype),
        means=distribution.mean[None],
        chol=cholesky(distribution.covariance)[None],
    )


def kl_to_exact(exact, approximation, key, num_samples: int = 1000):
    """KL(exact ‖ approximation): quadrature for a `GridPosterior`, Monte Carlo for a GMM."""
    if isinstance(exact, GridPosterior):
        return exact.kl_divergence(approximation)
    return gmm_kl_divergence(exact, approximation, key, num_samples)[0]


def _check_prior(prior):
    if not isinstance(prior, GMMPosteriorTasks):
        raise ValueError(f"prior must be a GMMPosteriorTasks, got {type(prior).__name__}")


def _num_points(prior, num_points):
    if num_points is None:
        if prior.max_observations is None:
            raise ValueError("num_points is required when prior.max_observations is None")
        return prior.max_observations
    return int(num_points)


@eqx.filter_jit
def _scores(model, prior, tasks, keys, num_samples):
    def one(task, key):
        exact = prior.exact_posterior(task)
        predicted = model(task.prior, task.y, task.mask)
        # common random numbers: every method is scored on the same draws of the exact posterior
        return {
            "dt": kl_to_exact(exact, predicted, key, num_samples),
            "gaussian": kl_to_exact(exact, gaussian_fit(exact), key, num_samples),
            "prior": kl_to_exact(exact, task.prior, key, num_samples),
            "dt_reconstructed_prior": gmm_kl_divergence(
                task.prior, model.reconstruct(task.prior), key, num_samples
            )[0],
        }

    return jax.vmap(one)(tasks, keys)


def _logdensity(theta, observation, prior, y, mask):
    return prior.log_prob(theta) + observation.log_likelihood(theta, y, mask)


def nuts_posterior(
    prior: GMMPosteriorTasks,
    task,
    key,
    *,
    num_warmup=500,
    num_samples=1000,
    num_chains=4,
    num_components=None,
):
    """NUTS (`probnet.samplers.nuts`) on one task, chains started at prior draws; its draws are
    summarised by a GMM fitted by EM (`fit_gmm`, as many components as the prior, best of 4
    restarts). Returns the fitted GMM, the sampler result, and the seconds of the sampling run
    (warmup and sampling; compilation excluded)."""
    from probnet.samplers import nuts

    k_init, k_run, k_fit = jax.random.split(key, 3)
    init = task.prior.sample(k_init, (num_chains,))
    result = nuts(
        _logdensity,
        init,
        k_run,
        data=(prior.observation, task.prior, task.y, task.mask),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        warn=False,
    )
    draws = jnp.reshape(result.draws, (-1, task.prior.dim))
    k = task.prior.num_components if num_components is None else num_components
    fitted = _fit(draws, k, k_fit)
    return fitted, result, float(result.sampling_time)


@eqx.filter_jit
def _fit(draws, k, key):
    return fit_gmm(draws, k, key)


def _time(fn, *args, repeats=5):
    """Median wall-clock seconds of `fn(*args)` over `repeats` calls, after one to compile."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _slice(tree, start, stop):
    return jax.tree.map(lambda x: x[start:stop], tree)


def _summary(values: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(values)),
        "sem": float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0,
        "median": float(np.median(values)),
        "p90": float(np.quantile(values, 0.9)),
    }


def evaluate_posteriors(
    model,
    prior: GMMPosteriorTasks,
    key,
    *,
    num_problems: int = 2000,
    num_points: int | None = None,
    num_samples: int = 1000,
    batch_size: int = 500,
    nuts_problems: int = 0,
    nuts_warmup: int = 500,
    nuts_samples: int = 1000,
    nuts_chains: int = 4,
    timing_repeats: int = 5,
    plot_dir: str | None = None,
) -> dict[str, float]:
    """KL(exact ‖ ·) over `num_problems` held-out problems for the Distribution Transformer,
    the moment-matched single Gaussian of the exact posterior and the prior itself; NUTS on the
    first `nuts_problems` of them; seconds per posterior of each method.

    Keys of the result (all floats): `kl_<method>_{mean,sem,median,p90}` for method in dt,
    gaussian, prior, dt_reconstructed_prior (the network's zero-observation output against
    the prior); `kl_dt_n<n>_mean` by number of observations; `kl_dt_over_gaussian`;
    `seconds_per_posterior_{dt_batched,dt_single,exact_batched}`; with NUTS:
    `kl_nuts_mean`, `kl_dt_on_nuts_problems_mean`, `seconds_per_posterior_nuts`,
    `nuts_speedup_dt_single`, `nuts_max_rhat`, `nuts_divergences`. Timings are medians over
    `timing_repeats` calls after a compiling one (`timing_repeats=0`: no timings); NUTS times
    exclude compilation.
    """
    _check_prior(prior)
    num_points = _num_points(prior, num_points)
    check_count("num_problems", num_problems)
    check_count("batch_size", batch_size)
    check_count("nuts_problems", nuts_problems, 0)
    check_count("timing_repeats", timing_repeats, 0)
    if nuts_problems > num_problems:
        raise ValueError(
            f"nuts_problems ({nuts_problems}) must be <= num_problems ({num_problems}): NUTS "
            "runs on the first nuts_problems of the evaluated problems"
        )
    k_tasks, k_scores, k_nuts = jax.random.split(key, 3)
    tasks = prior.sample(k_tasks, num_problems, num_points)
    keys = jax.random.split(k_scores, num_problems)
    parts = [
        _scores(
            model, prior, _slice(tasks, i, i + batch_size), keys[i : i + batch_size], num_samples
        )
        for i in range(0, num_problems, batch_size)
    ]
    kl = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    out: dict[str, float] = {"num_problems": float(num_problems)}
    for name, values in kl.items():
        out.update({f"kl_{name}_{k}": v for k, v in _summary(values).items()})
    counts = np.asarray(tasks.num_observations)
    for n in np.unique(counts):
        out[f"kl_dt_n{int(n)}_mean"] = float(np.mean(kl["dt"][counts == n]))
    with np.errstate(divide="ignore", invalid="ignore"):  # inf/NaN if the Gaussian is exact
        ratio = np.float64(out["kl_dt_mean"]) / np.float64(out["kl_gaussian_mean"])
    out["kl_dt_over_gaussian"] = float(ratio)

    if timing_repeats:
        batched = eqx.filter_jit(lambda m, t: jax.vmap(m)(t.prior, t.y, t.mask))
        exact_batched = eqx.filter_jit(lambda p, t: jax.vmap(p.exact_posterior)(t))
        params, static = eqx.partition(model, eqx.is_array)
        single = jax.jit(lambda p, t: eqx.combine(p, static)(t.prior, t.y, t.mask))
        first = _slice(tasks, 0, 1)
        first = jax.tree.map(lambda x: x[0], first)
        out["seconds_per_posterior_dt_batched"] = (
            _time(batched, model, tasks, repeats=timing_repeats) / num_problems
        )
        out["seconds_per_posterior_exact_batched"] = (
            _time(exact_batched, prior, tasks, repeats=timing_repeats) / num_problems
        )
        out["seconds_per_posterior_dt_single"] = _time(single, params, first, repeats=50)

    nuts_fits = []
    if nuts_problems:
        nuts_kl, times, rhats, divergences = [], [], [], 0
        for i, k in enumerate(jax.random.split(k_nuts, nuts_problems)):
            task = jax.tree.map(lambda x, i=i: x[i], tasks)
            fitted, result, seconds = nuts_posterior(
                prior,
                task,
                k,
                num_warmup=nuts_warmup,
                num_samples=nuts_samples,
                num_chains=nuts_chains,
            )
            exact = prior.exact_posterior(task)
            nuts_kl.append(float(_kl_one(exact, fitted, jax.random.fold_in(k, 1), num_samples)))
            times.append(seconds)
            rhats.append(result.max_rhat)
            divergences += int(result.num_divergences)
            nuts_fits.append(fitted)
        nuts_kl = np.asarray(nuts_kl)
        out.update({f"kl_nuts_{k}": v for k, v in _summary(nuts_kl).items()})
        out["kl_dt_on_nuts_problems_mean"] = float(np.mean(kl["dt"][:nuts_problems]))
        out["kl_gaussian_on_nuts_problems_mean"] = float(np.mean(kl["gaussian"][:nuts_problems]))
        out["seconds_per_posterior_nuts"] = float(np.mean(times))
        if timing_repeats:
            out["nuts_speedup_dt_single"] = (
                out["seconds_per_posterior_nuts"] / out["seconds_per_posterior_dt_single"]
            )
            out["nuts_speedup_dt_batched"] = (
                out["seconds_per_posterior_nuts"] / out["seconds_per_posterior_dt_batched"]
            )
        out["nuts_max_rhat"] = float(np.nanmax(rhats))
        out["nuts_divergences"] = float(divergences)
        out["nuts_problems"] = float(nuts_problems)
    if plot_dir is not None:
        _plot_posteriors(model, prior, tasks, kl, nuts_fits, Path(plot_dir) / "dt_posteriors.png")
    return out


@eqx.filter_jit
def _kl_one(exact, q, key, num_samples):
    return kl_to_exact(exact, q, key, num_samples)


# ---------------------------------------------------------------------- sequential


def evaluate_filtering(
    model,
    prior: GMMPosteriorTasks,
    key,
    *,
    A,
    Q,
    num_sequences: int = 500,
    num_steps: int = 6,
    observations_per_step: int = 1,
    num_samples: int = 1000,
    plot_dir: str | None = None,
) -> dict[str, float]:
    """Filtering with the Distribution Transformer against the exact mixture Kalman filter.

    Each sequence: a prior ~ `prior.meta`, θ_1 ~ prior, y_t | θ_t from `prior.observation`
    (`observations_per_step` per step), θ_{t+1} = Aθ_t + q, q ~ N(0, Q). After update t both
    filters' posteriors are compared: `kl_step<t>_{mean,sem}` = KL(exact ‖ DT), `kl_max_step_mean`
    (the worst step's mean), and the floor `kl_gaussian_step<t>_mean` (moment-matched Gaussian
    of the exact filtering posterior); `seconds_per_update_dt`.
    """
    _check_prior(prior)
    dynamics = LinearGaussianDynamics(A, Q)
    observation = prior.observation

    def simulate(key):
        k_prior, k_theta, k_steps = jax.random.split(key, 3)
        p0 = prior.meta.sample(k_prior)
        theta0 = p0.sample(k_theta)

        def step(theta, k):
            k_y, k_q = jax.random.split(k)
            y = observation.sample(k_y, theta, observations_per_step)
            return dynamics.sample(k_q, theta), (theta, y)

        _, (thetas, ys) = jax.lax.scan(step, theta0, jax.random.split(k_steps, num_steps))
        return p0, thetas, ys

    @eqx.filter_jit
    def run(model, keys):
        def one(key):
            k_sim, k_kl = jax.random.split(key)
            p0, thetas, ys = simulate(k_sim)
            dt = filter(model, p0, ys, dynamics)
            exact = exact_filter(p0, ys, dynamics, observation)
            kl_keys = jax.random.split(k_kl, (2, num_steps))
            at = lambda tree, t: jax.tree.map(lambda x: x[t], tree)  # noqa: E731
            kl_dt = jnp.stack(
                [
                    kl_to_exact(at(exact, t), at(dt, t), kl_keys[0, t], num_samples)
                    for t in range(num_steps)
                ]
            )
            kl_gauss = jnp.stack(
                [
                    kl_to_exact(
                        at(exact, t), gaussian_fit(at(exact, t)), kl_keys[1, t], num_samples
                    )
                    for t in range(num_steps)
                ]
            )
            return kl_dt, kl_gauss, (p0, thetas, ys, dt, exact)

        return jax.vmap(one)(keys)

    kl_dt, kl_gauss, example = run(model, jax.random.split(key, num_sequences))
    kl_dt, kl_gauss = np.asarray(kl_dt), np.asarray(kl_gauss)
    out: dict[str, float] = {"num_sequences": float(num_sequences)}
    for t in range(num_steps):
        step = _summary(kl_dt[:, t])
        out[f"kl_step{t + 1}_mean"], out[f"kl_step{t + 1}_sem"] = step["mean"], step["sem"]
        out[f"kl_gaussian_step{t + 1}_mean"] = float(kl_gauss[:, t].mean())
    out["kl_max_step_mean"] = max(out[f"kl_step{t + 1}_mean"] for t in range(num_steps))

    p0, thetas, ys = jax.tree.map(lambda x: x[0], example[:3])
    one_run = eqx.filter_jit(lambda m, p, y: filter(m, p, y, dynamics))
    out["seconds_per_update_dt"] = _time(one_run, model, p0, ys, repeats=20) / num_steps
    if plot_dir is not None:
        _plot_filtering(
            jax.tree.map(lambda x: x[0], example), kl_dt, Path(plot_dir) / "dt_filtering.png"
        )
    return out


# ---------------------------------------------------------------------- plots


def _density_1d(dist, grid):
    return np.exp(np.asarray(dist.log_prob(jnp.asarray(grid)[:, None])))


def _plot_posteriors(model, prior, tasks, kl, nuts_fits, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dim = prior.num_features
    examples = min(3, len(kl["dt"]))
    fig, axes = plt.subplots(1, examples + 1, figsize=(4.2 * (examples + 1), 3.6))
    ax = axes[0]
    floor = 1e-5
    bins = np.logspace(-5, 1, 40)
    for name, label in (("dt", "DT"), ("gaussian", "moment-matched Gaussian"), ("prior", "prior")):
        ax.hist(
            np.maximum(kl[name], floor),
            bins=bins,
            histtype="step",
            lw=1.5,
            label=f"{label} (mean {kl[name].mean():.3g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("KL(exact ‖ ·)")
    ax.set_ylabel("problems")
    ax.legend(fontsize=7)
    for j in range(examples):
        task = jax.tree.map(lambda x, j=j: x[j], tasks)
        exact = prior.exact_posterior(task)
        predicted = model(task.prior, task.y, task.mask)
        ax = axes[j + 1]
        if dim == 1:
            lo = float(jnp.min(task.prior.means - 4 * task.prior.chol[:, :, 0]))
            hi = float(jnp.max(task.prior.means + 4 * task.prior.chol[:, :, 0]))
            grid = np.linspace(lo, hi, 600)
            ax.plot(grid, _density_1d(task.prior, grid), color="0.6", label="prior")
            ax.plot(grid, _density_1d(exact, grid), "k", lw=2, label="exact")
            ax.plot(grid, _density_1d(predicted, grid), "C3--", lw=1.5, label="DT")
            if j < len(nuts_fits):
                ax.plot(grid, _density_1d(nuts_fits[j], grid), "C2:", lw=1.5, label="NUTS+EM")
            ax.axvline(float(task.theta[0]), color="C0", lw=0.8, label="true θ")
        else:
            mean = np.asarray(exact.mean)
            sd = np.sqrt(np.diag(np.asarray(task.prior.covariance)))
            gx, gy = np.meshgrid(
                *(np.linspace(mean[i] - 3 * sd[i], mean[i] + 3 * sd[i], 120) for i in range(2))
            )
            pts = jnp.asarray(np.stack([gx, gy], -1))
            levels = None
            for dist, style, lab in ((exact, "k", "exact"), (predicted, "C3", "DT")):
                z = np.exp(np.asarray(dist.log_prob(pts)))
                levels = z.max() * np.array([0.05, 0.25, 0.5, 0.8]) if levels is None else levels
                ax.contour(gx, gy, z, levels=levels, colors=style, linewidths=1.2)
                ax.plot([], [], color=style, label=lab)
            ax.plot(*np.asarray(task.theta[:2]), "C0x", label="true θ")
        ax.set_title(f"n = {int(task.num_observations)}, KL = {kl['dt'][j]:.3g}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_filtering(example, kl_dt, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p0, thetas, ys, dt, exact = example
    steps = thetas.shape[0]
    fig, axes = plt.subplots(1, steps + 1, figsize=(3.0 * (steps + 1), 3.0))
    for t in range(steps):
        at = lambda tree, t=t: jax.tree.map(lambda x: x[t], tree)  # noqa: E731
        e, d = at(exact), at(dt)
        ax = axes[t]
        if thetas.shape[1] == 1:
            m, s = float(e.mean[0]), float(jnp.sqrt(e.covariance[0, 0]))
            grid = np.linspace(m - 5 * s, m + 5 * s, 400)
            ax.plot(grid, _density_1d(e, grid), "k", lw=2, label="exact")
            ax.plot(grid, _density_1d(d, grid), "C3--", lw=1.5, label="DT")
            ax.axvline(float(thetas[t, 0]), color="C0", lw=0.8, label="true θ")
        else:
            ax.scatter(*np.asarray(e.sample(jax.random.key(t), (300,))).T, s=2, c="k")
            ax.scatter(*np.asarray(d.sample(jax.random.key(t), (300,))).T, s=2, c="C3")
        ax.set_title(f"update {t + 1}", fontsize=9)
        if t == 0:
            ax.legend(fontsize=7)
    ax = axes[-1]
    ax.errorbar(
        np.arange(1, steps + 1),
        kl_dt.mean(0),
        yerr=kl_dt.std(0, ddof=1) / np.sqrt(len(kl_dt)),
        marker="o",
    )
    ax.set_xlabel("update")
    ax.set_ylabel("mean KL(exact ‖ DT)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
