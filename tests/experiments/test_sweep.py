"""Ablation sweeps: a grid of --config overrides, one workdir each, one comparison figure."""

import json
import os
import subprocess
import sys

import pytest

from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = ["experiments/sweep.py", "--script=experiments/tool_math.py", "--config=experiments/configs/tool_math.py:test"]


def test_grid_points_and_bad_grids():
    grid = sweep.parse_grid(["learner.lr=1e-5,1e-4", "actor.group_size=2,4"])
    assert [sweep.run_name(p) for p in sweep.points(grid)] == [
        "learner.lr=1e-5,actor.group_size=2", "learner.lr=1e-5,actor.group_size=4",
        "learner.lr=1e-4,actor.group_size=2", "learner.lr=1e-4,actor.group_size=4"]
    with pytest.raises(ValueError, match="expected FIELD=V1,V2"):
        sweep.parse_grid(["learner.lr"])
    with pytest.raises(ValueError, match="names 'learner.lr' twice"):
        sweep.parse_grid(["learner.lr=1", "learner.lr=2"])


def test_dry_run_prints_one_command_per_grid_point(tmp_path):
    out = subprocess.run([sys.executable, *SCRIPT, f"--workdir={tmp_path}", "--grid=learner.lr=1e-5,1e-4",
                          "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("experiments/tool_math.py ") for line in lines)
    assert f"--workdir={tmp_path}/learner.lr=1e-5" in lines[0] and lines[0].endswith("--config.learner.lr=1e-5")
    assert not any(tmp_path.iterdir())  # nothing ran


def test_sweep_of_two_values_runs_both_and_draws_the_comparison(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}  # one CPU device
    out = subprocess.run([sys.executable, *SCRIPT, f"--workdir={tmp_path}", "--grid=learner.lr=1e-5,1e-3",
                          "--set=total_steps=1", "--set=warm_start.demos=0", "--set=eval_quick_tasks=0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    for lr in ("1e-5", "1e-3"):
        run = tmp_path / f"learner.lr={lr}"
        assert json.load(open(run / "config.json"))["learner"]["lr"] == float(lr)
        assert any(json.loads(line)["split"] == "train" for line in open(run / "metrics.jsonl"))
    assert (tmp_path / "compare.png").stat().st_size > 1000
