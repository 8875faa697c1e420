"""One process of a multi-process learner run, for tests/learner/test_multihost.py.

    python tests/learner/multihost_update.py --num-processes 2 --process-id 0 --port P --devices 4 --out DIR

Each process feeds `Learner.update` only its own share of the trajectories (process-local
data: whole groups, round-robin by group); one process with every trajectory is the reference.
Writes DIR/process_{id}.npz: per-update loss and grad norm, and the final params (flattened).
"""

from __future__ import annotations

import argparse
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("--num-processes", type=int, required=True)
p.add_argument("--process-id", type=int, required=True)
p.add_argument("--port", type=int, default=0, help="0: the coordinator etc. from $JAX_* variables")
p.add_argument("--devices", type=int, required=True)
p.add_argument("--mesh", default="-1,1,1")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--out", required=True)
a = p.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from agentic import models, sharding  # noqa: E402
from agentic.learner import Learner, LearnerConfig  # noqa: E402
from agentic.learner.testing import synthetic_trajectories  # noqa: E402

if a.num_processes > 1 and a.port:
    sharding.initialize_distributed(coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes,
                                    process_id=a.process_id)
elif a.num_processes > 1:  # --port 0: from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID
    sharding.initialize_distributed()
TINY = models.get_config("tiny")
config = LearnerConfig(algorithm="grpo", lr=1e-2, adam_eps=1e-4, micro_batch_size=8, seq_buckets=(64,),
                       entropy_coef=0.01, mesh_shape=tuple(int(x) for x in a.mesh.split(",")))
params = jax.device_get(models.init_params(TINY, jax.random.key(0)))
learner = Learner(config, TINY, params, mesh=sharding.make_mesh(config.mesh_shape, devices=jax.devices()))
losses, grad_norms = [], []
for step in range(a.steps):
    trajectories = synthetic_trajectories(step, groups=8, group_size=4, vocab=TINY.vocab_size, max_len=60)
    groups = sorted({t.group_id for t in trajectories})
    mine = {g for i, g in enumerate(groups) if i % a.num_processes == a.process_id}
    m = learner.update([t for t in trajectories if t.group_id in mine])
    losses.append(m["learner/loss"])
    grad_norms.append(m["learner/grad_norm"])
flat = [np.asarray(multihost_utils.process_allgather(x, tiled=True)).ravel() if a.num_processes > 1
        else np.asarray(x).ravel() for x in jax.tree.leaves(learner.params)]
np.savez(os.path.join(a.out, f"process_{a.process_id}.npz"), loss=np.array(losses), grad_norm=np.array(grad_norms),
         params=np.concatenate(flat))
print(f"process {a.process_id}: losses {losses}", flush=True)
