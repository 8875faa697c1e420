"""A tiny-model GRPO run on synthetic trajectories that checkpoints every step and resumes.

    python -m agentic.learner.train_toy --workdir /tmp/toy --steps 8 --out /tmp/toy/params.npz

Rerunning the same command after the process was killed continues from the latest
checkpoint (params, optimizer state, step, RNG and the data position) and ends with
bitwise the same params as an uninterrupted run (tests/learner/test_resume.py kills it
with SIGKILL to check). Prints "step N" after each update.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from agentic import models
from agentic.learner import Learner, LearnerConfig
from agentic.learner.testing import synthetic_trajectories


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="", help="write the final params here (.npz)")
    ap.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
    ap.add_argument("--step_delay", type=float, default=0.0, help="sleep after each step (tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model_config = models.get_config("tiny")
    config = LearnerConfig(
        algorithm="grpo", lr=1e-3, warmup_steps=2, schedule="cosine", total_steps=args.steps + 1,
        kl_coef=0.01, entropy_coef=0.001, micro_batch_size=4, seq_buckets=(32, 64), seed=args.seed,
        mesh_shape=tuple(int(x) for x in args.mesh.split(",")),
        checkpoint_dir=os.path.join(args.workdir, "ckpt"), keep_checkpoints=2)
    learner = Learner(config, model_config)
    data_state = learner.restore() or {"next_batch": 0}
    if learner.step:
        print(f"restored step {learner.step}", flush=True)
    for i in range(data_state["next_batch"], args.steps):
        trajs = synthetic_trajectories(args.seed, i, vocab=model_config.vocab_size, max_len=60,
                                       policy_version=learner.version)
        metrics = learner.update(trajs)
        learner.save(data_state={"next_batch": i + 1})
        print(f"step {learner.step} loss {metrics['learner/loss']:.6f}", flush=True)
        time.sleep(args.step_delay)
    learner.close()
    if args.out:
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(learner.params))[0]
        np.savez(args.out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
