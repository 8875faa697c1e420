r"""Search-R1 with RL, Sebulba layout: one command trains an LLM agent that searches.

  python experiments/search_r1.py --config=experiments/configs/search_r1.py[:VARIANT] \
      --workdir=runs/search_r1 [--config.learner.lr=1e-5 ...]

The workdir holds checkpoints, TensorBoard events, metrics.jsonl and plots;
rerunning with the same workdir resumes. Variants and their expected results
are documented in experiments/configs/search_r1.py.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, metrics and plots")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from agentic import launcher
    from experiments import plot

    stats = launcher.train(_CONFIG.value, _WORKDIR.value)
    plot.plot_workdir(_WORKDIR.value)
    summary = {"steps": stats["steps"], "train_s": round(stats["train_s"], 1), "total_s": round(stats["total_s"], 1),
               "compile_s": round(stats["compile_s"], 1), "trained_frac": round(stats["trained_frac"], 3),
               "stale_frac": round(stats["stale_frac"], 3)}
    # held-out EM at each point, with the number of questions it was measured on
    for key, name in (("eval_start", "start"), ("eval_warm_start", "after_cold_start"), ("eval_end", "end")):
        if "em" in stats.get(key, {}):
            summary[f"eval_em_{name}"] = round(stats[key]["em"], 4)
            summary[f"eval_n_{name}"] = int(stats[key]["episodes"])
    for ev in stats.get("eval_rl", []):
        summary[f"eval_em_step{ev['step']}"] = round(ev["em"], 4)
        summary[f"eval_n_step{ev['step']}"] = int(ev["episodes"])
    print("done:", json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
