"""Shared test fixtures. Each test module that needs float64 enables it via the `x64` fixture."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
