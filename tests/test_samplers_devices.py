"""Chains sharded over 4 fake CPU devices give the same draws as on one device.

Runs in a subprocess with `--xla_force_host_platform_device_count=4`, so the rest of the test
session keeps its single device.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from probnet.samplers import hmc, nuts

    assert jax.device_count() == 4, jax.devices()

    def logdensity(x, scale):
        return -0.5 * jnp.sum((x / scale) ** 2)

    # One dimension: no reduction whose order could differ between a 1-chain and a 4-chain
    # vmap, so the draws agree to rounding; in more dimensions 1-ulp differences are amplified
    # by the chaotic early warmup and only the distribution agrees.
    scale = np.array([0.5], np.float32)
    init = np.linspace(-1, 1, 4, dtype=np.float32).reshape(4, 1)
    out = {}
    for name, sampler, kwargs in [
        ("hmc_per_chain", hmc, {"num_integration_steps": 5, "adaptation": "per_chain"}),
        ("nuts_pooled", nuts, {}),
    ]:
        common = dict(data=(scale,), num_warmup=100, num_samples=50, warn=False, **kwargs)
        sharded = sampler(logdensity, init, jax.random.key(0), **common)
        single = sampler(logdensity, init, jax.random.key(0), num_devices=1, **common)
        out[name] = {
            "devices": len(sharded.draws.sharding.device_set),
            "max_abs_diff": float(np.max(np.abs(np.asarray(sharded.draws) - single.draws))),
            "step_size_diff": float(np.max(np.abs(np.asarray(sharded.step_size)
                                                  - single.step_size))),
        }
    print(json.dumps(out))
    """
)


def test_chains_sharded_over_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("hmc_per_chain", "nuts_pooled"):
        assert out[name]["devices"] == 4, out
    # Per-chain adaptation: same keys, same arithmetic, equal up to float rounding.
    assert out["hmc_per_chain"]["max_abs_diff"] < 1e-4, out
    assert out["hmc_per_chain"]["step_size_diff"] < 1e-4, out
    # Pooled adaptation all-gathers the chains each warmup step; the cross-chain mean of the
    # acceptance rates may round differently with the layout, and the warmup amplifies it.
    assert out["nuts_pooled"]["max_abs_diff"] < 1e-2, out
    assert out["nuts_pooled"]["step_size_diff"] < 1e-3, out
