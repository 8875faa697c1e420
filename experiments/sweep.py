r"""Ablation sweeps: a grid of `--config.*` overrides, one run (and workdir) per grid point,
then one figure comparing them.

  python experiments/sweep.py --script=experiments/search_r1.py \
      --config=experiments/configs/search_r1.py --workdir=runs/lr_sweep \
      --grid=learner.lr=1e-5,3e-5 --grid=actor.group_size=4,8 [--dry_run]

runs the 4 combinations one after the other here, each as
`python SCRIPT --config=CONFIG --workdir=WORKDIR/learner.lr=1e-5,actor.group_size=4
--config.learner.lr=1e-5 --config.actor.group_size=4` (a run that finished is not rerun:
its workdir resumes), then draws WORKDIR/compare.png (`plot.compare_workdirs`). On a cluster,
`--dry_run` prints the commands, one per line, to submit as separate jobs; rerunning the
sweep afterwards (or `plot.py --workdirs=...`) draws the comparison.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """["learner.lr=1e-5,3e-5"] -> [("learner.lr", ["1e-5", "3e-5"])]; a field given twice is an error."""
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        field, sep, values = spec.partition("=")
        if not sep or not field or not values:
            raise ValueError(f"--grid={spec!r}: expected FIELD=V1,V2,... (e.g. learner.lr=1e-5,3e-5)")
        if field in dict(grid):
            raise ValueError(f"--grid names {field!r} twice")
        grid.append((field, [v for v in values.split(",") if v]))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[list[tuple[str, str]]]:
    """Every combination of the grid's values, as [(field, value), ...]."""
    fields = [f for f, _ in grid]
    return [list(zip(fields, combo, strict=True)) for combo in itertools.product(*(vs for _, vs in grid))]


def run_name(point: list[tuple[str, str]]) -> str:
    return ",".join(f"{f}={v}" for f, v in point).replace("/", "_")


def commands(script: str, config: str, workdir: str, grid, extra: list[str] = ()) -> list[tuple[str, list[str]]]:
    """(workdir, argv) of each grid point's run."""
    out = []
    for point in points(grid):
        run_dir = os.path.join(workdir, run_name(point))
        argv = [sys.executable, script, f"--config={config}", f"--workdir={run_dir}", *extra,
                *(f"--config.{f}={v}" for f, v in point)]
        out.append((run_dir, argv))
    return out


if __name__ == "__main__":
    from absl import app, flags

    _SCRIPT = flags.DEFINE_string("script", None, "experiment script, e.g. experiments/search_r1.py", required=True)
    _CONFIG = flags.DEFINE_string("config", None, "config file[:variant] the script takes", required=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "the sweep's directory: one workdir per grid point in it",
                                   required=True)
    _GRID = flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,... (a --config.FIELD override); repeatable")
    _SET = flags.DEFINE_multi_string("set", [], "FIELD=V, an override every run gets; repeatable")
    _METRICS = flags.DEFINE_list("metrics", ["reward"], "metrics compared on the figure")
    _DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the commands (one job each on a cluster); run nothing")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            grid = parse_grid(_GRID.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        if not grid:
            raise app.UsageError("give at least one --grid=FIELD=V1,V2,...")
        runs = commands(_SCRIPT.value, _CONFIG.value, _WORKDIR.value, grid, [f"--config.{s}" for s in _SET.value])
        if _DRY_RUN.value:
            for _, argv in runs:
                print(" ".join(argv[1:]))
            return
        for i, (run_dir, argv) in enumerate(runs, 1):
            print(f"[sweep {i}/{len(runs)}] {os.path.basename(run_dir)}", flush=True)
            result = subprocess.run(argv, cwd=ROOT)
            if result.returncode != 0:
                raise SystemExit(f"sweep: run {os.path.basename(run_dir)} failed (exit {result.returncode}); "
                                 f"its log is above, its workdir {run_dir}")
        from experiments import plot

        print("comparison:", plot.compare_workdirs([d for d, _ in runs], os.path.join(_WORKDIR.value, "compare.png"),
                                                   metrics=tuple(_METRICS.value)), flush=True)

    app.run(main)
