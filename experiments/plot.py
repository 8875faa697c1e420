"""Draws a workdir's training curves (metrics.jsonl) to PNG.

  python experiments/plot.py --workdir=runs/search_r1 --metrics=em,search_calls
  # writes runs/search_r1/curves.png: train reward, those env metrics, turns, the share of
  # generated groups trained on and seconds per step
  python experiments/plot.py --workdirs=runs/a,runs/b --metrics=reward,em --out=compare.png
  # several runs (e.g. a sweep's, experiments/sweep.py) on one figure, a line per run
"""

import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentic.paths import as_path  # noqa: E402  (etils.epath: workdirs may be URLs)

CURVES = (("reward", "train reward"), ("turns", "turns"), ("trained_frac", "share of generated groups trained on"),
          ("step_s", "seconds per step"))

# Evals, each drawn only where it was measured (x = RL steps done; the cold start happens before
# step 0, so "as given" and "after the cold start" both sit at 0 and are never joined by a line).
EVAL_SPLITS = (("eval_start", "D", "as given"), ("eval_warm_start", "s", "after the cold start"),
               ("eval_rl", "^:", "during RL"), ("eval", "o", "end"))


def read_metrics(workdir: str) -> list[dict]:
    path = as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a run?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_workdir(workdir: str, out: str | None = None, metrics: tuple[str, ...] = ()) -> str:
    """Draws the run's curves, with the experiment's own `metrics` (e.g. "em") after the reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    curves = CURVES[:1] + tuple((m, m) for m in metrics) + CURVES[1:]
    fig, axes = plt.subplots(2, (len(curves) + 1) // 2, figsize=(4.4 * ((len(curves) + 1) // 2), 7), squeeze=False)
    for ax, (key, title) in zip(axes.flat, curves, strict=False):
        pts = [(r["step"], r[key]) for r in rows if r.get("split") == "train" and key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), "-", label="train (sampled)")
        for split, style, label in EVAL_SPLITS:
            pts = [(r["step"], r[key], r.get("episodes", 0)) for r in rows if r.get("split") == split and key in r]
            if pts:
                xs, ys, ns = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=f"eval {label} ({int(max(ns))} q, greedy)")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = out or os.fspath(as_path(workdir) / "curves.png")
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=80)
    plt.close(fig)
    as_path(out).write_bytes(image.getvalue())  # a local path or a URL (gs://...)
    return out


def compare_workdirs(workdirs: list[str], out: str, metrics: tuple[str, ...] = ("reward",)) -> str:
    """One figure, a panel per metric, a line per run: its train curve, and its evals as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(os.path.basename(os.path.normpath(w)), read_metrics(w)) for w in workdirs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, key in zip(axes.flat, metrics, strict=True):
        for i, (name, rows) in enumerate(runs):
            color = f"C{i % 10}"
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == "train" and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), "-", color=color, label=f"{name} (train)")
            evals = [(r["step"], r[key]) for r in rows if r.get("split", "").startswith("eval") and key in r]
            if evals:
                ax.plot(*zip(*evals, strict=True), "o", color=color, label=f"{name} (eval)")
        ax.set_title(key)
        ax.set_xlabel("RL step")
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    from absl import app, flags

    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory holding metrics.jsonl")
    _WORKDIRS = flags.DEFINE_list("workdirs", [], "several runs to compare on one figure (needs --out)")
    _OUT = flags.DEFINE_string("out", None, "PNG path (default WORKDIR/curves.png)")
    _METRICS = flags.DEFINE_list("metrics", [], "the experiment's env metrics to draw, e.g. em,search_calls")

    def main(argv):
        if bool(_WORKDIR.value) == bool(_WORKDIRS.value):
            raise app.UsageError("give --workdir (one run) or --workdirs (runs to compare)")
        if _WORKDIRS.value:
            if not _OUT.value:
                raise app.UsageError("--workdirs needs --out")
            print(compare_workdirs(_WORKDIRS.value, _OUT.value, tuple(_METRICS.value) or ("reward",)))
        else:
            print(plot_workdir(_WORKDIR.value, _OUT.value, tuple(_METRICS.value)))

    sys.exit(app.run(main))
