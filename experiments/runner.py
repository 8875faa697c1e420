"""Runs an experiment through the training loop and prints its summary (the `done:` line).

An experiment script is its docstring and one line, e.g. `experiments/tool_math.py`:

    if __name__ == "__main__":
        runner.main(lambda config: tool_math_experiment(config))   # config -> agentic.core.Experiment

`main` defines `--config=FILE[:VARIANT]` (overrides `--config.SECTION.FIELD=V`, checked first:
a misspelled field fails naming the valid ones), `--workdir` and `--role` (all | learner | actor,
`agentic.launcher.train`, `agentic.remote_actor`), then `run`s: train
(`agentic.launcher`), draw the curves (`plot.py`) and print, as one JSON line, the steps,
where the time went, and each eval's reward and experiment metrics with its episode count.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from agentic import launcher, sharding
from agentic.core import Experiment
from experiments import plot

# The evals a run reports: the model as given, after the cold start, at the end.
EVAL_POINTS = (("eval_start", "start"), ("eval_warm_start", "after_cold_start"), ("eval_end", "end"))


def summarize(stats: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, Any]:
    summary = {"steps": stats["steps"], "train_s": round(stats["train_s"], 1), "total_s": round(stats["total_s"], 1),
               "compile_s": round(stats["compile_s"], 1), "trained_frac": round(stats["trained_frac"], 3),
               "stale_frac": round(stats["stale_frac"], 3)}
    points = [(name, stats[key]) for key, name in EVAL_POINTS if key in stats]
    points += [(f"step{ev['step']}", ev) for ev in stats.get("eval_rl", [])]
    for name, ev in points:
        for m in ("reward", *metrics):
            if m in ev:
                summary[f"eval_{m}_{name}"] = round(ev[m], 4)
        summary[f"eval_n_{name}"] = int(ev["episodes"])
    return summary


def run(config, workdir: str, experiment: Experiment, role: str = "all", actor_id: int = 0) -> dict[str, Any]:
    if role == "actor":  # no workdir of its own: the learner writes the run's files
        from agentic.remote_actor import run_actor

        stats = run_actor(config, experiment, actor_id)
        print("done:", json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}),
              flush=True)
        return stats
    stats = launcher.train(config, workdir, experiment, role=role)
    summary = summarize(stats, experiment.progress_metrics)
    if sharding.is_primary(config.distributed):  # one writer
        plot.plot_workdir(workdir, metrics=experiment.progress_metrics)
        print("done:", json.dumps(summary), flush=True)
    return summary


def main(experiment: Callable[[Any], Experiment]) -> None:
    """The command line of an experiment script: `experiment(config)` builds its Experiment."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    from agentic.config import check_overrides

    config_flag = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                                  lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, metrics and plots")
    role = flags.DEFINE_enum("role", "all", launcher.ROLES,
                             "all: one process (or each of config.distributed's); learner: serve the queue and "
                             "weights to actor processes; actor: generate for a learner (config.remote)")
    actor_id = flags.DEFINE_integer("actor_id", 0, "--role=actor: this actor's number (seeds its task stream)")
    flags.mark_flags_as_required(["config"])

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)
        if role.value != "actor" and not workdir.value:
            raise app.UsageError(f"--workdir is required with --role={role.value}")
        run(config_flag.value, workdir.value, experiment(config_flag.value), role.value, actor_id.value)

    check_overrides(sys.argv)
    app.run(_main)
