"""optax AdamW with linear warmup, cosine or constant schedule, and global-norm clipping."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(lr: float, *, warmup_steps: int = 0, schedule: str = "constant",
                           total_steps: int | None = None, final_lr_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then constant or cosine to lr*final_lr_ratio.

    Optimizer step s (0-based) uses schedule(s); with warmup, step 0 has lr 0 (optax's
    linear warmup starts at 0), step `warmup_steps` reaches `lr`.
    """
    if schedule == "constant":
        after = optax.constant_schedule(lr)
    elif schedule == "cosine":
        if not total_steps or total_steps <= warmup_steps:
            raise ValueError(f"cosine schedule needs total_steps > warmup_steps ({warmup_steps}), got {total_steps}")
        after = optax.cosine_decay_schedule(lr, total_steps - warmup_steps, alpha=final_lr_ratio)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
    if warmup_steps <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps])


def make_optimizer(lr: float, *, warmup_steps: int = 0, schedule: str = "constant",
                   total_steps: int | None = None, final_lr_ratio: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0, value_lr: float | None = None) -> optax.GradientTransformation:
    """Global-norm clip (over all trainable params), then AdamW on the schedule above.

    With `value_lr`, the trainable tree must be {"policy": ..., "value": ...}: the value
    head gets its own AdamW at `value_lr` (same warmup and schedule shape).
    Stacked layers make norm scales [L, D] (2-D); they are told apart from matrices by
    name: any leaf under a key containing "norm" or named "bias"/"scale" gets no decay.
    """
    sched = dict(warmup_steps=warmup_steps, schedule=schedule, total_steps=total_steps,
                 final_lr_ratio=final_lr_ratio)

    def mask(params):
        def keep(path, p):
            keys = [str(getattr(k, "key", k)) for k in path]
            return p.ndim >= 2 and not any("norm" in k or k in ("bias", "scale") for k in keys)

        return jax.tree_util.tree_map_with_path(keep, params)

    def adamw(rate):
        return optax.adamw(learning_rate_schedule(rate, **sched), b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay, mask=mask)

    parts = []
    if max_grad_norm:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    if value_lr is None:
        parts.append(adamw(lr))
    else:
        # the value head apart; everything else ("policy", or LoRA's "lora") at lr
        labels = lambda t: {k: jax.tree.map(lambda _, k=k: "value" if k == "value" else "policy", v)  # noqa: E731
                            for k, v in t.items()}
        parts.append(optax.multi_transform({"policy": adamw(lr), "value": adamw(value_lr)}, labels))
    return optax.chain(*parts)
