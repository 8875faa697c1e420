"""The jitted train step and the jitted scoring pass, with explicit shardings.

Train state (a plain dict pytree, what checkpoints hold):
  trainable  {"policy": model params, "value": value head (PPO only)}  float32 master weights;
             under LoRA {"lora": adapters, "value"?} (lora.py)
  frozen     (LoRA only) {"policy": base params}: not trained, not checkpointed
  opt_state  optax state of `trainable`
  step       int32 optimizer steps taken
  version    int32 policy version (completed `Learner.update` calls)
  rng        uint32 key data

A packed batch is a dict of [num_micro, micro_batch, T] arrays (see batching.py):
  inputs, targets, positions, segment_ids   int32
  weights        loss-aggregation weights (0 off model tokens; sum over the batch = the loss)
  mean_weights   mask / model tokens: weights of per-token metrics
  advantages, behavior_logprobs
  proximal_logprobs   (optional) log-probs under the params before this update (decoupled PPO / TIS)
  ref_logprobs        (when kl_coef != 0 and kl_mode == "loss")
  old_values, returns (PPO)

`train_step(state, batch) -> (state, metrics)` scans over the micro-batches summing
gradients (the weights already normalize over the whole batch, so the sum is the
full-batch gradient), clips, applies AdamW. Micro-batches that hold only padding rows
(the packed shape is rounded up to few sizes) are skipped at run time, so a fixed,
generous shape costs no compute. Everything runs under one jit whose
in/out shardings are given explicitly; the state is donated.

Off-policy correction (`off_policy`):
  "none"       the PPO ratio is taken against the behavior log-probs (the generator's).
  "tis"        ratio against the proximal policy (learner params before this update);
               each token's loss is weighted by min(pi_prox / pi_behavior, tis_cap).
  "decoupled"  the same with the weight untruncated (Hilton et al. 2021, decoupled PPO).
When the proximal log-probs are not in the batch (one optimizer step per update: the
params *are* the proximal params), they are stop_gradient(current log-probs).
Sampler/learner mismatch metrics and the sequence-level corrections (`mismatch_correction`:
IcePop, seq-mask, geometric mask, seq-IS) are in mismatch.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from agentic.learner import guard, lora, losses, mismatch
from agentic.learner.policy import policy_outputs


def micro_loss(cfg, model_config, trainable, mb, frozen=None):
    """Scalar loss of one micro-batch (already normalized for the whole batch) and metric sums.

    `frozen`: the state's frozen base params under LoRA (merged with trainable["lora"]), else None.
    """
    mb = guard.masked_inputs(mb)  # issue 31: a NaN off the model tokens must not reach the loss (NaN * 0)
    lp, ent, values = policy_outputs(model_config, lora.full_trainable(trainable, frozen, cfg.lora_scale), mb,
                                     temperature=cfg.temperature, chunk_size=cfg.logprob_chunk_size)
    w, mw = mb["weights"], mb["mean_weights"]
    behavior = mb["behavior_logprobs"]
    if cfg.off_policy == "none":
        anchor, isw = behavior, jnp.ones_like(lp)
    else:
        anchor = mb["proximal_logprobs"] if "proximal_logprobs" in mb else jax.lax.stop_gradient(lp)
        isw = losses.importance_weights(anchor, behavior, cfg.tis_cap if cfg.off_policy == "tis" else None)
    # sampler/learner mismatch: measured on the pre-update log-probs, optionally corrected (mismatch.py)
    learner_lp = mb["proximal_logprobs"] if "proximal_logprobs" in mb else jax.lax.stop_gradient(lp)
    model_tok = (mw > 0).astype(jnp.float32)
    mis_w, mis_masked = mismatch.correction_weights(
        learner_lp, behavior, model_tok, mb["segment_ids"], mode=cfg.mismatch_correction, low=cfg.mismatch_low,
        high=cfg.mismatch_high)
    isw = mis_w if cfg.mismatch_correction == "seq_is" else isw * mis_w
    pg, clipped = losses.POLICY_LOSSES.get(cfg.policy_loss)(
        lp, anchor, mb["advantages"], clip_low=cfg.clip_eps_low, clip_high=cfg.clip_eps_high,
        dual_clip=cfg.dual_clip)
    pg_loss = losses.aggregate(pg * isw, w)
    loss = pg_loss
    m = {"pg_loss": pg_loss, "entropy": losses.aggregate(ent, mw), "clip_frac": losses.aggregate(clipped, mw),
         "ratio": losses.aggregate(jnp.exp(lp - anchor), mw), "is_weight": losses.aggregate(isw, mw),
         "approx_kl_behavior": losses.aggregate(losses.kl_penalty(behavior, lp, "k3"), mw),
         "mismatch_kl": losses.aggregate(losses.kl_penalty(behavior, learner_lp, "k3"), mw),
         "mismatch_masked_frac": losses.aggregate(mis_masked, mw),
         "mismatch_max_abs": mismatch.max_abs_diff(learner_lp, behavior, model_tok)}
    if cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * losses.aggregate(ent, w)
    if "ref_logprobs" in mb:
        kl = losses.kl_penalty(lp, mb["ref_logprobs"], cfg.kl_estimator)
        loss = loss + cfg.kl_coef * losses.aggregate(kl, w)
        m["kl"] = losses.aggregate(kl, mw)
    if values is not None:
        vl, vclip = losses.value_loss(values, mb["old_values"], mb["returns"], clip=cfg.value_clip)
        loss = loss + cfg.value_coef * losses.aggregate(vl, w)
        m.update(value_loss=losses.aggregate(vl, mw), value_clip_frac=losses.aggregate(vclip, mw),
                 value_mean=losses.aggregate(values, mw))
    m["loss"] = loss
    return loss, m


def reduce_metric(name: str, acc, x):
    """Combines a metric over micro-batches: the max for names ending in "_max_abs", else the sum."""
    return jnp.maximum(acc, x) if name.endswith("_max_abs") else acc + x


def make_train_step(cfg, model_config, optimizer: optax.GradientTransformation, state_shardings,
                    batch_shardings, metric_sharding) -> Callable[[Any, dict], tuple[Any, dict]]:
    """Jitted (state, batch) -> (state, metrics) with the given shardings (state donated).

    `batch_shardings` is a dict of shardings with the batch's keys; the jit specializes on
    the batch's keys and shape (one compile per packed shape).
    """
    grad_fn = jax.value_and_grad(functools.partial(micro_loss, cfg, model_config), has_aux=True)

    def step(state, batch):
        trainable, frozen = state["trainable"], state.get("frozen")

        def accumulate(carry, mb):
            g_acc, m_acc = carry
            (_, m), g = grad_fn(trainable, mb, frozen)
            return jax.tree.map(jnp.add, g_acc, g), {k: reduce_metric(k, m_acc[k], m[k]) for k in m_acc}

        def body(carry, mb):
            # A micro-batch of padding rows only (the packed shape is rounded up) adds nothing:
            # skip its forward and backward instead of computing zeros.
            real = jnp.any(mb["segment_ids"] != 0)
            return jax.lax.cond(real, accumulate, lambda carry, mb: carry, carry, mb), None

        first = jax.tree.map(lambda x: x[0], batch)
        if jax.tree.leaves(batch)[0].shape[0] == 1:  # one micro-batch: no accumulator to zero and add to
            (_, metrics), grads = grad_fn(trainable, first, frozen)
        else:
            zeros = jax.tree.map(jnp.zeros_like, trainable)
            _, m_shapes = jax.eval_shape(grad_fn, trainable, first, frozen)[0]  # which metrics this config has
            m0 = {k: jnp.zeros((), jnp.float32) for k in m_shapes}
            (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), batch)
        metrics["grad_norm"] = optax.global_norm(grads)

        def apply():
            updates, opt_state = optimizer.update(grads, state["opt_state"], trainable)
            return optax.apply_updates(trainable, updates), opt_state, state["step"] + 1

        # issue 31: a non-finite loss or gradient skips the step (state unchanged), counted in the metrics
        (trainable, opt_state, step_count), metrics["skipped_nonfinite"] = guard.apply_if_finite(
            metrics["loss"], metrics["grad_norm"], apply, lambda: (trainable, state["opt_state"], state["step"]))
        rng, _ = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        new_state = dict(state, trainable=trainable, opt_state=opt_state, step=step_count,
                         rng=jax.random.key_data(rng))
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, metric_sharding), donate_argnums=(0,),
                   compiler_options=compiler_options())


def make_score_fn(cfg, model_config, trainable_shardings, ref_shardings, batch_shardings, out_sharding,
                  frozen_shardings=None):
    """Jitted (trainable, ref_params, batch, frozen) -> {"logprobs", "values"?, "ref_logprobs"?}, no gradients.

    Runs the params before the update over every micro-batch: proximal log-probs, the
    old values for GAE and value clipping, and the frozen reference's log-probs.
    `ref_params` may be None (no reference); `frozen` is the LoRA base (None without LoRA).
    """

    def score(trainable, ref_params, batch, frozen=None):
        full = lora.full_trainable(trainable, frozen, cfg.lora_scale)

        def one(mb):
            lp, _, values = policy_outputs(model_config, full, mb, temperature=cfg.temperature,
                                           chunk_size=cfg.logprob_chunk_size)
            out = {"logprobs": lp}
            if values is not None:
                out["values"] = values
            if ref_params is not None:
                out["ref_logprobs"] = policy_outputs(model_config, {"policy": ref_params}, mb,
                                                     temperature=cfg.temperature,
                                                     chunk_size=cfg.logprob_chunk_size)[0]
            return out

        return jax.lax.map(one, batch)

    return jax.jit(score, in_shardings=(trainable_shardings, ref_shardings, batch_shardings, frozen_shardings),
                   out_shardings=out_sharding, compiler_options=compiler_options())


def compiler_options() -> dict | None:
    """XLA options for the learner's programs: on CPU, YNNPACK runs only single matmuls.

    XLA's CPU backend by default also hands reductions and elementwise fusions to
    YNNPACK, whose reductions over the 49k-entry vocab axis (log-softmax, entropy) and
    the attention softmax run several times slower than XLA's own loops. Set per
    program, not process-wide: the inference engine's decode step is faster with the
    default.
    """
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
