"""Prefill on the XLA path: the cost of attending a max_len page table vs a window holding the chunk.

One engine (SmolLM2-135M-Instruct, max_len 4096, pages of 16); its compiled prefill program is
called directly on rows of positions 0..T-1 with a page table of 256 pages (4,096 positions: what
every prefill attended before 464c218) and of 32 pages (512 positions: the smallest window
holding the chunk, what the scheduler passes now), best of 3 after the compile. Prints both and
their ratio per (rows x tokens).

    .venv/bin/python bench/prefill_window.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    import jax

    from agentic import models
    from agentic.inference.engine import EngineConfig, EngineCore

    config, params, tok = models.load_model("smollm2-135m-instruct")
    core = EngineCore(config, params, tok, EngineConfig(num_slots=64, max_len=4096, prefill_chunk=512,
                                                        token_bucket_growth=4, num_pages=4096))
    for rows, T in ((1, 256), (4, 256), (8, 64)):
        samp = core._sampling_arrays([None] * rows, rows)
        tokens = np.ones((rows, T), np.int32)
        positions = np.tile(np.arange(T, dtype=np.int32), (rows, 1))
        last = np.full(rows, T - 1, np.int32)
        best = {}
        for width in (256, 32):
            table = np.arange(rows * width, dtype=np.int32).reshape(rows, width) % 4096
            for i in range(4):
                t = time.perf_counter()
                core.cache, out, _ = core.programs.prefill(core.params, core.cache, table, tokens, positions, last,
                                                           *samp)
                jax.block_until_ready(out)
                if i:
                    best[width] = min(best.get(width, 1e9), time.perf_counter() - t)
        print(f"prefill {rows}x{T}: max_len table (4096) {1e3 * best[256]:.0f} ms, window 512 {1e3 * best[32]:.0f} ms, "
              f"ratio {best[256] / best[32]:.2f}", flush=True)


if __name__ == "__main__":
    main()
