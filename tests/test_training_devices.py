"""Data parallelism: 4 fake CPU devices give the same training run as 1 device.

Runs in a subprocess with `--xla_force_host_platform_device_count=4`, so the rest of the test
session keeps its single device.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json
    import equinox as eqx
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from probnet.distributions import Uniform
    from probnet.kernels import RBF
    from probnet.priors import GPPrior
    from probnet.training import Trainer, TrainerConfig, draw_batch, make_mesh
    from probnet.training.toy import PointwiseGaussian, gaussian_nll

    assert jax.device_count() == 4, jax.devices()
    prior = GPPrior(kernel=RBF(variance=1.0, lengthscale=0.2), noise_variance=0.01,
                    num_features=1, inputs=Uniform(0.0, 1.0))
    key = jax.random.key(3)
    out = {}

    mesh = make_mesh(4)
    batch = jax.jit(lambda k: draw_batch(prior, k, 16, 8, mesh))(key)
    out["batch_sharded"] = batch.y.sharding.spec == P("data")
    out["shard_shapes"] = [list(s.data.shape) for s in batch.y.addressable_shards]
    reference = prior.sample(key, 16, 8)  # one device, the pipeline's own batch function
    out["batch_matches_prior"] = bool(np.allclose(batch.y, reference.y, rtol=1e-5, atol=1e-6))

    for n in (1, 4):
        cfg = TrainerConfig(steps=6, num_tasks=16, num_points=8, lr=1e-2, warmup_steps=0,
                            log_every=3, checkpoint_every=0, progress=False, plot=False,
                            num_devices=n)
        trainer = Trainer(gaussian_nll, prior, cfg)
        model = PointwiseGaussian(1, width=8, key=jax.random.key(0))
        state = trainer.fit(model, jax.random.key(1))
        leaves = jax.tree.leaves(eqx.filter(state.model, eqx.is_array))
        out[str(n)] = {
            "params": [np.asarray(x).tolist() for x in leaves],
            "devices": [len(x.sharding.device_set) for x in leaves],
            "losses": [r["loss"] for r in trainer.history],
            "traces": trainer.trace_count,
            "caller_model_intact": not any(
                x.is_deleted() for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))
            ),
        }
    print("RESULT", json.dumps(out))
    """
)


def test_four_devices_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    assert out["batch_sharded"]
    assert out["shard_shapes"] == [[4, 8]] * 4  # each device holds its own 4 tasks
    assert out["batch_matches_prior"]
    one, four = out["1"], out["4"]
    assert one["traces"] == four["traces"] == 1
    assert one["caller_model_intact"] and four["caller_model_intact"]  # donation copies
    assert set(one["devices"]) == {1} and set(four["devices"]) == {4}  # replicated parameters
    np.testing.assert_allclose(one["losses"], four["losses"], rtol=1e-5)
    for a, b in zip(one["params"], four["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
