r"""Tool-use math: arithmetic word problems through ToolEnv's calculator, rewarded by the math
checker (`envs/tools/experiment.py`). The same loop as Search-R1 (`agentic.launcher`); only the
env, its tasks and the cold start's scripted policy differ. Episodes are chats (`actor.mode =
"chat"`, `agentic/rollout/chat.py`): the tool instructions are the system message, the model's
turns end at its template's end-of-turn token, and the calculator answers in tool turns.

  python experiments/tool_math.py --config=experiments/configs/tool_math.py[:VARIANT] --workdir=runs/tool_math

Variants:
  default  SmolLM2-135M-Instruct on a 2-core CPU: a short cold start on scripted calculator
           demonstrations, then GRPO (sync, dynamic sampling), within a 14-minute budget. Measured
           at 639ab5b (README "Results"): 13:31 wall; correct 0.000 (16 problems) -> 0.000 after
           the cold start (64) -> 0.547 after 9 GRPO steps (64), 1.0 calculator calls per episode.
  test     a tiny random model, 2 RL steps: the whole loop with real processes, for CI.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.configs import search_r1  # noqa: E402  (the loop's base config)


def cpu_default() -> ml_collections.ConfigDict:
    c = search_r1.cpu_default()
    c.time_budget_s = 14 * 60.0
    c.total_steps = 20
    c.warm_start.demos = 16
    c.warm_start.steps = 2
    c.warm_start.batch = 8
    del c.warm_start.no_search_frac     # Search-R1's demonstrations only (tests/experiments/test_config_reads.py)
    c.env.name = "tools"
    c.env.imports = "envs.tools"
    c.env.kwargs = ml_collections.ConfigDict(
        {"tools": ["calculator"], "max_turns": 2, "instructions_in_prompt": False})
    c.actor.mode = "chat"               # tool results in tool turns of the model's own chat template
    c.actor.max_turns = 3               # a call, then the answer (and one spare turn)
    c.actor.max_new_tokens_per_turn = 40
    c.actor.max_total_tokens = 512
    c.actor.temperature = 0.7           # not a Search-R1 run: the sampling it was measured with
    c.actor.top_p = 1.0
    c.generator.max_len = 512
    c.learner.seq_buckets = (1024,)     # and the learner shape (rows, micro-batches) it was measured with
    c.learner.min_micro_batches = 8
    c.data = ml_collections.ConfigDict({"num_train": 2000, "num_eval": 64, "seed": 0})
    c.eval_tasks = 64
    c.eval_quick_tasks = 16
    c.eval_every = 2
    return c


def test_config() -> ml_collections.ConfigDict:
    c = cpu_default()
    t = search_r1.test_config()
    for section in ("generator", "learner", "queue"):
        c[section] = t[section]
    c.model.name = "tiny"
    c.time_budget_s = 0.0
    c.total_steps = 2
    c.warm_start.demos = 4
    c.warm_start.steps = 1
    c.warm_start.batch = 4
    c.eval_tasks = 4
    c.eval_quick_tasks = 2
    c.checkpoint_every = 1
    c.data.num_train, c.data.num_eval = 64, 8
    c.actor.group_size = 2
    c.actor.concurrent_groups = 4
    c.actor.max_new_tokens_per_turn = 8
    c.sebulba.max_batch_rounds = 2
    return c


VARIANTS = {"": cpu_default, "default": cpu_default, "test": test_config}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = (arg or "").strip()
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of tool_math; choose one of {sorted(v for v in VARIANTS if v)}")
    return VARIANTS[variant]()
