"""Test-wide setup: 8 fake CPU devices for sharding tests, set before jax is imported."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs  # noqa: E402,F401  (registers every bundled env and tool for the in-process tests)
