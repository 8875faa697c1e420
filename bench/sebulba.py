"""Sebulba (async) vs synchronous RL: wall-clock for the same learner steps.

  python bench/sebulba.py [--steps 8] [--model tiny] [--variant test]

Runs experiments/search_r1.py twice on the same workload (same config, seed,
number of learner steps): once with `--config.sebulba.mode=async` (actors keep
generating while the learner trains, bounded by the queue and the max policy
lag) and once with `sync` (actors collect a batch, then pause while the learner
trains: the verl-style baseline). Each run is its own process, so both pay the
same compilations. Prints train wall-clock, the ratio sync/async overall and
after the first learner step (which compiles), and the actor and learner idle
fractions of each mode.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(mode: str, args, workdir: str) -> dict:
    cmd = [sys.executable, "experiments/search_r1.py", f"--config=experiments/configs/search_r1.py:{args.variant}",
           f"--workdir={workdir}", f"--config.sebulba.mode={mode}", f"--config.total_steps={args.steps}",
           "--config.eval_tasks=0", f"--config.model.name={args.model}",
           f"--config.actor.group_size={args.group_size}", f"--config.learner.batch_groups={args.batch_groups}",
           f"--config.queue.capacity_groups={args.batch_groups}",
           f"--config.actor.max_new_tokens_per_turn={args.new_tokens}", "--config.checkpoint_every=1000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{(out.stdout + out.stderr)[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    summary = [r for r in rows if r["split"] == "summary"][-1]
    summary["process_s"] = time.monotonic() - start
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--variant", default="test")
    p.add_argument("--model", default="tiny")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--batch-groups", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("sync", "async"):
            results[mode] = run(mode, args, os.path.join(tmp, mode))
            r = results[mode]
            print(f"{mode:>5}: {r['steps']:.0f} learner steps in {r['train_s']:.1f}s (steps 2..{r['steps']:.0f}, "
                  f"after compilation: {r['steady_s']:.1f}s)  learner idle {r['learner_idle_frac']:.0%}  "
                  f"actor idle {r['actor_idle_frac']:.0%}", flush=True)
    ratio = results["sync"]["train_s"] / results["async"]["train_s"]
    steady = results["sync"]["steady_s"] / results["async"]["steady_s"]
    print(f"speedup async vs sync (same {args.steps} learner steps, model {args.model}): {ratio:.2f}x overall, "
          f"{steady:.2f}x after the first (compiling) step")


if __name__ == "__main__":
    main()
