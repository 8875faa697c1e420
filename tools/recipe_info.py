r"""Prints what launch_tpu.sh needs to know of a Search-R1 recipe, as shell assignments:

    python tools/recipe_info.py qwen2_5_7b_tpu
    TOPOLOGY=v5p:2x2x4
    ACCELERATOR_TYPE=v5p-32     # gcloud's name of the slice
    RUNTIME=v2-alpha-tpuv5      # the TPU VM software version for that generation
    ZONE=us-east5-a             # a zone that offers it
    TPU_HOSTS=4
    SESSIONS=1280               # env sessions the run keeps open at once (every host's actor, and evals)

The topology is the recipe's `tpu.topology` (what tools/aot_check.py compiles for).
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# generation -> (cores per chip in gcloud's accelerator-type count, TPU VM runtime, a zone offering it)
GENERATIONS = {
    "v4": (2, "tpu-ubuntu2204-base", "us-central2-b", "v4"),
    "v5p": (2, "v2-alpha-tpuv5", "us-east5-a", "v5p"),
    "v5e": (1, "v2-alpha-tpuv5-lite", "us-west4-a", "v5litepod"),
    "v6e": (1, "v2-alpha-tpuv6e", "us-east1-d", "v6e"),
}
CHIPS_PER_HOST = 4


def info(variant: str) -> dict:
    from experiments.configs import search_r1

    c = search_r1.get_config(variant)
    topology = c.get("tpu", {}).get("topology", "")
    if not topology:
        raise SystemExit(f"recipe {variant!r} has no tpu.topology: it is not a TPU recipe")
    gen, dims = topology.split(":")
    chips = math.prod(int(x) for x in dims.split("x"))
    cores, runtime, zone, prefix = GENERATIONS[gen]
    hosts = max(1, chips // CHIPS_PER_HOST)
    per_host = c.actor.concurrent_groups * c.actor.group_size
    return {"TOPOLOGY": topology, "ACCELERATOR_TYPE": f"{prefix}-{chips * cores}", "RUNTIME": runtime, "ZONE": zone,
            "TPU_HOSTS": hosts, "SESSIONS": per_host * hosts}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for k, v in info(sys.argv[1]).items():
        print(f"{k}={v}")
