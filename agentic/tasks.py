"""Task streams: an endless, seeded, per-process shard of an experiment's tasks (grain), resumable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def task_dataset(tasks: Sequence[Mapping[str, Any]], *, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1):
    """A grain `IterDataset` over tasks: sharded per process, reshuffled every epoch with `seed`.

    Process `shard_index` of `shard_count` sees tasks `shard_index::shard_count` (disjoint shards).
    `num_epochs=None` repeats forever. Iterate with `it = iter(ds)`; `it.get_state()` is a small
    JSON-serializable dict and `it.set_state(state)` resumes exactly (checkpoint it with the model).
    """
    import grain

    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    ds = grain.MapDataset.source(list(tasks))[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index}/{shard_count} of {len(tasks)} tasks is empty")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    return ds.to_iter_dataset()


class TaskStream:
    """Endless seeded shuffle of this process's shard of the tasks, resumable from `state()`."""

    def __init__(self, tasks: Sequence[Mapping[str, Any]], seed: int, state: dict | None = None):
        import jax

        if not tasks:
            raise ValueError("no training tasks: the experiment gave none")
        self._it = iter(task_dataset(tasks, seed=seed, shard_index=jax.process_index(),
                                     shard_count=jax.process_count()))
        if state:
            self._it.set_state(state)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return self

    def __next__(self) -> Mapping[str, Any]:
        return next(self._it)

    def state(self) -> dict:
        return self._it.get_state()
