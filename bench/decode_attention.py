"""Decode attention on the XLA path (CPU): a paged KV cache against a dense one, same shapes, same run.

A decode step of the paged engine gathers each row's window of pages
(`decode_model.gather_window`) before attending; a dense cache ([L, rows, S, KVH, Dh] per k
and v, as the engine had before pages) reads a contiguous slice. This times one decode
step's attention over every layer (a fori_loop over layers, as the engine runs it), for:

* dense: the slice, then the engine's attention (`decode_model._xla_attention`, CPU form);
* paged: the engine's gather, then the same attention;
* paged_before: the first paged engine's form: interleaved pages gathered as one block, split
  into k and v afterwards, and scores / outputs reduced over s in the pages' own [B, S, KVH]
  layout (written here; it is what `gather_window` and the current attention replaced).

and prints each one's milliseconds and its ratio to dense. SmolLM2-135M's attention shapes
(30 layers, 9 heads, 3 KV heads, head_dim 64), f32, pages of 16 tokens placed at random.

    .venv/bin/python bench/decode_attention.py [--shapes 16x256,16x1024,64x512,64x1024]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="16x256,16x1024,64x512,64x1024", help="rows x window tokens, comma-separated")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per variant; the median counts")
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from agentic.inference import decode_model as dm
    from agentic.models.attention import NEG

    L, H, KVH, Dh, ps = args.layers, 9, 3, 64, 16
    G = H // KVH
    rng = np.random.default_rng(0)

    def before(q, kv, i, table, mask):  # the first paged engine's decode attention
        B, W = table.shape
        pages = kv[i, table].reshape(B, W * ps, KVH, 2, Dh)
        K, V = pages[..., 0, :], pages[..., 1, :]
        qg = q.reshape(B, 1, KVH, G, Dh)
        scores = jnp.sum(qg * K[:, :, :, None], axis=-1) * (1.0 / math.sqrt(Dh))  # [B, S, KVH, G]
        scores = jnp.where(mask[:, 0, :, None, None], scores, NEG)
        probs = jax.nn.softmax(scores, axis=1)
        return jnp.sum(probs[..., None] * V[:, :, :, None], axis=1).reshape(B, 1, H, Dh)

    def timed(f, *a):
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t)
        return 1000 * float(np.median(ts))

    print(f"backend {jax.default_backend()}, {L} layers, {H} heads / {KVH} KV heads x {Dh}, f32, pages of {ps}")

    def one_shape(B: int, S: int) -> str:
        W = S // ps
        P = max(B * W, 1024)
        kv = jnp.asarray(rng.standard_normal((L, P, ps, 2 * KVH, Dh)), jnp.float32)
        table = jnp.asarray(rng.permutation(P)[: B * W].reshape(B, W), jnp.int32)
        k_dense = jnp.asarray(rng.standard_normal((L, B, S, KVH, Dh)), jnp.float32)
        v_dense = jnp.asarray(rng.standard_normal((L, B, S, KVH, Dh)), jnp.float32)
        q = jnp.asarray(rng.standard_normal((B, 1, H, Dh)), jnp.float32)
        pos = jnp.asarray(rng.integers(S // 2, S, B), jnp.int32)
        mask = (jnp.arange(S)[None, :] <= pos[:, None])[:, None]  # [B, 1, S]

        def layers(attend):
            zero = jnp.zeros((B, 1, H, Dh))
            return jax.jit(lambda *a: jax.lax.fori_loop(0, L, lambda i, acc: acc + attend(i, *a), zero))

        dense = layers(lambda i, k, v: dm._xla_attention(q, k[i], v[i], mask, True))
        paged = layers(lambda i, kv: dm._xla_attention(q, *dm.gather_window(kv, i, table), mask, True))
        old = layers(lambda i, kv: before(q, kv, i, table, mask))
        now = jax.jit(lambda kv: dm._xla_attention(q, *dm.gather_window(kv, 1, table), mask, True))(kv)
        then = jax.jit(lambda kv: before(q, kv, 1, table, mask))(kv)
        np.testing.assert_allclose(np.asarray(now), np.asarray(then), rtol=1e-4, atol=1e-5)  # same function
        t_dense = timed(dense, k_dense, v_dense)
        t_paged = timed(paged, kv)
        t_old = timed(old, kv)
        return (f"rows {B:3d} x window {S:5d}: dense {t_dense:8.1f} ms   paged {t_paged:8.1f} ms "
                f"({t_paged / t_dense:.2f}x)   paged_before {t_old:8.1f} ms ({t_old / t_dense:.2f}x)")

    for shape in args.shapes.split(","):
        B, S = (int(x) for x in shape.split("x"))
        if S % ps:
            raise SystemExit(f"--shapes: window {S} is not a multiple of the page size {ps}")
        print(one_shape(B, S), flush=True)


if __name__ == "__main__":
    main()
