"""Checkpoints: a run killed with SIGKILL resumes to bitwise the same params as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 7
KILL_AFTER = 3  # kill once the checkpoint of this step is committed


def _toy(workdir, out, env, **popen):
    cmd = [sys.executable, "-m", "agentic.learner.train_toy", "--workdir", str(workdir), "--steps", str(STEPS),
           "--mesh", "2,1,1", "--out", str(out)]
    return subprocess.Popen(cmd + (["--step_delay", "0.3"] if popen.pop("slow", False) else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
               # the restart compiles the same programs: share them through a cache private to this test
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    full = _toy(tmp_path / "full", tmp_path / "full.npz", env)  # uninterrupted, alongside the one we kill
    killed = _toy(tmp_path / "killed", tmp_path / "killed.npz", env, slow=True)
    committed = tmp_path / "killed" / "ckpt" / str(KILL_AFTER) / "commit_success.txt"
    deadline = time.time() + 240
    while not committed.exists():
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed.npz").exists()  # it really died before the end
    steps_done = sorted(int(p) for p in os.listdir(tmp_path / "killed" / "ckpt") if p.isdigit())
    assert KILL_AFTER in steps_done and max(steps_done) < STEPS

    out = _finish(_toy(tmp_path / "killed", tmp_path / "killed.npz", env))
    assert "restored step" in out, out
    _finish(full)
    full, resumed = np.load(tmp_path / "full.npz"), np.load(tmp_path / "killed.npz")
    assert sorted(full.files) == sorted(resumed.files)
    for k in full.files:
        np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
