import json

import jax
import numpy as np
import pytest
from scipy import stats

from probnet.distributions import LogUniform
from probnet.pfn import bayesian_mlp_of, nll_by_context, pfn_for_prior
from probnet.priors import BNNPrior, LinearPrior


def _tiny_pfn(prior, num_bars, width, heads):
    return pfn_for_prior(
        prior,
        jax.random.key(0),
        num_bars=num_bars,
        emb_size=width,
        ff_size=width,
        num_layers=1,
        num_heads=heads,
        num_points=8,
        num_border_tasks=100,
    )


def test_bayesian_mlp_of_has_the_bnn_priors_distribution():
    """NUTS on `bayesian_mlp_of(prior)` is exact Bayes only if its prior over y equals the
    BNN prior's: two-sample KS on y at the first point of 3000 draws each, and on a second point
    given the first's function (the joint, through the difference), at level 0.001."""
    prior = BNNPrior(
        1,
        min_depth=2,
        max_depth=2,
        min_width=8,
        max_width=8,
        activations=("tanh",),
        weight_std=1.3,
        noise_std=0.1,
    )
    mlp = bayesian_mlp_of(prior)
    assert mlp.hidden_widths == (8, 8) and mlp.activation == "tanh"
    tasks = prior.sample(jax.random.key(0), 3000, 2)
    params = jax.vmap(mlp.init_params)(jax.random.split(jax.random.key(1), 3000))
    f = jax.vmap(mlp.forward)(params, tasks.x)
    y = f + mlp.noise_std * jax.random.normal(jax.random.key(2), f.shape)
    for a, b in ((tasks.y[:, 0], y[:, 0]), (tasks.y[:, 1] - tasks.y[:, 0], y[:, 1] - y[:, 0])):
        assert stats.ks_2samp(np.asarray(a), np.asarray(b)).pvalue > 1e-3


def test_bayesian_mlp_of_needs_a_fixed_architecture():
    with pytest.raises(ValueError, match="architecture fixed"):
        bayesian_mlp_of(BNNPrior(1, activations=("tanh",), weight_std=1.0, noise_std=0.1))
    with pytest.raises(ValueError, match="architecture fixed"):
        bayesian_mlp_of(
            BNNPrior(
                1,
                min_depth=1,
                max_depth=1,
                min_width=8,
                max_width=8,
                activations=("tanh",),
                noise_std=LogUniform(0.01, 0.1),
            )
        )


def test_nll_by_context_reports_every_method_and_writes_its_plot(tmp_path):
    prior = LinearPrior(1, weight_variance=1.0, noise_variance=0.1)
    model = _tiny_pfn(prior, num_bars=20, width=16, heads=2)
    out = nll_by_context(
        model,
        prior,
        jax.random.key(1),
        num_datasets=6,
        num_points=8,
        context_sizes=(1, 4),
        type2_datasets=3,
        type2_steps=5,
        plot_dir=str(tmp_path),
    )
    for name in ("pfn", "exact", "type2_ml"):
        for k in (1, 4):
            assert np.isfinite(out[f"{name}/nll_k{k}"])
        assert out[f"{name}/seconds_per_posterior"] > 0
    assert out["type2_ml/num_datasets"] == 3 and out["exact/num_datasets"] == 6
    # the PFN scored on the type-II subset is reported beside it
    assert "type2_ml/pfn_nll_k4" in out
    # the paired difference to each baseline is the difference of the means on its datasets
    for k in (1, 4):
        assert out[f"type2_ml/pfn_minus_type2_ml_k{k}"] == pytest.approx(
            out[f"type2_ml/pfn_nll_k{k}"] - out[f"type2_ml/nll_k{k}"], abs=1e-5
        )
        assert out[f"exact/pfn_minus_exact_sem_k{k}"] > 0
    gap = [out[f"pfn/nll_k{k}"] - out[f"exact/nll_k{k}"] for k in (1, 4)]
    assert out["gap_to_exact/mean"] == pytest.approx(np.mean(gap), rel=1e-5)
    saved = json.loads((tmp_path / "nll_by_context.json").read_text())
    assert saved["pfn/nll_k4"] == pytest.approx(out["pfn/nll_k4"])
    assert (tmp_path / "nll_by_context.png").stat().st_size > 0
    per_dataset = np.load(tmp_path / "nll_by_context.npz")
    assert per_dataset["type2_ml"].shape == (3, 2) and per_dataset["pfn"].shape == (6, 2)
    np.testing.assert_allclose(per_dataset["pfn"][:, 1].mean(), out["pfn/nll_k4"], rtol=1e-5)
    assert per_dataset["exact_ks"].tolist() == [1, 4]


def test_nll_by_context_rejects_bad_context_sizes():
    prior = LinearPrior(1)
    model = _tiny_pfn(prior, num_bars=10, width=8, heads=1)
    with pytest.raises(ValueError, match="context sizes"):
        nll_by_context(
            model, prior, jax.random.key(1), num_datasets=2, num_points=8, context_sizes=(8,)
        )
    for sizes in ((2.5,), ()):
        with pytest.raises(ValueError, match="context_sizes must be a non-empty list of integers"):
            nll_by_context(
                model, prior, jax.random.key(1), num_datasets=2, num_points=8, context_sizes=sizes
            )
    with pytest.raises(ValueError, match="nuts_context_sizes"):
        nll_by_context(
            model,
            prior,
            jax.random.key(1),
            num_datasets=2,
            num_points=8,
            context_sizes=(1,),
            type2_ml=False,
            nuts_datasets=1,
            nuts_context_sizes=(2,),
        )


def test_training_keeps_the_borders_and_normalisation_fixed():
    from probnet.pfn import pfn_loss
    from probnet.training import Trainer, TrainerConfig

    prior = LinearPrior(1)
    model = _tiny_pfn(prior, num_bars=10, width=8, heads=1)
    config = TrainerConfig(
        steps=4,
        num_tasks=8,
        num_points=8,
        steps_per_call=2,
        lr=1e-2,
        warmup_steps=0,
        log_every=2,
        progress=False,
    )
    trained = Trainer(pfn_loss, prior, config).fit(model, jax.random.key(1)).model
    for name in ("borders", "x_loc", "x_scale", "y_loc", "y_scale"):
        np.testing.assert_array_equal(getattr(trained, name), getattr(model, name))
    assert not np.allclose(trained.decoder[2], model.decoder[2])  # while the weights move
