"""LoRA RL: low-rank adapters on the attention and MLP projections; only they are trained.

    LearnerConfig(lora_rank=16, lora_alpha=32.0, lora_targets=("q_proj", "v_proj", ...))

For a target projection with stacked kernel W [L, *in, *out] (`layers` first, as the model
stores them) the adapter is A [L, prod(in), r] and B [L, r, prod(out)], and the policy's
kernel is W + (alpha / r) * A @ B (Hu et al. 2021). A starts random (variance 1 / prod(in)),
B at zero, so step 0 is exactly the base model.

How the learner uses it (learner.py, train_step.py):
  * the train state's `trainable` is {"lora": adapters} (+ the PPO value head): gradients,
    AdamW moments and checkpoints hold only the adapters; the base params sit in the state
    under "frozen" (never updated, never written to a checkpoint: rebuild the learner from
    the base model, then restore);
  * the loss merges W + s A B inside the jitted step (one transient kernel per target, in the
    kernel's dtype) and differentiates through the merge to A and B;
  * `Learner.params` is the merged policy, so the existing publish path hands the engine
    (or SGLang, or the weight stream) base + adapter merged: the engine needs no LoRA code,
    and `models.export_hf(config, learner.params, dir)` writes merged HF safetensors.

Why not qwix (PyPI, Tunix's LoRA; read at 0.1.8): qwix adds adapters by intercepting the
`jnp.einsum` / `dot_general` calls a Flax module makes while it runs. Our MLP is a
`jax.custom_vjp` (its backward is written by hand), the layers run under a scan, and the
engine decodes with its own cached forward over the same param tree: an interceptor would
see only some of the projections and the engine none. Adapters as a param-tree transform
(merge, then the unchanged model) cover the learner, the engine and the export alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Input axes of each kernel after `layers` (the rest are output axes): o_proj is [L, H, Dh, D].
_IN_AXES = {"o_proj": 2}


def check_config(rank: int, alpha: float, targets: Sequence[str]) -> str | None:
    """The problem with these LearnerConfig fields, or None."""
    if rank < 0:
        return f"lora_rank must be >= 0 (0: no LoRA), got {rank}"
    if rank and alpha <= 0:
        return f"lora_alpha must be > 0, got {alpha}"
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or (rank and not targets):
        return f"lora_targets {tuple(targets)} must be a non-empty subset of {LORA_TARGETS}"
    return None


def _targets(tree: dict, targets: Sequence[str], leaf: str = "kernel", prefix=()) -> list[tuple[str, ...]]:
    """Paths of the dicts named in `targets` that hold `leaf` ("kernel" in params, "a" in adapters)."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            if k in targets and leaf in v:
                out.append((*prefix, k))
            else:
                out.extend(_targets(v, targets, leaf, (*prefix, k)))
    return out


def _get(tree: dict, path: Sequence[str]):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: Sequence[str], value) -> dict:
    """A copy of the nested dict `tree` with `path` set (other branches shared)."""
    if not path:
        return value
    return {**tree, path[0]: _set(tree.get(path[0], {}), path[1:], value)}


def _split(kernel_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """(layers, prod(in), prod(out)) of a stacked kernel."""
    if len(kernel_shape) < 3:
        raise ValueError(f"LoRA target {name!r}: expected a stacked kernel [layers, in..., out...], "
                         f"got shape {tuple(kernel_shape)}")
    n_in = _IN_AXES.get(name, 1)
    return (kernel_shape[0], math.prod(kernel_shape[1: 1 + n_in]), math.prod(kernel_shape[1 + n_in:]))


def init_adapters(params: dict, *, targets: Sequence[str], rank: int, key: jax.Array) -> dict:
    """Adapters {path...: {"a": [L, in, r], "b": [L, r, out]}} (float32) for every target kernel of `params`."""
    paths = _targets(params, targets)
    if not paths:
        raise ValueError(f"no LoRA target among the params: {tuple(targets)} (kernels are named {LORA_TARGETS})")
    adapters: dict = {}
    for i, path in enumerate(paths):
        L, n_in, n_out = _split(_get(params, path)["kernel"].shape, path[-1])
        a = jax.random.normal(jax.random.fold_in(key, i), (L, n_in, rank), jnp.float32) / math.sqrt(n_in)
        adapters = _set(adapters, path, {"a": a, "b": jnp.zeros((L, rank, n_out), jnp.float32)})
    return adapters


def adapter_logical_axes(adapters: dict) -> dict:
    """Logical axes of the adapters: split over `layers` only (they are small)."""
    return jax.tree.map(lambda _: ("layers", None, None), adapters)


def merge(params: dict, adapters: dict, scale: float) -> dict:
    """params with every adapted kernel W replaced by W + scale * A @ B (in W's dtype)."""
    out = params
    for path in _targets(adapters, LORA_TARGETS, leaf="a"):
        ad = _get(adapters, path)
        w = _get(params, path)["kernel"]
        delta = jnp.einsum("lir,lro->lio", ad["a"], ad["b"]).reshape(w.shape)
        out = _set(out, (*path, "kernel"), (w.astype(jnp.float32) + scale * delta).astype(w.dtype))
    return out


def full_trainable(trainable: dict, frozen: dict | None, scale: float) -> dict:
    """What `policy_outputs` takes ({"policy": params, "value"?}) from the train state's parts.

    Without LoRA (`frozen` None or empty) that is `trainable` itself; with it, the frozen base
    merged with `trainable["lora"]`.
    """
    if not frozen:
        return trainable
    rest = {k: v for k, v in trainable.items() if k != "lora"}
    return {**rest, "policy": merge(frozen["policy"], trainable["lora"], scale)}


def num_params(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def export_merged(model_config, base_params: dict, adapters: dict, scale: float, out_dir: str, tokenizer=None) -> str:
    """Writes base + adapters merged as a Hugging Face checkpoint (safetensors) to `out_dir`.

    E.g. from a LoRA checkpoint: build the Learner from the base model, `restore()`, then
    `export_merged(model_config, base, learner.adapters, config.lora_scale, dir)`; or just
    `models.export_hf(model_config, learner.params, dir)` (`params` is already merged).
    """
    from agentic import models

    merged = jax.device_get(jax.jit(merge, static_argnums=2)(base_params, adapters, scale))
    return models.export_hf(model_config, merged, out_dir, tokenizer=tokenizer)
