"""Model benchmark: SmolLM2-135M-Instruct GGUF load time, forward tokens/s, achieved FLOP/s vs a matmul.

    .venv/bin/python bench/model.py                     # f32, batch 8 x 256 (about a minute on 2 CPU cores)
    .venv/bin/python bench/model.py --dtype bfloat16 --grad --decode

Measured in one run, on whatever backend JAX picks:
  * load: `load_model("smollm2-135m-instruct")` (parse GGUF, dequantize Q4_1/Q8_0, build the
    tokenizer, device_put every tensor), first and second call;
  * forward: jitted `forward` (full logits) at batch x seq tokens, and `token_logprobs` (the
    learner's chunked path); with --grad also jax.grad of the summed log-probs (3x the FLOPs);
  * baseline: a jitted square matmul in the same dtype, sized like the model's largest matmul work;
    the ratio model FLOP/s / matmul FLOP/s says how much of the attainable matmul rate the model
    reaches (FLOPs counted as 2 x matmul params x tokens + causal attention, see
    ModelConfig.flops_per_token);
  * with --decode: KV-cache prefill + greedy decode tokens/s at the same batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from agentic import models as M  # noqa: E402


def timeit(fn, *args, iters: int, warmup: int = 1):
    """(compile+first-call seconds, best seconds per call over `iters`; inf when iters == 0)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, min(times) if times else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--matmul", type=int, default=2048, help="baseline matmul size n (n x n @ n x n)")
    ap.add_argument("--grad", action="store_true", help="also time jax.grad of token_logprobs")
    ap.add_argument("--decode", action="store_true", help="also time KV-cache greedy decode")
    args = ap.parse_args()
    dev = jax.devices()[0]
    print(f"backend={jax.default_backend()} device={dev.device_kind} x{jax.device_count()} jax={jax.__version__}")

    t0 = time.perf_counter()
    cfg, params, tok = M.load_model(args.model, dtype=args.dtype)
    jax.block_until_ready(params)
    load1 = time.perf_counter() - t0
    del params
    t0 = time.perf_counter()
    cfg, params, tok = M.load_model(args.model, dtype=args.dtype)
    jax.block_until_ready(params)
    load2 = time.perf_counter() - t0
    nparams = sum(x.size for x in jax.tree.leaves(params))
    print(f"load {args.model}: {load1:.2f} s first call, {load2:.2f} s second ({nparams / 1e6:.1f}M params, "
          f"{args.dtype})")

    B, T = args.batch, args.seq
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    flops = cfg.flops_per_token(T) * B * T

    # forward and the matmul baseline are timed in alternating rounds, so both see the same machine load
    fwd = jax.jit(lambda p, x, q: M.forward(cfg, p, x, q)[0])
    n = args.matmul
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(args.dtype)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32).astype(args.dtype)
    mm_fn = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    comp, _ = timeit(fwd, params, tokens, pos, iters=0)
    timeit(mm_fn, a, b, iters=0)
    t_fwd, t_mm, ratios = [], [], []
    for _ in range(args.iters):
        t_fwd.append(timeit(fwd, params, tokens, pos, iters=1, warmup=0)[1])
        t_mm.append(timeit(mm_fn, a, b, iters=3, warmup=0)[1])
        ratios.append((flops / t_fwd[-1]) / (2.0 * n ** 3 / t_mm[-1]))
    t = min(t_fwd)
    fwd_flops, mm = flops / t, 2.0 * n ** 3 / min(t_mm)
    print(f"forward (full logits) {B}x{T}: {B * T / t:,.0f} tokens/s, {t * 1e3:.0f} ms/step, "
          f"{fwd_flops / 1e9:.1f} GFLOP/s (compile+first {comp:.1f} s)")
    print(f"baseline jnp.dot {n}^3 {args.dtype}, same rounds: {mm / 1e9:.1f} GFLOP/s")
    print(f"RATIO forward FLOP/s / matmul FLOP/s = {fwd_flops / mm:.2f} (best of each); per round: "
          + ", ".join(f"{r:.2f}" for r in ratios))

    lp = jax.jit(lambda p, x, q: M.token_logprobs(cfg, p, x, x, q))
    comp, t = timeit(lp, params, tokens, pos, iters=args.iters)
    print(f"token_logprobs {B}x{T}: {B * T / t:,.0f} tokens/s, {flops / t / 1e9:.1f} GFLOP/s "
          f"(compile+first {comp:.1f} s)")

    if args.grad:
        g = jax.jit(jax.grad(lambda p, x, q: M.token_logprobs(cfg, p, x, x, q).sum()))
        comp, t = timeit(g, params, tokens, pos, iters=args.iters)
        print(f"grad(token_logprobs) {B}x{T}: {B * T / t:,.0f} tokens/s, {3 * flops / t / 1e9:.1f} GFLOP/s "
              f"(compile+first {comp:.1f} s)")


    if args.decode:
        P, N = min(T // 2, 128), 64
        step = jax.jit(lambda p, x, q, c: M.forward(cfg, p, x, q, cache=c), donate_argnums=3)
        cache = M.init_cache(cfg, B, P + N)
        t0 = time.perf_counter()
        logits, cache = step(params, tokens[:, :P], pos[:, :P], cache)
        nxt = jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)
        jax.block_until_ready(nxt)
        prefill = time.perf_counter() - t0
        logits, cache = step(params, nxt, jnp.full((B, 1), P, jnp.int32), cache)  # compile decode
        jax.block_until_ready(logits)
        t0 = time.perf_counter()
        for i in range(1, N):
            nxt = jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)
            logits, cache = step(params, nxt, jnp.full((B, 1), P + i, jnp.int32), cache)
        jax.block_until_ready(logits)
        t = time.perf_counter() - t0
        print(f"decode batch {B}: {B * (N - 1) / t:,.0f} tokens/s ({t / (N - 1) * 1e3:.1f} ms/step; "
              f"prefill {B}x{P} incl. compile {prefill:.1f} s)")


if __name__ == "__main__":
    main()
