"""The second experiment, tool-use math, through the same loop as Search-R1 (no change to agentic/)."""

import asyncio
import dataclasses
import json
import os
import subprocess
import sys

from envs.tools.env import ToolEnv
from envs.tools.experiment import CalculateThenAnswer, demo_policy, experiment
from envs.tools.problems import word_problems
from experiments.configs import tool_math

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_problems_are_seeded_distinct_and_their_expressions_give_the_answer():
    from envs.math.checker import safe_eval

    a, b = word_problems(50, seed=3), word_problems(50, seed=3)
    assert a == b and len({t["prompt"] for t in a}) == 50
    for t in a:
        assert int(safe_eval(t["expression"])) == int(t["answer"]) >= 0


def test_scripted_policy_scores_through_the_tool_env():
    """The cold start's demonstrations: a calculator call, then its result as the answer (reward 1)."""
    task = word_problems(1, seed=0)[0]

    async def episode():
        env = ToolEnv(tools=["calculator"], max_turns=2, instructions_in_prompt=True)
        obs = await env.reset(task)
        assert obs.text.endswith(task["prompt"]) and '"name": "calculator"' in obs.text
        assert obs.info["stop"] == ["</tool_call>", "</answer>"]
        policy = demo_policy([task])(f"<|im_start|>user\n{obs.text}<|im_end|>")
        step = await env.step(policy.act(obs.text))
        assert not step.done and f'"content": "{task["answer"]}"' in step.observation
        return await env.step(policy.act(step.observation))

    last = asyncio.run(episode())
    assert last.done and last.reward == 1.0 and last.info["answer"] == task["answer"]
    assert isinstance(demo_policy([task])(task["prompt"]), CalculateThenAnswer)


def test_scripted_demonstration_scores_in_a_chat_episode():
    """The variants run chat episodes: the demonstration's call is answered in a tool turn of the
    model's chat template (SmolLM2's), its answer scores 1, and only its own tokens train."""
    from agentic import launcher, models
    from agentic.rollout.episode import run_episode
    from agentic.rollout.scripted import ScriptedGenerator

    config = tool_math.get_config("test")
    episode_config = launcher.actor_config(config, eval_mode=True).episode
    assert episode_config.mode == "chat" and not config.env.kwargs.instructions_in_prompt
    task = word_problems(1, seed=0)[0]
    tok = models.load_tokenizer("smollm2-135m-instruct")
    traj = asyncio.run(run_episode(env=ToolEnv(**config.env.kwargs), task=task, tokenizer=tok,
                                   generator=ScriptedGenerator(tok, demo_policy([task])),
                                   config=dataclasses.replace(episode_config, max_new_tokens_per_turn=256),
                                   episode_id="e", group_id="g", seed=0))
    text = tok.decode(traj.tokens.tolist())
    assert traj.reward == 1.0 and traj.metrics["tool_calls"] == 1
    assert f'</tool_call><|im_end|>\n<|im_start|>tool\n{{"name": "calculator", "content": "{task["answer"]}"}}' in text
    assert text.endswith(f"<|im_start|>assistant\n<answer>{task['answer']}</answer><|im_end|>")
    trained = tok.decode(traj.tokens[traj.loss_mask == 1].tolist())
    assert trained.startswith("<tool_call>") and trained.endswith(f"<answer>{task['answer']}</answer><|im_end|>")
    assert "<|im_start|>" not in trained and "tool\n" not in trained


def test_experiment_keeps_held_out_problems_apart():
    e = experiment(tool_math.get_config("test"))
    assert len(e.train_tasks) == 64 and e.eval_tasks
    assert not {t["prompt"] for t in e.train_tasks} & {t["prompt"] for t in e.eval_tasks}


def test_test_variant_runs_the_whole_loop(tmp_path):
    workdir = str(tmp_path / "run")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": ROOT}  # one CPU device
    out = subprocess.run([sys.executable, "experiments/tool_math.py", "--config=experiments/configs/tool_math.py:test",
                          f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "warm start: kept 4 demonstrations of 4" in log  # the scripted calls were answered and scored
    done = json.loads(log.split("done: ", 1)[1].splitlines()[0])
    assert done["steps"] == 2 and "eval_correct_end" in done and done["eval_n_end"] == 4
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all("correct" in r and "tool_calls" in r for r in train)
    assert os.path.exists(os.path.join(workdir, "curves.png"))
