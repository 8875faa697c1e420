"""Orbax CheckpointManager wrapper: train state + data-iterator state + config, async, keep last N.

One checkpoint (directory `<dir>/<step>/`) holds three items:
  state   the pytree {params, opt_state, step, rng, ...} (sharded arrays are written and
          read back in place on their devices: restore takes the abstract target with shardings),
  data    a JSON dict: the data iterator's state (e.g. a grain iterator's `get_state()`,
          or the number of batches consumed), whatever makes the input stream resume exactly;
          with several processes each has its own (its shard of the tasks): they are gathered
          into one JSON `{"process_0": ..., "process_1": ...}` and each process gets its own back,
  config  a JSON dict of the configs the run was started with.
Saves are asynchronous (the train loop goes on while the arrays are written); a save
becomes visible only when orbax finalizes it (atomic rename), so a process killed
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from agentic.paths import as_path


class Checkpointer:
    """Saves and restores learner checkpoints in `directory`.

    Args:
      directory: where step directories go (created if missing); a local path or a URL
        (gs://...), kept as a URL (`agentic.paths`).
      keep: how many most recent checkpoints to keep (None keeps all).
      every: save only steps that are multiples of this (others are skipped unless forced).
      async_save: write in a background thread.
    """

    def __init__(self, directory: str, *, keep: int | None = 3, every: int = 1, async_save: bool = True):
        self.directory = os.fspath(as_path(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True,
            enable_async_checkpointing=async_save)
        self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

    def save(self, step: int, state: Any, *, data: dict | None = None, config: dict | None = None,
             force: bool = False) -> bool:
        """Starts saving `state` at `step`; returns False when `every` skips this step."""
        data = gather_per_process(data or {})
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  config=ocp.args.JsonSave(config or {}))
        return self._mgr.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """Reads (state, data, config) at `step` (default: the latest).

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (e.g.
        `jax.tree.map(ocp.utils.to_shape_dtype_struct, state)`) saying where arrays go.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  config=ocp.args.JsonRestore())
        out = self._mgr.restore(step, args=args)
        return out["state"], this_process(dict(out["data"] or {})), dict(out["config"] or {})

    def wait(self) -> None:
        """Blocks until the pending async save is on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def gather_per_process(data: dict) -> dict:
    """Every process's `data`, as one JSON dict keyed `process_{i}` (called by every process: the
    primary alone writes the JSON item); one process's `data` unchanged."""
    if jax.process_count() == 1:
        return data
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(data, sort_keys=True).encode(), np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.array([raw.size]))))
    padded = np.zeros(longest, np.uint8)
    padded[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), longest)
    return {f"process_{i}": json.loads(bytes(row).rstrip(b"\0").decode()) for i, row in enumerate(rows)}


def this_process(data: dict) -> dict:
    """This process's entry of `gather_per_process`'s dict (a one-process dict as it is). A checkpoint
    written by another number of processes has no entry for some: that is an error, not a silent
    restart of their task streams."""
    keyed = [k for k in data if k.startswith("process_")]
    if not keyed:
        if jax.process_count() > 1 and data:
            raise ValueError(f"checkpoint data state is one process's, but {jax.process_count()} processes resume")
        return data
    key = f"process_{jax.process_index()}"
    if key not in data or len(keyed) != jax.process_count():
        raise ValueError(f"checkpoint data state holds {sorted(keyed)}; {jax.process_count()} processes resume "
                         f"(this one is {key}): resume with the process count that wrote it")
    return data[key]


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
