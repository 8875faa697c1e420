"""A learner over 2 processes x 4 CPU devices (jax.distributed on loopback, gloo collectives),
each fed only its own trajectories, equals one process x 8 devices fed all of them."""

import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_update.py")


def run(tmp_path, num_processes, devices, mesh="-1,1,1"):
    out = tmp_path / f"{num_processes}x{devices}_{mesh.replace(',', '_')}"
    out.mkdir()
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    procs = [subprocess.Popen([sys.executable, SCRIPT, "--num-processes", str(num_processes), "--process-id", str(i),
                               "--port", str(port), "--devices", str(devices), f"--mesh={mesh}", "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return [np.load(out / f"process_{i}.npz") for i in range(num_processes)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    (one,) = run(tmp_path_factory.mktemp("one"), 1, 8)
    return one


@pytest.mark.parametrize("mesh", ["-1,1,1", "2,4,1"])
def test_two_processes_with_local_data_equal_one_process(reference, tmp_path, mesh):
    results = run(tmp_path, 2, 4, mesh)
    for r in results:  # every process reports the global loss and grad norm, and holds the same params
        np.testing.assert_allclose(r["loss"], reference["loss"], rtol=1e-5)
        np.testing.assert_allclose(r["grad_norm"], reference["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(r["params"], reference["params"], rtol=1e-5, atol=1e-7)
