r"""Search-R1 with RL, Sebulba layout: one command trains an LLM agent that searches.

  python experiments/search_r1.py --config=experiments/configs/search_r1.py[:VARIANT] \
      --workdir=runs/search_r1 [--config.learner.lr=1e-5 ...]

The workdir holds checkpoints, TensorBoard events, metrics.jsonl and plots;
rerunning with the same workdir resumes. Variants and their expected results
are documented in experiments/configs/search_r1.py; the experiment (tasks, env
kwargs, cold-start policy, EM) is envs/search/experiment.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    from envs.search.experiment import experiment
    from experiments import runner

    runner.main(experiment)
