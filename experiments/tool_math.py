r"""Tool-use math with RL: an LLM agent learns to call a calculator for word problems.

  python experiments/tool_math.py --config=experiments/configs/tool_math.py[:VARIANT] \
      --workdir=runs/tool_math [--config.learner.lr=1e-5 ...]

The same loop as experiments/search_r1.py; the experiment (problems, ToolEnv with the
calculator, the scripted calculator policy for the cold start) is envs/tools/experiment.py.
Variants and their measured results are documented in experiments/configs/tool_math.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    from envs.tools.experiment import experiment
    from experiments import runner

    runner.main(experiment)
