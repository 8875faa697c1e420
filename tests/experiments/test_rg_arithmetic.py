"""The third experiment, reasoning-gym arithmetic, through the same loop (no change to agentic/)."""

import json
import os
import subprocess
import sys

from envs.ecosystem.rg_experiment import AnswerDirectly, demo_policy, experiment
from experiments.configs import rg_arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tasks_come_from_reasoning_gym_and_held_out_questions_stay_apart():
    import reasoning_gym

    e = experiment(rg_arithmetic.get_config("test"))
    assert len(e.train_tasks) == 64 and len(e.eval_tasks) >= 4
    assert not {t["question"] for t in e.train_tasks} & {t["question"] for t in e.eval_tasks}
    task = e.train_tasks[3]
    entry = reasoning_gym.create_dataset(task["dataset"], seed=task["seed"], size=task["size"], **task["config"])[3]
    assert (entry["question"], entry["answer"]) == (task["question"], task["answer"])
    policy = demo_policy(e.train_tasks)(f"<|im_start|>user\n{task['question']}\n\nGive only your final answer")
    assert isinstance(policy, AnswerDirectly) and policy.act("") == f"<answer>{task['answer']}</answer>"


def test_test_variant_runs_the_whole_loop(tmp_path):
    workdir = str(tmp_path / "run")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}  # one CPU device
    out = subprocess.run([sys.executable, "experiments/rg_arithmetic.py",
                          "--config=experiments/configs/rg_arithmetic.py:test", f"--workdir={workdir}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "warm start: kept 4 demonstrations of 4" in log  # reasoning-gym scored the scripted answers 1
    done = json.loads(log.split("done: ", 1)[1].splitlines()[0])
    assert done["steps"] == 2 and "eval_score_end" in done and done["eval_n_end"] == 4
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all("score" in r for r in train)
