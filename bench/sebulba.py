"""Sebulba (async) vs synchronous RL: wall-clock for the same learner steps.

  python bench/sebulba.py [--steps 8] [--model tiny] [--variant test] [--layout split|shared]
  python bench/sebulba.py --variant default --model '' --layout shared --steps 4 --as-configured
      # the README's first command's loop (its model, cold start, dynamic sampling, queue),
      # minus the evals: what picks its mode
  python bench/sebulba.py --compare partial --variant default --model '' --layout shared --steps 4 --as-configured
      # async with partial rollouts (weight updates land mid-request, tokens keep their
      # versions) against async without (an update waits for the requests in flight)

Runs experiments/search_r1.py twice on the same workload (same config, seed,
number of learner steps): once with `--config.sebulba.mode=async` (actors keep
generating while the learner trains, bounded by the queue and the max policy
lag) and once with `sync` (actors collect a batch, then pause while the learner
trains: the verl-style baseline). Each run is its own process, so both pay the
same compilations. Prints train wall-clock, the ratio sync/async overall and
after the first learner step (which compiles), and the actor and learner idle
fractions of each mode, and groups trained per second: with dynamic sampling and
sync mode's drain (every informative group drained at a pause is trained on) the
two modes' steps differ in size, so learner steps per second alone does not say
which mode trains more per second.

Layouts (default: split where two CPUs are available):
  shared  the embedded engine and the learner in one process on all CPUs (the
          README's default command). On a small CPU box both compete for the
          same cores, so overlap buys little.
  split   Sebulba's device split on a CPU box: the actors' generator is our
          SGLang-compatible server (`agentic.inference.launch_server`) pinned to
          --actor-cpus, the trainer (learner, actor loop, env host) pinned to
          --learner-cpus; weights reach the server as safetensors through
          /update_weights_from_disk after every step (generator.backend=sglang).
          Both start from the same initial weights (exported before the runs).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agentic.env.local_hosts import free_port  # noqa: E402  (no JAX: this process forks pinned children)


def pinned(cpus: set[int] | None):
    """preexec_fn pinning a child (and everything it starts) to `cpus`."""
    return None if not cpus else (lambda: os.sched_setaffinity(0, cpus))


def cpu_set(spec: str) -> set[int]:
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def start_server(model_dir: str, args, log_path: str) -> tuple[subprocess.Popen, str]:
    """Our SGLang-compatible server on the actor CPUs; returns (process, url) once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "agentic.inference.launch_server", "--model-path", model_dir, "--port", str(port),
           "--max-running-requests", str(args.group_size * args.batch_groups * 2), "--context-length", "512",
           "--warmup"]  # compiles before /health answers, i.e. before the timed run (as SGLang warms up)
    with open(log_path, "w") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=pinned(cpu_set(args.actor_cpus)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"server did not become healthy in 300 s:\n{open(log_path).read()[-3000:]}")


def child_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)
    return env


def export_initial_weights(model: str, out_dir: str) -> None:
    """The weights the trainer starts from (launcher.build_model), as a HF dir the server loads.

    In a child process: this process starts pinned children and must not run JAX threads.
    """
    code = ("import sys; from agentic import launcher, models; "
            "cfg, params, tok = launcher.build_model(sys.argv[1], 'float32'); "
            "models.export_hf(cfg, params, sys.argv[2], tokenizer=tok)")
    subprocess.run([sys.executable, "-c", code, model, out_dir], cwd=ROOT, env=child_env(), check=True)


# --compare: the runs, each (label, sebulba overrides)
COMPARISONS = {
    "sync": [("sync", {"mode": "sync"}), ("async", {"mode": "async"})],
    "partial": [("async", {"mode": "async", "partial_rollouts": False}),
                ("async+partial", {"mode": "async", "partial_rollouts": True})],
}


