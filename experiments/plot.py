"""Draws a workdir's training curves (metrics.jsonl) to PNG.

  python experiments/plot.py --workdir=runs/search_r1   # writes runs/search_r1/curves.png
"""

import json
import os
import sys

CURVES = (("reward", "train reward"), ("em", "EM"), ("turns", "turns"), ("search_calls", "search calls"),
          ("trained_frac", "share of generated groups trained on"), ("step_s", "seconds per step"))

# Evals, each drawn only where it was measured (x = RL steps done; the cold start happens before
# step 0, so "as given" and "after the cold start" both sit at 0 and are never joined by a line).
EVAL_SPLITS = (("eval_start", "D", "as given"), ("eval_warm_start", "s", "after the cold start"),
               ("eval_rl", "^:", "during RL"), ("eval", "o", "end"))


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a run?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_workdir(workdir: str, out: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.flat, CURVES, strict=False):
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
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    from absl import app, flags

    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory holding metrics.jsonl", required=True)
    _OUT = flags.DEFINE_string("out", None, "PNG path (default WORKDIR/curves.png)")

    def main(argv):
        print(plot_workdir(_WORKDIR.value, _OUT.value))

    sys.exit(app.run(main))
