"""A learner over 2 processes x 4 CPU devices (jax.distributed on loopback, gloo collectives),
each fed only its own trajectories, equals one process x 8 devices fed all of them."""

import os
import signal
import subprocess
import sys

import numpy as np
import portpicker
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_update.py")


def run(tmp_path, num_processes, devices, mesh="-1,1,1", from_env=False, extra=(), name="", killed=False):
    """`from_env`: the processes find the coordinator, their count and id in $JAX_* variables.
    `killed`: the processes SIGKILL themselves (after writing their results)."""
    out = tmp_path / (name or f"{num_processes}x{devices}_{mesh.replace(',', '_')}")
    out.mkdir()
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}

    def process_env(i):
        if not from_env:
            return env
        return {**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(num_processes),
                "JAX_PROCESS_ID": str(i)}

    procs = [subprocess.Popen([sys.executable, SCRIPT, "--num-processes", str(num_processes), "--process-id", str(i),
                               "--port", "0" if from_env else str(port), "--devices", str(devices), f"--mesh={mesh}",
                               "--out", str(out), *extra],
                              env=process_env(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        if killed:  # SIGKILL, or SIGABRT from jax's coordination service once a peer was killed first
            assert p.returncode in (-signal.SIGKILL, -signal.SIGABRT) and "SIGKILL" in log, log[-4000:]
        else:
            assert p.returncode == 0, log[-4000:]
    return [np.load(out / f"process_{i}.npz") for i in range(num_processes)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    (one,) = run(tmp_path_factory.mktemp("one"), 1, 8)
    return one


@pytest.mark.parametrize(("mesh", "from_env"), [("-1,1,1", False), ("2,4,1", True)])
def test_two_processes_with_local_data_equal_one_process(reference, tmp_path, mesh, from_env):
    results = run(tmp_path, 2, 4, mesh, from_env)
    for r in results:  # every process reports the global loss and grad norm, and holds the same params
        np.testing.assert_allclose(r["loss"], reference["loss"], rtol=1e-5)
        np.testing.assert_allclose(r["grad_norm"], reference["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(r["params"], reference["params"], rtol=1e-5, atol=1e-7)


def test_a_killed_two_process_run_resumes_each_process_task_stream_exactly(tmp_path):
    """Save at step 2 (each process's task stream state gathered into the checkpoint), SIGKILL both
    processes, restore: step 3 draws the same tasks on each process and reaches the same params as
    a run that was never killed."""
    full = run(tmp_path, 2, 4, extra=["--stream", "full", "--ckpt", str(tmp_path / "ckpt_full")], name="full")
    ckpt = str(tmp_path / "ckpt")
    first = run(tmp_path, 2, 4, extra=["--stream", "first", "--ckpt", ckpt], name="first", killed=True)
    resumed = run(tmp_path, 2, 4, extra=["--stream", "resume", "--ckpt", ckpt], name="resume")
    assert full[0]["task_ids"].tolist() != full[1]["task_ids"].tolist()  # disjoint shards, different streams
    for f, a, b in zip(full, first, resumed, strict=True):
        assert a["task_ids"].tolist() == f["task_ids"][:2].tolist()
        assert b["task_ids"].tolist() == f["task_ids"][2:].tolist()  # each process resumes where it stopped
        np.testing.assert_allclose(b["loss"], f["loss"][2:], rtol=1e-5)
        np.testing.assert_allclose(b["params"], f["params"], rtol=1e-5, atol=1e-7)


def test_distributed_initialization_names_what_is_missing(monkeypatch):
    from agentic import sharding

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"needs \['num_processes', 'process_id'\] too"):
        sharding.initialize_distributed("127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"needs \['process_id'\] too .*JAX_PROCESS_ID"):
        sharding.initialize_distributed("127.0.0.1:1234")