def run(label: str, sebulba: dict, args, tmp: str, weights_dir: str | None) -> dict:
    name = label.replace("+", "_")  # the run's directories: <tmp>/<name>, <weights_dir>/<name>
    workdir = os.path.join(tmp, name)
    # The same work in both modes: no evals, no time budget; by default also no cold start and
    # every group trained on. --as-configured keeps the variant's own loop settings (its cold
    # start, dynamic sampling, queue capacity and max lag: stale groups dropped count against it).
    cmd = [sys.executable, "experiments/search_r1.py", f"--config=experiments/configs/search_r1.py:{args.variant}",
           f"--workdir={workdir}", f"--config.total_steps={args.steps}",
           "--config.eval_tasks=0", "--config.time_budget_s=0", "--config.checkpoint_every=1000"]
    if not args.as_configured:
        cmd += ["--config.warm_start.demos=0", "--config.sebulba.dynamic_sampling=False",
                f"--config.actor.group_size={args.group_size}", f"--config.learner.batch_groups={args.batch_groups}",
                f"--config.queue.capacity_groups={args.batch_groups}",
                f"--config.actor.max_new_tokens_per_turn={args.new_tokens}"]
    cmd += [f"--config.sebulba.{k}={v}" for k, v in sebulba.items()]
    cmd.append(f"--config.model.name={args.model}")
    server = None
    if weights_dir:
        server, url = start_server(os.path.join(weights_dir, "version_000000"), args, workdir + "_server.log")
        cmd += ["--config.generator.backend=sglang", f"--config.generator.sglang_urls={url}",
                f"--config.generator.weights_dir={os.path.join(weights_dir, name)}"]
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                             preexec_fn=pinned(cpu_set(args.learner_cpus) if weights_dir else None))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    if out.returncode:
        sys.exit(f"{label} run failed:\n{(out.stdout + out.stderr)[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    summary = [r for r in rows if r["split"] == "summary"][-1]
    summary["process_s"] = time.monotonic() - start
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compare", default="sync", choices=sorted(COMPARISONS),
                   help="sync: sync vs async; partial: async without vs with partial rollouts")
    p.add_argument("--variant", default="test")
    p.add_argument("--model", default="tiny", help="model name ('': the variant's)")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--batch-groups", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--as-configured", action="store_true",
                   help="keep the variant's cold start, dynamic sampling and queue (ignores --group-size, "
                        "--batch-groups, --new-tokens): the README's first command's loop, minus evals")
    p.add_argument("--layout", default="split" if len(os.sched_getaffinity(0)) >= 2 else "shared",
                   choices=["shared", "split"])
    p.add_argument("--actor-cpus", default="1", help="split layout: CPUs of the generator server (e.g. 1 or 2-3)")
    p.add_argument("--learner-cpus", default="0", help="split layout: CPUs of the trainer process")
    args = p.parse_args()
    if not args.model:  # the variant's model (the config module imports no JAX)
        from experiments.configs import search_r1

        args.model = search_r1.get_config(args.variant).model.name
    if args.layout == "split":
        overlap = cpu_set(args.actor_cpus) & cpu_set(args.learner_cpus)
        if overlap:
            sys.exit(f"--actor-cpus and --learner-cpus overlap on {sorted(overlap)}")
        missing = (cpu_set(args.actor_cpus) | cpu_set(args.learner_cpus)) - os.sched_getaffinity(0)
        if missing:
            sys.exit(f"CPUs {sorted(missing)} are not available here (have {sorted(os.sched_getaffinity(0))})")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = None
        if args.layout == "split":
            weights_dir = os.path.join(tmp, "weights")
            export_initial_weights(args.model, os.path.join(weights_dir, "version_000000"))
            print(f"split layout: generator server on CPUs {args.actor_cpus}, trainer on CPUs {args.learner_cpus}",
                  flush=True)
        for mode, sebulba in COMPARISONS[args.compare]:
            results[mode] = run(mode, sebulba, args, tmp, weights_dir)
            r = results[mode]
            print(f"{mode:>13}: {r['steps']:.0f} learner steps in {r['train_s']:.1f}s (steps 2..{r['steps']:.0f}, "
                  f"after compilation: {r['steady_s']:.1f}s)  learner idle {r['learner_idle_frac']:.0%}  "
                  f"actor idle {r['actor_idle_frac']:.0%}  groups trained {r.get('trained_frac', 1):.0%}, "
                  f"dropped stale {r.get('stale_frac', 0):.0%}  "
                  f"{groups_per_s(r):.3f} groups trained/s", flush=True)
    if args.compare == "partial":
        base, new = results["async"], results["async+partial"]
        print(f"async with partial rollouts vs without (same {args.steps} learner steps, model {args.model}, "
              f"{args.layout} layout): groups trained per second {groups_per_s(new) / groups_per_s(base):.2f}x, "
              f"train wall-clock {base['train_s'] / new['train_s']:.2f}x faster, stale groups dropped "
              f"{new.get('stale_frac', 0):.0%} vs {base.get('stale_frac', 0):.0%}, model tokens trained on from an "
              f"older version {new.get('stale_token_frac', 0):.1%} vs {base.get('stale_token_frac', 0):.1%}")
        return
    ratio = results["sync"]["train_s"] / results["async"]["train_s"]
    steady = results["sync"]["steady_s"] / results["async"]["steady_s"]
    print(f"speedup async vs sync (same {args.steps} learner steps, model {args.model}, {args.layout} layout): "
          f"{ratio:.2f}x overall, {steady:.2f}x after the first (compiling) step; "
          f"groups trained per second async/sync {groups_per_s(results['async']) / groups_per_s(results['sync']):.2f}x")


def groups_per_s(summary: dict) -> float:
    """Groups the learner trained on per second of the training loop."""
    return summary["groups_trained"] / max(summary["train_s"], 1e-9)


if __name__ == "__main__":
    main()
