r"""reasoning-gym arithmetic: `basic_arithmetic` entries (two terms of 1-2 digits, + and -) as
single-turn chat episodes of the `reasoning_gym` adapter (`envs/ecosystem/reasoning_gym.py`), scored by
reasoning-gym's `score_answer`; the answer goes in `<answer></answer>` (reasoning-gym's "simple" system
prompt). The same loop as Search-R1 and tool_math (`agentic.launcher`).

  python experiments/rg_arithmetic.py --config=experiments/configs/rg_arithmetic.py[:VARIANT] \
      --workdir=runs/rg_arithmetic

Variants:
  default  SmolLM2-135M-Instruct on a 2-core CPU: a short cold start on scripted answers, then GRPO
           (sync, dynamic sampling), within a 12-minute budget. Measured at 778bb77 (README
           "Results"), quiet box: 8:56 wall, 20 GRPO steps; score 0.000 (16 problems) -> 0.021
           after the cold start (64; answer format 1.0) -> 0.143 after RL (64).
  test     a tiny random model, 2 RL steps: the whole loop with real processes, for CI.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.configs import search_r1  # noqa: E402  (the loop's base config)


def cpu_default() -> ml_collections.ConfigDict:
    c = search_r1.cpu_default()
    c.time_budget_s = 12 * 60.0
    c.total_steps = 20
    c.warm_start.demos = 16
    c.warm_start.steps = 2
    c.warm_start.batch = 8
    del c.warm_start.no_search_frac     # Search-R1's demonstrations only (tests/experiments/test_config_reads.py)
    c.env.name = "reasoning_gym"
    c.env.imports = "envs.ecosystem.reasoning_gym"
    c.env.kwargs = ml_collections.ConfigDict({"answer_tag": "answer"})
    c.actor.mode = "chat"               # reasoning-gym's system prompt, the question as the user turn
    c.actor.max_turns = 1
    c.actor.max_new_tokens_per_turn = 24
    c.actor.max_total_tokens = 256
    c.actor.temperature = 0.7
    c.actor.top_p = 1.0
    c.generator.max_len = 512
    c.learner.seq_buckets = (256,)
    c.learner.min_micro_batches = 8
    c.data = ml_collections.ConfigDict({
        "num_train": 2000, "num_eval": 160, "seed": 0,  # ~64 of 160 are not train questions
        "dataset_config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                           "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False}})
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
        raise ValueError(f"unknown variant {variant!r} of rg_arithmetic; choose one of "
                         f"{sorted(v for v in VARIANTS if v)}")
    return VARIANTS[variant]()
