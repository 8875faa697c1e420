"""Prefill and decode in one ragged step vs apart: the embedded engine on arrivals while decoding.

A stream of requests (SmolLM2-135M-Instruct, chat prompts of mixed lengths, greedy, a fixed
number of new tokens) arrives in waves every few scheduler steps while earlier ones decode, the
way an agentic rollout's turns arrive. The same engine settings run with `mixed_prefill` on
(the step that admits new requests runs their prefill and the decode step as one forward pass,
admissions capped per step) and off (prefill calls, then a decode step), alternating, best of
--repeats each, after a warm-up run that compiles every shape. Prints, per side: wall seconds,
generated tokens per second, mean time to first token, and the gaps between consecutive
tokens of a running request (p50, p99, max: how long a decoding request is held back by the
prefill of arrivals), and the ratios mixed / apart; checks both sides' tokens are equal.

    .venv/bin/python bench/mixed_step.py                  # 96 requests, waves of 8 every 4 steps
    .venv/bin/python bench/mixed_step.py --wave 24 --every 6
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(core, prompts, waves, new_tokens):
    """Steps the engine, submitting each wave before its step; per-token times of every request."""
    from agentic.core import GenerateRequest, SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    core.flush_cache()
    core.step()
    out, submitted, times, live = {}, {}, {}, {}
    t0 = time.perf_counter()
    step = 0
    while step <= max(waves) or core.busy:
        for i in waves.get(step, []):
            submitted[i] = time.perf_counter()
            times[i] = []
            core.submit(GenerateRequest(prompt_ids=prompts[i], params=params, session_id=str(i)),
                        lambda c, i=i: out.__setitem__(i, c), key=i)
        core.step()
        now = time.perf_counter()
        for key, r in core._live.items():  # requests in flight: how many tokens each has
            live[key] = r
        for key, r in list(live.items()):
            while len(times[key]) < len(r.out):
                times[key].append(now)
            if key in out:
                del live[key]
        step += 1
    wall = time.perf_counter() - t0
    for i in range(len(prompts)):
        core.release(str(i))
    core.step()
    gaps = np.concatenate([np.diff(t) for t in times.values() if len(t) > 1])
    ttft = np.mean([times[i][0] - submitted[i] for i in times])
    tokens = sum(len(c.token_ids) for c in out.values())
    return {"wall": wall, "tok_s": tokens / wall, "ttft": ttft, "gap_p50": np.percentile(gaps, 50),
            "gap_p99": np.percentile(gaps, 99), "gap_max": gaps.max()}, [out[i].token_ids for i in sorted(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--wave", type=int, default=8, help="requests arriving together")
    ap.add_argument("--every", type=int, default=4, help="scheduler steps between waves")
    ap.add_argument("--min-prompt", type=int, default=64)
    ap.add_argument("--max-prompt", type=int, default=480)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--num-slots", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import jax

    from agentic import models
    from agentic.inference.engine import EngineConfig, EngineCore

    config, params, tokenizer = models.load_model(args.model)
    rng = np.random.default_rng(0)
    text = tokenizer.encode(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    prompts = [list(rng.choice(text, int(rng.integers(args.min_prompt, args.max_prompt + 1))))
               for _ in range(args.requests)]
    waves = {w * args.every: list(range(w * args.wave, min((w + 1) * args.wave, args.requests)))
             for w in range(-(-args.requests // args.wave))}
    ec = EngineConfig(num_slots=args.num_slots, max_len=1024, prefill_chunk=512, token_bucket_growth=4)
    print(f"{args.model} on {jax.devices()[0].platform}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
          f"{args.requests} requests of {args.min_prompt}-{args.max_prompt} prompt tokens in waves of "
          f"{args.wave} every {args.every} steps, {args.new_tokens} new tokens each; {ec}")
    sides = {name: EngineCore(config, params, tokenizer, dataclasses.replace(ec, mixed_prefill=on))
             for name, on in (("apart", "off"), ("mixed", "on"))}
    best, tokens = {}, {}
    for name, core in sides.items():  # warm-up: compiles every shape the workload uses
        t = time.perf_counter()
        _, tokens[name] = run(core, prompts, waves, args.new_tokens)
        print(f"{name}: warm-up {time.perf_counter() - t:.1f} s, {sum(core.compile_counts.values())} programs")
    assert tokens["apart"] == tokens["mixed"], "mixed steps changed greedy tokens"
    for _ in range(args.repeats):
        for name, core in sides.items():
            row, _ = run(core, prompts, waves, args.new_tokens)
            if name not in best or row["wall"] < best[name]["wall"]:
                best[name] = row
    for name, row in best.items():
        print(f"{name:6s} wall {row['wall']:6.1f} s  {row['tok_s']:6.1f} tok/s  ttft {row['ttft']:.2f} s  "
              f"token gap p50 {row['gap_p50']:.3f} p99 {row['gap_p99']:.3f} max {row['gap_max']:.3f} s  "
              f"(mixed steps {sides[name].stats['mixed_steps']})")
    a, m = best["apart"], best["mixed"]
    print(f"mixed / apart: tokens/s {m['tok_s'] / a['tok_s']:.2f}x, ttft {m['ttft'] / a['ttft']:.2f}x, "
          f"token gap p99 {m['gap_p99'] / a['gap_p99']:.2f}x, max {m['gap_max'] / a['gap_max']:.2f}x")


if __name__ == "__main__":
    main()
