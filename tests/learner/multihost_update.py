"""One process of a multi-process learner run, for tests/learner/test_multihost.py.

    python tests/learner/multihost_update.py --num-processes 2 --process-id 0 --port P --devices 4 --out DIR

Each process feeds `Learner.update` only its own share of the trajectories (process-local
data: whole groups, round-robin by group); one process with every trajectory is the reference.
Writes DIR/process_{id}.npz: per-update loss and grad norm, and the final params (flattened).

With `--stream full|first|resume` each process's trajectories come from the tasks its own
task stream (`agentic.tasks.TaskStream`, its shard) draws, recorded as `task_ids`: `full` runs
every step; `first` checkpoints after `--save-at` steps (the task streams' states with it) and
then SIGKILLs itself; `resume` restores that checkpoint and runs the remaining steps.
"""

from __future__ import annotations

import argparse
import dataclasses
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
p.add_argument("--stream", choices=("", "full", "first", "resume"), default="")
p.add_argument("--save-at", type=int, default=2)
p.add_argument("--ckpt", default="")
a = p.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import signal  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from agentic import models, sharding  # noqa: E402
from agentic.learner import Learner, LearnerConfig  # noqa: E402
from agentic.learner.testing import synthetic_trajectories  # noqa: E402
from agentic.tasks import TaskStream  # noqa: E402

if a.num_processes > 1 and a.port:
    sharding.initialize_distributed(coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes,
                                    process_id=a.process_id)
elif a.num_processes > 1:  # --port 0: from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID
    sharding.initialize_distributed()
TINY = models.get_config("tiny")
config = LearnerConfig(algorithm="grpo", lr=1e-2, adam_eps=1e-4, micro_batch_size=8, seq_buckets=(64,),
                       entropy_coef=0.01, mesh_shape=tuple(int(x) for x in a.mesh.split(",")),
                       checkpoint_dir=a.ckpt or None)
params = jax.device_get(models.init_params(TINY, jax.random.key(0)))
learner = Learner(config, TINY, params, mesh=sharding.make_mesh(config.mesh_shape, devices=jax.devices()))
losses, grad_norms, task_ids = [], [], []
first_step = 0
if a.stream:
    data_state = learner.restore() if a.stream == "resume" else None
    assert (data_state is not None) == (a.stream == "resume"), "resume needs the first run's checkpoint"
    tasks = TaskStream([{"id": i} for i in range(40)], seed=3, state=(data_state or {}).get("tasks"))
    first_step = learner.version
for step in range(first_step, a.save_at if a.stream == "first" else a.steps):
    if a.stream:  # this process's trajectories from the tasks its stream draws
        drawn = [int(next(tasks)["id"]) for _ in range(2)]
        task_ids.append(drawn)
        mine = [t for i in drawn for t in synthetic_trajectories(i, groups=2, group_size=4, vocab=TINY.vocab_size,
                                                                  max_len=60)]
        m = learner.update([dataclasses.replace(t, group_id=f"{step}-{t.group_id}") for t in mine])
    else:
        trajectories = synthetic_trajectories(step, groups=8, group_size=4, vocab=TINY.vocab_size, max_len=60)
        groups = sorted({t.group_id for t in trajectories})
        mine = {g for i, g in enumerate(groups) if i % a.num_processes == a.process_id}
        m = learner.update([t for t in trajectories if t.group_id in mine])
    losses.append(m["learner/loss"])
    grad_norms.append(m["learner/grad_norm"])
if a.stream == "first":  # checkpoint (with every process's task stream state), then die without cleanup
    learner.save(learner.version, data_state={"tasks": tasks.state()}, force=True)
    learner.wait_for_checkpoint()
    np.savez(os.path.join(a.out, f"process_{a.process_id}.npz"), task_ids=np.array(task_ids))
    print(f"process {a.process_id}: saved at {learner.version}, SIGKILL", flush=True)
    # Nobody dies before every process has written: a peer's death makes jax's coordination
    # service abort the others (SIGABRT), possibly mid-write.
    multihost_utils.sync_global_devices("saved")
    os.kill(os.getpid(), signal.SIGKILL)
flat = [np.asarray(multihost_utils.process_allgather(x, tiled=True)).ravel() if a.num_processes > 1
        else np.asarray(x).ravel() for x in jax.tree.leaves(learner.params)]
np.savez(os.path.join(a.out, f"process_{a.process_id}.npz"), loss=np.array(losses), grad_norm=np.array(grad_norms),
         params=np.concatenate(flat), task_ids=np.array(task_ids).reshape(-1, 2))
print(f"process {a.process_id}: losses {losses}", flush=True)
