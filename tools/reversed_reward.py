"""Control run: does an experiment's gain come from its reward? Train with GRPO's advantages negated.

  python tools/reversed_reward.py search_r1 --config=experiments/configs/search_r1.py \
      --workdir=runs/search_r1_reversed [--config.FIELD=VALUE ...]
  python tools/reversed_reward.py tool_math --config=experiments/configs/tool_math.py --workdir=...

Everything else is the experiment's own command line and loop: the same cold start, tasks, seeds and
evals. Only the learner's advantage estimator is `grpo_reversed` (-A for GRPO's A), so every
step pushes toward what scored lower in its group. If the held-out score still rises, the rise
came from something other than the reward (the cold start, optimizer noise, the eval); if it
falls where the real run's rises, RL's signal is what moved it (README "Results" reports both
for the default).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPERIMENTS = {"search_r1": "envs.search.experiment", "tool_math": "envs.tools.experiment"}


def register_reversed() -> str:
    """Registers `grpo_reversed` (GRPO's advantages, negated) once; returns its name."""
    from agentic.learner import advantages

    if "grpo_reversed" not in advantages.ESTIMATORS:
        grpo = advantages.ESTIMATORS.get("grpo")

        def grpo_reversed(inputs, **kw):
            adv, returns = grpo(inputs, **kw)
            return -adv, returns

        advantages.ESTIMATORS.add("grpo_reversed", grpo_reversed)
    return "grpo_reversed"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in EXPERIMENTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(EXPERIMENTS)}}} --config=... --workdir=... "
                 f"(got {sys.argv[1:2] or 'nothing'})")
    name = sys.argv.pop(1)
    if any(a.startswith("--config.learner.algorithm") for a in sys.argv):
        sys.exit("--config.learner.algorithm: this control sets it (grpo_reversed)")
    import importlib

    from experiments import runner

    sys.argv.append(f"--config.learner.algorithm={register_reversed()}")
    runner.main(importlib.import_module(EXPERIMENTS[name]).experiment)


if __name__ == "__main__":
    main()
