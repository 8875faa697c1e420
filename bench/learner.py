"""Learner benchmark: train-step throughput vs a plain JAX matmul, and compilations over mixed lengths.

    .venv/bin/python bench/learner.py                       # SmolLM2-135M at seq 1024 + compile count
    .venv/bin/python bench/learner.py --micro-batch 1 --steps 2 --compile-updates 100   # 2-core CPU

Part 1 (throughput): a GRPO `Learner` on SmolLM2-135M-Instruct's architecture (random
init: throughput does not depend on the weights; `--load` reads the shipped GGUF
instead) trains on full rows of `--seq` prediction positions (`--micro-batch` rows x
`--num-micro` micro-batches per step). After one warm-up step (compilation) it times
`--steps` calls of `Learner.train` (optimizer steps only, host packing excluded) and
reports real tokens/s and achieved model FLOP/s (6 x matmul params per token plus
causal attention, no remat recompute counted). The baseline is a square matmul in the
same compute dtype, jitted and timed in the same process, before and after the train
steps (the faster of the two counts): the ratio is train FLOP/s / matmul FLOP/s
(target >= 0.5). A second matmul with the model's MLP
shape ([rows*seq, D] x [D, F]) shows what the model's own small dimensions allow.

Part 3 (`--lora`, LoRA memory): the same train step compiled for a full fine-tuning learner
and for a LoRA learner (`--lora-rank` on every attention and MLP projection) at the same
shapes; XLA's `memory_analysis()` of each compiled step (arguments = train state + batch,
temporaries; outputs alias the donated state) and their ratio LoRA / full. Nothing runs:
compile only, so it sizes any model on any host.

    .venv/bin/python bench/learner.py --lora --skip-throughput --compile-updates 0

Part 2 (compilations): a tiny-model learner runs `--compile-updates` updates whose
batches have random group counts and lengths (1 .. 3 length buckets), and reports how
many train-step programs were compiled and the distinct packed shapes seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from agentic import models  # noqa: E402
from agentic.core import Trajectory  # noqa: E402
from agentic.learner import Learner, LearnerConfig  # noqa: E402
from agentic.learner.policy import train_flops  # noqa: E402
from agentic.learner.testing import synthetic_trajectories  # noqa: E402


def matmul_flops_per_s(m: int, k: int, n: int, dtype, iters: int = 10) -> float:
    """FLOP/s of a jitted [m, k] x [k, n] matmul (median of `iters` timed runs after warm-up)."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), dtype)
    b = jax.random.normal(kb, (k, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * m * k * n / float(np.median(times))


def full_rows(rows: int, seq: int, vocab: int) -> list[Trajectory]:
    """`rows` trajectories of seq + 1 tokens (seq prediction positions each), in groups of 4."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(rows):
        mask = np.ones(seq + 1, np.int8)
        mask[:64] = 0  # a 64-token prompt
        out.append(Trajectory(tokens=rng.integers(0, vocab, seq + 1), loss_mask=mask,
                              behavior_logprobs=-rng.random(seq + 1) * mask, reward=float(i % 2),
                              group_id=f"g{i // 4}", policy_version=0, prompt_len=64))
    return out


def throughput(args) -> dict:
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("float32" if on_cpu else "bfloat16")
    if args.load:
        model_config, params, _ = models.load_model(args.model)
    else:
        model_config, params = models.get_config(args.model), None
    rows = args.micro_batch * args.num_micro
    cfg = LearnerConfig(algorithm="grpo", lr=1e-6, micro_batch_size=args.micro_batch, seq_buckets=(args.seq,),
                        pack=False, compute_dtype=dtype, remat=args.remat, mesh_shape=(-1, 1, 1),
                        logprob_chunk_size=args.chunk)
    t = time.perf_counter()
    learner = Learner(cfg, model_config, params)
    init_s = time.perf_counter() - t
    prepared = learner.prepare(full_rows(rows, args.seq, model_config.vocab_size))
    assert prepared.batches[0]["inputs"].shape == (args.num_micro, args.micro_batch, args.seq)
    t = time.perf_counter()
    learner.train(prepared)  # compile + first step
    compile_s = time.perf_counter() - t
    n = args.matmul_n or (2048 if on_cpu else 8192)
    tokens = rows * args.seq
    # the baselines are timed before and after the train steps, and the faster run counts
    # (a conservative ratio on a noisy machine)
    mm = matmul_flops_per_s(n, n, n, jnp.dtype(dtype))
    mm_model = matmul_flops_per_s(tokens, model_config.hidden_size, model_config.intermediate_size, jnp.dtype(dtype))
    times = []
    for _ in range(args.steps):
        m = learner.train(prepared)
        times.append(m["time/train_s"])
    step_s = float(np.median(times))
    flops = train_flops(learner.model_config, [args.seq] * rows)
    mm = max(mm, matmul_flops_per_s(n, n, n, jnp.dtype(dtype)))
    mm_model = max(mm_model, matmul_flops_per_s(tokens, model_config.hidden_size, model_config.intermediate_size,
                                                jnp.dtype(dtype)))
    return {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "model": args.model,
        "compute_dtype": dtype, "remat": args.remat, "seq": args.seq, "rows": rows, "micro_batch": args.micro_batch,
        "init_s": round(init_s, 2), "compile_and_first_step_s": round(compile_s, 2), "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1), "train_flops_per_s": flops / step_s,
        "matmul_n": n, "matmul_flops_per_s": mm, "ratio_vs_matmul": round(flops / step_s / mm, 3),
        "model_shape_matmul_flops_per_s": mm_model, "ratio_vs_model_shape_matmul": round(flops / step_s / mm_model, 3),
    }


def step_memory(args, lora_rank: int) -> dict:
    """Bytes of the compiled train step of a (LoRA or full) learner: memory_analysis() fields."""
    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype if args.dtype != "auto" else ("float32" if on_cpu else "bfloat16")
    model_config = models.get_config(args.model)
    cfg = LearnerConfig(algorithm="grpo", lr=1e-6, micro_batch_size=args.micro_batch, seq_buckets=(args.seq,),
                        pack=False, compute_dtype=dtype, remat=args.remat, mesh_shape=(-1, 1, 1),
                        logprob_chunk_size=args.chunk, lora_rank=lora_rank, lora_alpha=2.0 * max(lora_rank, 1))
    learner = Learner(cfg, model_config)
    prepared = learner.prepare(full_rows(args.micro_batch * args.num_micro, args.seq, model_config.vocab_size))
    b = prepared.batches[0]
    step = learner._train_step(tuple(sorted(b)))  # the learner's own jitted step, compiled, not run
    ma = step.lower(learner.state, learner._to_global(b)).compile().memory_analysis()
    out = {k: int(getattr(ma, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                                            "temp_size_in_bytes")}
    # peak of the step: its inputs (state + batch), temporaries and the outputs that do not reuse a donated input
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["temp_size_in_bytes"] + out["output_size_in_bytes"]
                          - out["alias_size_in_bytes"])
    out["trainable_params"] = sum(int(x.size) for x in jax.tree.leaves(learner.state["trainable"]))
    learner.close()
    return out


def lora_memory(args) -> dict:
    full = step_memory(args, 0)
    lora = step_memory(args, args.lora_rank)
    return {"model": args.model, "seq": args.seq, "rows": args.micro_batch * args.num_micro, "rank": args.lora_rank,
            "full": full, "lora": lora, "ratio": round(lora["total_bytes"] / full["total_bytes"], 3)}


def compile_count(args) -> dict:
    tiny = models.get_config("tiny")
    cfg = LearnerConfig(algorithm="grpo", lr=1e-4, micro_batch_size=8, seq_buckets=(32, 64, 128), mesh_shape=(1, 1, 1))
    learner = Learner(cfg, tiny)
    rng = np.random.default_rng(0)
    shapes = set()
    t = time.perf_counter()
    for step in range(args.compile_updates):
        trajs = synthetic_trajectories(3, step, groups=int(rng.integers(2, 9)), group_size=4, vocab=tiny.vocab_size,
                                       min_len=4, max_len=int(rng.integers(12, 120)))
        m = learner.update(trajs)
        shapes.add((int(m["batch/num_micro"]), int(m["batch/seq_len"])))
    return {"updates": args.compile_updates, "compiles": learner.compile_count(), "distinct_shapes": sorted(shapes),
            "wall_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--load", action="store_true", help="load the model's weights instead of random init")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--num-micro", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 on accelerators, f32 on CPU)")
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--chunk", type=int, default=512, help="logprob_chunk_size")
    ap.add_argument("--matmul-n", type=int, default=0, help="baseline matmul size (default 8192, 2048 on CPU)")
    ap.add_argument("--compile-updates", type=int, default=100, help="0 skips part 2")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--lora", action="store_true", help="part 3: compiled memory of a LoRA vs a full train step")
    ap.add_argument("--lora-rank", type=int, default=16)
    args = ap.parse_args()

    results = {}
    if not args.skip_throughput:
        r = results["throughput"] = throughput(args)
        print(f"[{r['device']} x{r['devices']}] {r['model']} train step, {r['rows']} x {r['seq']} tokens, "
              f"{r['compute_dtype']}{' remat' if r['remat'] else ''}: {r['step_s'] * 1e3:.1f} ms/step, "
              f"{r['tokens_per_s']:.0f} tokens/s, {r['train_flops_per_s'] / 1e12:.2f} TFLOP/s")
        print(f"  baseline matmul {r['matmul_n']}^3 {r['compute_dtype']}: {r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s"
              f"  -> ratio {r['ratio_vs_matmul']:.2f} (target >= 0.5)")
        print(f"  model-shaped matmul [{r['rows'] * r['seq']}, D] x [D, F]: "
              f"{r['model_shape_matmul_flops_per_s'] / 1e12:.2f} TFLOP/s -> ratio {r['ratio_vs_model_shape_matmul']:.2f}")
        print(f"  init {r['init_s']} s, compile + first step {r['compile_and_first_step_s']} s")
    if args.lora:
        r = results["lora_memory"] = lora_memory(args)
        gib = 2.0 ** 30
        for kind in ("full", "lora"):
            m = r[kind]
            print(f"{kind:>4} {r['model']} train step, {r['rows']} x {r['seq']} tokens: {m['total_bytes'] / gib:.2f} GiB "
                  f"(arguments {m['argument_size_in_bytes'] / gib:.2f}, temporaries {m['temp_size_in_bytes'] / gib:.2f}, "
                  f"outputs not aliased {(m['output_size_in_bytes'] - m['alias_size_in_bytes']) / gib:.2f}; "
                  f"{m['trainable_params'] / 1e6:.2f} M trainable params)")
        print(f"LoRA rank {r['rank']} / full fine-tuning memory: {r['ratio']:.3f}")
    if args.compile_updates:
        r = results["compile_count"] = compile_count(args)
        print(f"tiny model, {r['updates']} updates of mixed lengths: {r['compiles']} train-step compilations, "
              f"shapes (num_micro, T) {r['distinct_shapes']}, {r['wall_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
