"""Mesh construction and logical-axis rules: model parameter names -> PartitionSpecs (the
learner's `DEFAULT_RULES` on its (data, fsdp, tensor) mesh; the engine's `ENGINE_RULES` on its
(data, model) mesh).

The learner's mesh has three axes, sizes from config:
  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3 style),
  tensor  Megatron-style tensor parallelism (heads, MLP and vocab dimensions split).

The model names every parameter dimension with a logical axis
(`agentic.models.param_logical_axes`); `DEFAULT_RULES` maps those names to mesh axes.
A dimension that a mesh axis does not divide, or a mesh axis already used by another
dimension of the same tensor, stays replicated, so any mesh works with any model
(e.g. 2 KV heads on tensor=4: the KV projections are replicated over `tensor`).
Batches are sharded on their row dimension over ("data", "fsdp").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
}


# The embedded engine's (data, model) mesh: heads, MLP and vocab split over "model", the rest replicated.
ENGINE_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    **dict.fromkeys(DEFAULT_RULES), "heads": "model", "kv_heads": "model", "mlp": "model", "vocab": "model"}


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over the first prod(shape) devices.

    One entry may be -1: it takes all remaining devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = len(devices) // rest
    n = math.prod(shape)
    if n < 1 or n > len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {n} devices; {len(devices)} are visible")
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices[:n])
    except Exception:  # non-TPU device sets without topology: plain order is fine
        grid = np.array(devices[:n]).reshape(shape)
    return Mesh(grid, MESH_AXES)


def spec_for(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Mapping[str, Any] = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec of one tensor from its logical axis names."""
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape, strict=True):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"no sharding rule for logical axis {name!r}; rules cover {sorted(rules)}")
        axes = rules[name]
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size == 0:
            out.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            out.append(None)
    return PartitionSpec(*out)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(params, logical_axes, mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES):
    """NamedShardings (same structure as `params`) from a parallel pytree of logical axes."""
    return jax.tree.map(
        lambda axes, p: NamedSharding(mesh, spec_for(axes, p.shape, mesh, rules)),
        logical_axes, params, is_leaf=_is_axes)


def batch_sharding(mesh: Mesh, ndim: int = 3) -> NamedSharding:
    """Sharding of packed [num_micro, micro_batch, T, ...] arrays: rows over (data, fsdp)."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, *([None] * (ndim - 2))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """Rows of a micro-batch must be a multiple of this (data * fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


_DISTRIBUTED = False


def per_process_devices(split) -> list[jax.Device]:
    """`split(devices of process p)` for every process p, concatenated in process order: the
    learner's devices across processes when each process keeps the same share of its own
    (e.g. Sebulba's learner devices, the rest going to its engine)."""
    by_process: dict[int, list[jax.Device]] = {}
    for d in jax.devices():
        by_process.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_process) for d in split(sorted(by_process[p], key=lambda d: d.id))]


def agree(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a decision, e.g. to stop, that all must take together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def host_local(tree: Any) -> Any:
    """A pytree of arrays that may span processes as whole arrays on this process (a copy of the
    replicated ones, an all-gather of the sharded ones): what a local engine or a weight stream
    can take. Unchanged with one process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def whole(x):
        if x.is_fully_addressable:
            return x
        if x.sharding.is_fully_replicated:
            return x.addressable_data(0)
        return multihost_utils.process_allgather(x, tiled=True)

    return jax.tree.map(whole, tree)


def is_primary(distributed: bool) -> bool:
    """Whether this process writes the run's files (config, metrics, plots): process 0, or the only
    one. Asks JAX only under `distributed` (that starts its backend)."""
    return not distributed or jax.process_index() == 0


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
                           **kwargs) -> None:
    """`jax.distributed.initialize` once per process.

    Call it before anything touches a device. The coordinator ("host:port" of process 0), the
    process count and this process's id come from the arguments, else from $JAX_COORDINATOR_ADDRESS,
    $JAX_NUM_PROCESSES and $JAX_PROCESS_ID; on Cloud TPU (and SLURM / Open MPI) JAX finds all three
    itself when none is given. Off those, a missing one is an error that names them.
    """
    global _DISTRIBUTED
    if _DISTRIBUTED:
        return
    import os

    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    count = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
    given = {"coordinator_address": address, "num_processes": count or None, "process_id": pid if pid >= 0 else None}
    if any(given.values()):
        missing = [k for k, v in given.items() if v in (None, "")]
        if missing:
            raise ValueError(f"distributed initialization needs {missing} too (config.{missing[0]} or "
                             f"$JAX_{missing[0].upper()}); given {dict((k, v) for k, v in given.items() if v)}")
        kwargs.update(given)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        if given["coordinator_address"]:
            raise
        raise ValueError(f"jax.distributed.initialize found no cluster ({e}); off Cloud TPU, SLURM or MPI give "
                         "config.coordinator_address, config.num_processes and config.process_id (or "
                         "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)") from e
    _DISTRIBUTED = True
