"""Test-wide setup, before jax is imported: 8 fake CPU devices for sharding tests, and one
persistent compilation cache for the whole session.

The cache is jax's own (`jax_compilation_cache_dir`), in a fresh directory per session, and the
subprocesses the tests start inherit it through the environment: the many processes that run the
same tiny programs (roles, restarts after a kill, sweeps) compile each once instead of every time.
A directory set beforehand in $JAX_COMPILATION_CACHE_DIR is used instead (and kept).
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="agentic-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the tiny models compile fast
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envs  # noqa: E402,F401  (registers every bundled env and tool for the in-process tests)
