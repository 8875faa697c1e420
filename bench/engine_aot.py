"""Per-chip memory of the engine's compiled programs for a TPU topology, compiled on this CPU.

Builds an abstract `EngineCore` (ShapeDtypeStruct params of a named model, a TPU topology's
devices: nothing is allocated), lowers every program at its largest shapes
(`EngineCore.lower_programs`) and compiles each with libtpu, printing XLA's memory analysis
per program against the chip's HBM and the KV cache's size.

    pip install --no-deps 'libtpu==0.0.42.*'
    TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1 python bench/engine_aot.py \\
        --model=qwen2.5-3b --devices=1 --num_slots=256 --max_len=4096 --prefill_chunk=512

ALLOW_MULTIPLE_LIBTPU_LOAD lets several processes load libtpu on one machine. The bar
(issue 29): prefill temporaries <= 10% of the KV cache; every program <= 85% of HBM.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from agentic import models  # noqa: E402
from agentic.inference.engine import EngineConfig, EngineCore  # noqa: E402

TOPOLOGIES = {  # name -> (topology, chip config, chips per host, HBM GiB per device)
    "v5p": ("v5p:2x2x4", "megacore", (2, 2, 1), 95.74),
    "v6e": ("v6e:2x2", "default", (2, 2, 1), 31.25),  # one host: a program over its chips needs ids 0-3
}


def tpu_devices(kind: str):
    from jax.experimental import topologies

    name, chip, per_host, _ = TOPOLOGIES[kind]
    return topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name=chip,
                                        chips_per_host_bounds=per_host, num_slices=1).devices


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-3b")
    ap.add_argument("--dtype", default="float32", help="the model's compute and param dtype")
    ap.add_argument("--tpu", default="v5p", choices=sorted(TOPOLOGIES))
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--tp_size", type=int, default=0, help="0: all devices")
    ap.add_argument("--num_slots", type=int, default=256)
    ap.add_argument("--max_len", type=int, default=4096)
    ap.add_argument("--prefill_chunk", type=int, default=512)
    ap.add_argument("--max_prefill_batch", type=int, default=8)
    ap.add_argument("--token_bucket_growth", type=int, default=4)
    ap.add_argument("--page_size", type=int, default=16)
    ap.add_argument("--num_pages", type=int, default=0, help="0: num_slots x max_len")
    ap.add_argument("--mean_len", type=int, default=0, help="report the sequences admitted at this length")
    ap.add_argument("--attention", default="auto", choices=("auto", "xla", "pallas"))
    ap.add_argument("--programs", default="", help="comma-separated subset (default: all)")
    args = ap.parse_args(argv)

    topo = tpu_devices(args.tpu)
    host0 = [d for d in topo if d.process_index == topo[0].process_index]  # one host's chips first
    devices = (host0 if len(host0) >= args.devices else list(topo))[: args.devices]
    hbm = TOPOLOGIES[args.tpu][3] * 2**30
    cfg = dataclasses.replace(models.get_config(args.model), dtype=args.dtype, param_dtype=args.dtype)
    shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(args.dtype)), shapes)
    ec = EngineConfig(num_slots=args.num_slots, max_len=args.max_len, prefill_chunk=args.prefill_chunk,
                      max_prefill_batch=args.max_prefill_batch, token_bucket_growth=args.token_bucket_growth,
                      page_size=args.page_size, num_pages=args.num_pages, attention=args.attention, tp_size=args.tp_size or args.devices)
    core = EngineCore(cfg, shapes, None, ec, devices=devices, abstract=True)
    c = core.cache_shapes["kv"]
    cache_bytes = np.prod(c.shape) * c.dtype.itemsize / args.devices  # per chip (worst case: unsharded)
    if core.cache_sharding.spec[3] is None and core.cache_sharding.spec[1] is None:
        cache_bytes *= args.devices
    param_bytes = sum(np.prod(p.shape) * p.dtype.itemsize for p in jax.tree.leaves(shapes))
    print(f"{args.model} {args.dtype} on {args.devices} {args.tpu} device(s), tp {ec.tp_size}: "
          f"{ec.total_pages} pages of {ec.page_size} ({ec.total_pages * ec.page_size} tokens), "
          f"KV cache {cache_bytes / 2**30:.2f} GiB/chip, params {param_bytes / 2**30:.2f} GiB (total), "
          f"HBM {hbm / 2**30:.2f} GiB; cache spec {core.cache_sharding.spec}; attention {core.attention}")
    if args.mean_len:
        per_seq = -(-args.mean_len // ec.page_size)
        print(f"sequences admitted at {args.mean_len} tokens: {min(ec.num_slots, ec.total_pages // per_seq)} "
              f"(pages for {ec.total_pages // per_seq}, rows {ec.num_slots})")
    lowered = core.lower_programs()
    want = set(filter(None, args.programs.split(",")))
    seconds = {}
    for name, low in lowered.items():
        if want and name not in want:
            continue
        t0 = time.perf_counter()
        compiled = low.compile()
        m = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, (list, tuple)) and cost else cost) or {}
        seconds[name] = float(cost.get("optimal_seconds", 0.0))
        total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        print(f"  {name:10s} args {m.argument_size_in_bytes / 2**30:7.2f} GiB  out {m.output_size_in_bytes / 2**30:7.2f}"
              f"  alias {m.alias_size_in_bytes / 2**30:7.2f}  temp {m.temp_size_in_bytes / 2**30:7.2f} GiB"
              f"  (temp/cache {m.temp_size_in_bytes / cache_bytes:.3f}; total {total / hbm:.1%} of HBM;"
              f" compiler's estimate {1e3 * seconds[name]:.2f} ms; compiled in {time.perf_counter() - t0:.0f} s)",
              flush=True)
    if all(seconds.get(k) for k in ("engine_prefill", "engine_decode", "engine_mixed")):
        # the compiler's roofline (optimal_seconds) counts the layers' loop body once: a layer + the vocab head
        apart = seconds["engine_prefill"] + seconds["engine_decode"]
        print(f"  mixed step vs prefill + decode apart, compiler's estimate (one layer + head): "
              f"{1e3 * seconds['engine_mixed']:.2f} / {1e3 * apart:.2f} ms = {seconds['engine_mixed'] / apart:.2f}")


if __name__ == "__main__":
    main()
