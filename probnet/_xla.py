"""JAX CPU settings applied when probnet is imported, before JAX starts its CPU backend.

With asynchronous dispatch on the CPU backend, a long PFN training run here stopped for good
with every XLA thread asleep in a futex, the host waiting for the previous step's outputs
(jax-ml/jax#25861 reports the same with callbacks inside compiled loops; probnet's checked
Cholesky has such a callback). probnet therefore turns `jax_cpu_enable_async_dispatch` off.
The training engine scans many steps per call, so synchronous dispatch costs little. Set
`PROBNET_KEEP_JAX_CONFIG=1`, or `JAX_CPU_ENABLE_ASYNC_DISPATCH` yourself, to keep your own
setting. It has no effect on GPU or TPU backends, nor once a CPU backend has started.
"""

import os

import jax

if (
    not os.environ.get("PROBNET_KEEP_JAX_CONFIG")
    and "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ
):
    jax.config.update("jax_cpu_enable_async_dispatch", False)
