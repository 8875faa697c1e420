r"""reasoning-gym arithmetic with RL: a task from a package nobody here wrote (reasoning-gym's
`basic_arithmetic`, its prompt and its scorer), hosted by the `reasoning_gym` adapter.

  python experiments/rg_arithmetic.py --config=experiments/configs/rg_arithmetic.py[:VARIANT] \
      --workdir=runs/rg_arithmetic [--config.learner.lr=1e-5 ...]

The same loop as experiments/search_r1.py and experiments/tool_math.py; the experiment (tasks, the
cold start's scripted answers) is envs/ecosystem/rg_experiment.py. Variants and their measured results
are documented in experiments/configs/rg_arithmetic.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    from envs.ecosystem.rg_experiment import experiment
    from experiments import runner

    runner.main(experiment)
