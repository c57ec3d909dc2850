import os
import subprocess
import sys

import pytest

PRINT = "import jax, probnet; print(jax.config.read('jax_cpu_enable_async_dispatch'))"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "False"),
        ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "true"}, "True"),
        ({"PROBNET_KEEP_JAX_CONFIG": "1"}, "True"),
    ],
)
def test_importing_probnet_turns_off_async_cpu_dispatch_unless_told(env, expected):
    names = ("JAX_CPU_ENABLE_ASYNC_DISPATCH", "PROBNET_KEEP_JAX_CONFIG")
    base = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run(
        [sys.executable, "-c", PRINT],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.strip() == expected
