"""The launcher on 2 processes (`--config.distributed=True` on CPU, jax.distributed on loopback):
one learner mesh over both processes' devices, one writer of the run's files, checkpoints that
save and resume on both."""

import json
import os
import subprocess
import sys

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(workdir, total_steps: int) -> list[str]:
    """Runs the search_r1 `test` variant as 2 processes x 2 CPU devices; returns their logs."""
    port = portpicker.pick_unused_port()
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(
        [sys.executable, "experiments/search_r1.py", "--config=experiments/configs/search_r1.py:test",
         f"--workdir={workdir}", "--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}",
         "--config.num_processes=2", f"--config.process_id={i}", f"--config.total_steps={total_steps}",
         "--config.eval_every=0", "--config.eval_tasks=0",
         # async: each step takes exactly its share of the batch from the queue (sync mode would also
         # train the groups drained at a pause)
         "--config.sebulba.mode=async", "--config.sebulba.dynamic_sampling=False", "--config.queue.max_lag=4"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
    return logs


@pytest.mark.slow
def test_two_processes_train_one_model_write_once_and_resume(tmp_path):
    workdir = tmp_path / "run"
    logs = launch(workdir, total_steps=1)
    for log in logs:  # one mesh: each process's 2 devices, 4 in all
        assert "learner 4 devices over 2 process(es)" in log, log[-3000:]
    assert sum("done:" in log for log in logs) == 1  # process 0 reports; the other does not
    assert sorted(p.name for p in workdir.iterdir() if p.suffix in (".jsonl", ".json", ".png")) == [
        "config.json", "curves.png", "metrics.jsonl"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]

    logs = launch(workdir, total_steps=2)  # the same workdir: both processes resume at step 1
    for log in logs:
        assert "resumed from checkpoint at step 1" in log, log[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]  # one row per step: a single writer
    # learner.batch_groups (2) is the global batch: each process collected one group of 2 episodes
    for r in train_rows:
        assert (r["batch/trajectories"], r["batch/trajectories_global"]) == (2.0, 4.0), r
