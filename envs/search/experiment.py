"""The Search-R1 experiment as the training loop sees it (`agentic.core.Experiment`).

Built from an experiment config (`experiments/configs/search_r1.py`): the tasks of
`config.data`, the synthetic world's size and seed for the env (it must search the world the
tasks come from), held-out files' tasks interleaved across their `data_source`s (so the
in-training evals of the first N cover all 7 test sets, `data.eval_order`), the scripted cold-start policy (search, then answer; a seeded share of
questions answered at once from priors), and exact match on the progress line.
"""

from __future__ import annotations

from agentic.core import Experiment, Trajectory
from envs.search import data as data_lib
from envs.search.policies import policy_for_prompt


def keep_demo(trajectory: Trajectory) -> bool:
    """Searching demonstrations are kept when they found the answer; answer-at-once ones as they are."""
    return trajectory.metrics.get("em", 0.0) > 0 or trajectory.metrics.get("search_calls") == 0


def experiment(config) -> Experiment:
    d = config.data
    train, held_out = data_lib.load_tasks(d.source, eval_source=d.eval_source, world_passages=d.world_passages,
                                          world_seed=d.world_seed, hops=tuple(d.hops))
    if d.source != "synthetic":
        held_out = data_lib.eval_order(held_out, seed=config.seed)
    env_kwargs = {"world_passages": d.world_passages, "world_seed": d.world_seed} if d.source == "synthetic" else {}
    return Experiment(
        train_tasks=train, eval_tasks=held_out, env_kwargs=env_kwargs,
        demo_policy=policy_for_prompt(train, no_search_frac=config.warm_start.no_search_frac, seed=config.seed),
        keep_demo=keep_demo, progress_metrics=("em", "search_calls"))
