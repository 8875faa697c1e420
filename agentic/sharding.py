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

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

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


def physical_order(devices: Sequence[jax.Device]) -> list[jax.Device]:
    """Devices sorted by their place in the slice (TPU chips by (z, y, x) coordinates and core; others
    by id), so that neighbours on a mesh axis are neighbours on the interconnect."""
    def key(d):
        coords = getattr(d, "coords", None)
        if coords is None:
            return (d.id,)
        return (*reversed(tuple(coords)), getattr(d, "core_on_chip", 0), d.id)

    return sorted(devices, key=key)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over the first prod(shape) devices.

    One entry may be -1: it takes all remaining devices. On TPU the grid comes from
    `mesh_utils.create_device_mesh` (the physical topology) when the devices are a whole slice, else
    from the devices in physical order (`physical_order`); other platforms keep the given order.
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
    devices = devices[:n]
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # a part of a slice, or no topology (CPU): physical order, then row-major
        grid = np.array(physical_order(devices) if devices[0].platform == "tpu" else devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def engine_twin_shardings(params, devices: Sequence[jax.Device], targets):
    """Shardings over the learner's `devices` under which every process holds, on its own devices of the
    set, the slices the engine's `targets` (NamedShardings of one mesh, e.g. the engine's (data, model)
    one) put on each engine device: a mesh (hosts, copies, *engine axes) with the engine's specs,
    replicated over hosts and copies. Learner params resharded to these (one jitted program on the
    learner's devices) reach the engine by device-to-device copies of whole shards (`jax.device_put`
    finds every engine shard among them). None when the engine's device count does not divide each
    process's learner device count. `devices` in any order (the mesh lists them by process, then id)."""
    by_process: dict[int, list[jax.Device]] = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    counts = {len(v) for v in by_process.values()}
    if len(counts) != 1:
        raise ValueError(f"every process needs the same number of learner devices, got {sorted(counts)}")
    local = counts.pop()
    target_mesh = jax.tree.leaves(targets, is_leaf=lambda x: isinstance(x, NamedSharding))[0].mesh
    if local % target_mesh.size:
        return None
    grid = np.array([sorted(by_process[p], key=lambda d: d.id) for p in sorted(by_process)])
    grid = grid.reshape(len(by_process), local // target_mesh.size, *target_mesh.devices.shape)
    mesh = Mesh(grid, ("hosts", "copies", *target_mesh.axis_names))
    return jax.tree.map(lambda t: NamedSharding(mesh, t.spec), targets,
                        is_leaf=lambda x: isinstance(x, NamedSharding))


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


def unsharded_dims(params, logical_axes, mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES
                   ) -> list[tuple[str, str, int, int]]:
    """Where a rule asks for a mesh axis (of size > 1) that cannot split the dimension:
    (param path, logical axis, dim size, mesh size) for each. Those dimensions stay replicated."""
    out = []

    def check(path, axes, p):
        for name, dim in zip(axes, p.shape, strict=True):
            wanted = rules.get(name) if name is not None else None
            wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted or ())
            size = math.prod(mesh.shape[a] for a in wanted if mesh.shape[a] > 1)
            if size > 1 and dim % size:
                out.append(("/".join(str(getattr(k, "key", k)) for k in path), name, int(dim), int(size)))

    jax.tree_util.tree_map_with_path(check, logical_axes, params, is_leaf=_is_axes)
    return out


def check_fsdp_divides(params, logical_axes, mesh: Mesh, rules: Mapping[str, Any] = DEFAULT_RULES) -> None:
    """Raises when the mesh's fsdp axis cannot shard a parameter's "embed" dimension: ZeRO-3 would
    silently hold that parameter (and its optimizer state) whole on every chip. A tensor-axis split that
    does not divide (e.g. 2 KV heads on tensor=4) is a logged fallback instead: those stay replicated
    over `tensor` only."""
    bad = [u for u in unsharded_dims(params, logical_axes, mesh, rules) if u[1] == "embed"]
    if bad and mesh.shape.get("fsdp", 1) > 1:
        path, _, dim, size = bad[0]
        raise ValueError(f"mesh axis fsdp={mesh.shape['fsdp']} does not divide the model dimension {dim} of "
                         f"{path} (and {len(bad) - 1} more params): they would be replicated on every chip. Use an "
                         f"fsdp size dividing {dim} (mesh_shape (data, fsdp, tensor) = {tuple(mesh.shape.values())})")
    for path, name, dim, size in unsharded_dims(params, logical_axes, mesh, rules):
        if name != "embed":
            log.info("sharding: %s's %s dimension (%d) is not divisible by its mesh axes (%d): replicated over them",
                     path, name, dim, size)


def like_params(tree, params, default: NamedSharding):
    """Shardings for a pytree whose leaves mirror params somewhere inside (an optimizer state: Adam's
    moments have the trainable tree's structure under their own keys). `params` holds arrays or
    ShapeDtypeStructs with shardings. A leaf whose key path ends with a param's key path and has
    the param's shape gets that param's sharding; any other leaf (step counts...) gets `default`."""

    def keys(path):
        return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

    by_path = {}
    jax.tree_util.tree_map_with_path(lambda path, p: by_path.__setitem__(keys(path), p), params)
    n = max((len(k) for k in by_path), default=0)

    def pick(path, leaf):
        k = keys(path)
        for i in range(max(len(k) - n, 0), len(k)):
            p = by_path.get(k[i:])
            if p is not None and tuple(p.shape) == tuple(leaf.shape):
                return p.sharding
        return default

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, ndim: int = 3) -> NamedSharding:
    """Sharding of packed [num_micro, micro_batch, T, ...] arrays: rows over (data, fsdp)."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, *([None] * (ndim - 2))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """Rows of a micro-batch must be a multiple of this (data * fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


_DISTRIBUTED = False


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


def engine_copy(tree: Any, devices: Sequence[jax.Device], targets) -> Any:
    """This process's copy of a pytree of arrays sharded over `devices` (the learner's), laid out on its
    own devices of the set as the engine's `targets` slice it (`engine_twin_shardings`), on device: a
    fully addressable pytree that the engine's `jax.device_put` moves by device-to-device copies. Where
    no twin layout exists (the engine's device count does not divide the process's learner devices),
    one process's arrays are returned as they are, several processes' gathered whole: `jax.device_put`
    then goes through the host (logged)."""
    twins = engine_twin_shardings(tree, devices, targets)
    if twins is None:
        log.warning("engine weights: no on-device layout for %d engine devices from %d learner devices per "
                    "process; the weights go through the host", jax.tree.leaves(targets)[0].mesh.size,
                    len(devices) // max(jax.process_count(), 1))
        return host_local(tree)
    # One jitted reshard when the twin mesh lists the learner's devices in the learner mesh's order (jit
    # needs one device order); else jax.device_put, which relabels the shards into the twin's order and
    # then runs that same reshard on device (the learner's mesh is in physical order, the twin's by process).
    first, twin = jax.tree.leaves(tree)[0], jax.tree.leaves(twins, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
    if tuple(first.sharding._device_assignment) == tuple(twin._device_assignment):
        copied = jax.jit(lambda t: t, out_shardings=twins)(tree)
    else:
        copied = jax.device_put(tree, twins)
    if jax.process_count() == 1:
        return copied

    def local(x):
        grid = x.sharding.mesh.devices[jax.process_index()]
        mesh = Mesh(grid, x.sharding.mesh.axis_names[1:])
        shards = {s.device: s.data for s in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(mesh, x.sharding.spec),
                                                        [shards[d] for d in grid.flat])

    return jax.tree.map(local, copied)


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
