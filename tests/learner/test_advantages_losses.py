"""Advantage estimators, losses and batching against small cases computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic.core import Trajectory
from agentic.learner import advantages as A
from agentic.learner import batching, losses


def _outcome_inputs():
    # Rows 0-3: group 0 with rewards 1, 0, 0, 1. Rows 4-5: group 1, rewards 2, 2. Row 6: group 2 alone.
    # Row 7: padding (valid False). Each row has two model tokens (mask [0, 1, 1]).
    rewards = jnp.array([1, 0, 0, 1, 2, 2, 5, 7], jnp.float32)
    group = jnp.array([0, 0, 0, 0, 1, 1, 2, 3], jnp.int32)
    valid = jnp.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    mask = jnp.tile(jnp.array([0.0, 1.0, 1.0]), (8, 1))
    return A.AdvantageInputs(mask=mask, rewards=rewards, group=group, valid=valid)


def test_grpo_normalizes_by_group_mean_and_unbiased_std():
    adv, returns = A.ESTIMATORS.get("grpo")(_outcome_inputs(), eps=0.0)
    assert returns is None
    # group 0: mean = 2/4 = 0.5; unbiased var = 4 * 0.5^2 / (4 - 1) = 1/3; A = +-0.5 / sqrt(1/3) = +-0.8660
    a = 0.5 / math.sqrt(1 / 3)
    np.testing.assert_allclose(adv[:4, 1], [a, -a, -a, a], rtol=1e-6)
    # group 1: both rewards equal the mean -> 0 (std 0: no 0/0 NaN even with eps 0)
    # group 2: a lone trajectory. verl's compute_grpo_outcome_advantage gives a group of one
    # mean 0 and std 1, so A = (5 - 0) / (1 + eps) = 5.  Padding row -> 0.
    np.testing.assert_array_equal(adv[4:, 1], [0, 0, 5, 0])
    adv, _ = A.ESTIMATORS.get("grpo")(_outcome_inputs(), eps=1e-6)
    assert adv[6, 1] == pytest.approx(5 / (1 + 1e-6), rel=1e-7)
    # only model tokens carry the advantage
    np.testing.assert_allclose(adv[:4, 0], 0)
    np.testing.assert_allclose(adv[:4, 2], adv[:4, 1])


def test_dr_grpo_and_rloo():
    inputs = _outcome_inputs()
    adv, _ = A.ESTIMATORS.get("dr_grpo")(inputs)
    # r - group mean: group 0 mean 0.5 -> 0.5, -0.5, -0.5, 0.5; group 1 mean 2 -> 0, 0
    np.testing.assert_allclose(adv[:6, 1], [0.5, -0.5, -0.5, 0.5, 0, 0])
    # lone trajectory: verl's GRPO with norm_adv_by_std_in_grpo=False, mean 0 -> A = 5 - 0
    assert adv[6, 1] == 5
    adv, _ = A.ESTIMATORS.get("rloo")(inputs)
    # leave-one-out baseline: row 0: r=1, others (0, 0, 1) mean 1/3 -> 2/3; row 1: r=0, others (1, 0, 1) -> -2/3
    np.testing.assert_allclose(adv[:4, 1], [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
    # lone trajectory (row 6): verl's compute_rloo_outcome_advantage leaves the score of a
    # group of one unchanged (mean 0, no n/(n-1) rescaling) -> 5; padding row 7 -> 0
    np.testing.assert_allclose(adv[6:, 1], [5, 0])


def test_gae_skips_environment_tokens():
    # positions: 0 prompt (env), 1 model, 2 model, 3 env observation with reward 0.5, 4 model with reward 1
    mask = jnp.array([[0, 1, 1, 0, 1]], jnp.float32)
    r = jnp.array([[0, 0, 0, 0.5, 1.0]])
    v = jnp.array([[9, 0.5, 0.6, 9, 0.7]])
    adv, ret = A.gae(r, v, mask, gamma=0.9, lam=0.8)
    # t=4: delta = 1 + 0.9*0 - 0.7 = 0.3                      a4 = 0.3
    # t=3: env token: its reward 0.5 is credited to t=2
    # t=2: delta = 0 + 0.5 + 0.9*0.7 - 0.6 = 0.53            a2 = 0.53 + 0.9*0.8*0.3 = 0.746
    # t=1: delta = 0 + 0.9*0.6 - 0.5 = 0.04                  a1 = 0.04 + 0.72*0.746 = 0.57712
    np.testing.assert_allclose(adv[0], [0, 0.57712, 0.746, 0, 0.3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret[0], [0, 1.07712, 1.346, 0, 1.0], rtol=1e-5, atol=1e-6)
    # the registered "ppo" estimator whitens over model tokens: mean 0, std 1
    inputs = A.AdvantageInputs(mask=mask, rewards=jnp.zeros(1), group=jnp.zeros(1, jnp.int32),
                               valid=jnp.ones(1, bool), token_rewards=r, values=v)
    w, ret2 = A.ESTIMATORS.get("ppo")(inputs, gamma=0.9, lam=0.8)
    # verl's masked_whiten: (a - mean) * rsqrt(var + 1e-8), var = masked_var(unbiased=True), i.e. the
    # mean of squared deviations times the Bessel correction n / (n - 1), over the 3 model tokens
    a = np.array([0.57712, 0.746, 0.3])
    mean = a.sum() / 3
    var = ((a - mean) ** 2).sum() / 3 * (3 / (3 - 1))
    np.testing.assert_allclose(np.asarray(w[0])[[1, 2, 4]], (a - mean) / np.sqrt(var + 1e-8), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(w[0])[[0, 3]], 0)
    np.testing.assert_allclose(ret2, ret)


def test_masked_whiten_is_verls_unbiased():
    x = jnp.array([[1.0, 2.0, 3.0, 50.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    # mean 2; squared deviations 1, 0, 1 -> mean 2/3, times Bessel 3/2 -> var 1: whitened -1, 0, 1
    # (the population variance 2/3 would give +-1.2247)
    np.testing.assert_allclose(A.masked_whiten(x, mask), [[-1, 0, 1, 0]], atol=1e-6)


def test_ppo_clip_and_dual_clip():
    logp = jnp.log(jnp.array([1.5, 0.5, 0.5, 4.0]))
    old = jnp.zeros(4)
    advs = jnp.array([1.0, 1.0, -1.0, -1.0])
    loss, clipped = losses.ppo_clip_loss(logp, old, advs, clip_low=0.2, clip_high=0.2)
    # r=1.5, A=1:  max(-1.5, -1.2) = -1.2 (clipped)
    # r=0.5, A=1:  max(-0.5, -0.8) = -0.5
    # r=0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)
    # r=4,   A=-1: max(4, 1.2) = 4
    np.testing.assert_allclose(loss, [-1.2, -0.5, 0.8, 4.0], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [1, 0, 1, 0])
    loss, clipped = losses.ppo_clip_loss(logp, old, advs, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # clip-higher: r=1.5, A=1 -> max(-1.5, -1.28) = -1.28; dual clip caps r=4, A=-1 at 3 * 1 = 3
    np.testing.assert_allclose(loss, [-1.28, -0.5, 0.8, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [1, 0, 1, 1])
    loss, _ = losses.POLICY_LOSSES.get("pg")(logp, old, advs)
    np.testing.assert_allclose(loss, [-1.5, -0.5, 0.5, 4.0], rtol=1e-6)
    # reinforce: -A log p, whatever the behavior log-prob (old) says
    loss, _ = losses.POLICY_LOSSES.get("reinforce")(logp, old, advs)
    np.testing.assert_allclose(loss, -np.asarray(advs) * np.asarray(logp), rtol=1e-6)
    grad = jax.grad(lambda lp: losses.POLICY_LOSSES.get("reinforce")(lp, old, advs)[0].sum())(logp)
    np.testing.assert_allclose(grad, -np.asarray(advs), rtol=1e-6)
    # nll ignores advantages: -log p = -log 1.5, -log 0.5, ...
    loss, _ = losses.POLICY_LOSSES.get("nll")(logp, old, advs)
    np.testing.assert_allclose(loss, [-math.log(1.5), math.log(2), math.log(2), -math.log(4)], rtol=1e-6)


def test_kl_estimators_importance_weights_value_loss():
    logp, ref = jnp.log(0.5), jnp.log(0.25)
    d = math.log(2)  # logp - ref
    assert losses.kl_penalty(logp, ref, "k1") == pytest.approx(d)
    assert losses.kl_penalty(logp, ref, "k2") == pytest.approx(d * d / 2)  # 0.240227
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.5 + 0.693147 - 1 = 0.193147
    assert losses.kl_penalty(logp, ref, "low_var_kl") == pytest.approx(0.5 + d - 1, rel=1e-6)
    assert losses.kl_penalty(logp, ref, "k3") == losses.kl_penalty(logp, ref, "low_var_kl")
    # verl's kl_penalty(..., "abs") = |logp - ref|, whichever side is larger
    assert losses.kl_penalty(logp, ref, "abs") == pytest.approx(d)
    assert losses.kl_penalty(ref, logp, "abs") == pytest.approx(d)
    assert "abs" in losses.KL_ESTIMATORS
    with pytest.raises(ValueError, match="KL estimator"):
        losses.kl_penalty(logp, ref, "k4")
    # pi_prox / pi_behavior = 0.3 / 0.1 = 3, truncated at 2 (TIS); untruncated 3 (decoupled)
    assert losses.importance_weights(jnp.log(0.3), jnp.log(0.1), 2.0) == pytest.approx(2.0)
    assert losses.importance_weights(jnp.log(0.3), jnp.log(0.1), None) == pytest.approx(3.0, rel=1e-6)
    # V=1, V_old=0.5, R=2, clip 0.2: (1-2)^2 = 1 vs (0.7-2)^2 = 1.69 -> 0.5 * 1.69 = 0.845
    v, c = losses.value_loss(jnp.array(1.0), jnp.array(0.5), jnp.array(2.0), clip=0.2)
    assert v == pytest.approx(0.845) and c == 1


def test_loss_aggregation_modes():
    per_token = jnp.array([[1.0, 2.0, 9.0, 9.0], [3.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]])  # 3 model tokens in 2 sequences
    agg = lambda mode, norm=None: float(losses.aggregate(per_token, losses.token_weights(mask, mode, norm)))  # noqa: E731
    assert agg("token-mean") == pytest.approx((1 + 2 + 3) / 3)  # 2
    assert agg("seq-mean-token-mean") == pytest.approx(((1 + 2) / 2 + 3 / 1) / 2)  # 2.25
    assert agg("seq-mean-token-sum") == pytest.approx(((1 + 2) + 3) / 2)  # 3
    # verl's agg_loss: torch.sum(seq_losses) / loss_scale_factor, no division by the sequence count
    assert agg("seq-mean-token-sum-norm", 4) == pytest.approx(((1 + 2) + 3) / 4)  # 1.5
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg("sum")


def _traj(tokens, loss_mask, reward, group="g", **kw):
    return Trajectory(tokens=tokens, loss_mask=loss_mask, behavior_logprobs=-0.1 * np.array(loss_mask),
                      reward=reward, group_id=group, policy_version=0, prompt_len=2, **kw)


def test_episodes_shift_to_prediction_positions():
    tr = _traj([10, 11, 12, 13, 14], [0, 0, 1, 1, 0], reward=2.0)
    ep = batching.make_episodes([tr, _traj([5, 6, 7], [0, 1, 1], 1.0, group="h")], max_len=4)
    # logits at t predict token t+1: inputs are tokens[:-1], targets tokens[1:], mask loss_mask[1:]
    np.testing.assert_array_equal(ep.inputs[0], [10, 11, 12, 13])
    np.testing.assert_array_equal(ep.targets[0], [11, 12, 13, 14])
    np.testing.assert_array_equal(ep.mask[0], [0, 1, 1, 0])
    np.testing.assert_allclose(ep.behavior_logprobs[0], [0, -0.1, -0.1, 0])
    # outcome reward goes on the last model token (targets[2] = 13)
    np.testing.assert_allclose(ep.token_rewards[0], [0, 0, 2.0, 0])
    np.testing.assert_array_equal(ep.lengths, [4, 2])
    np.testing.assert_array_equal(ep.group, [0, 1])
    # loss weights, token-mean over the 2 + 2 model tokens
    w, mw = batching.loss_weights(ep, "seq-mean-token-sum")
    np.testing.assert_allclose(w[0], [0, 0.5, 0.5, 0])  # 1 / num_seqs = 1/2
    np.testing.assert_allclose(mw[1], [0.25, 0.25, 0, 0])
    # the batcher's weights for "seq-mean-token-sum-norm" are 1 / loss_scale_factor per model token
    w, _ = batching.loss_weights(ep, "seq-mean-token-sum-norm", norm=8)
    np.testing.assert_allclose(w, ep.mask / 8)


def test_pack_plan_round_trips_and_buckets_shapes():
    lengths = np.array([3, 2, 4])
    plan = batching.plan_packing(lengths, seq_buckets=(4, 8), micro_batch=2)
    # first-fit decreasing into rows of 4: [4], [3], [2] (3 + 2 > 4) -> 3 rows -> 2 micro-batches of 2
    assert plan.shape == (2, 2, 4)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    back = plan.unpack(plan.pack(x), (3, 4))
    np.testing.assert_array_equal(back, x * (np.arange(4)[None] < lengths[:, None]))
    seg = plan.segment_ids.reshape(4, 4)
    np.testing.assert_array_equal(seg[0], [1, 1, 1, 1])
    np.testing.assert_array_equal(seg[1], [1, 1, 1, 0])
    np.testing.assert_array_equal(plan.positions.reshape(4, 4)[2], [0, 1, 0, 0])
    # short episodes pack several to a row, each with its own segment id and positions from 0
    plan = batching.plan_packing(np.array([2, 2, 3]), seq_buckets=(8,), micro_batch=1)
    assert plan.shape == (1, 1, 8)
    np.testing.assert_array_equal(plan.segment_ids[0, 0], [1, 1, 1, 2, 2, 3, 3, 0])
    np.testing.assert_array_equal(plan.positions[0, 0], [0, 1, 2, 0, 1, 0, 1, 0])
    # micro-batch counts are rounded to powers of two: 5 rows of micro_batch 1 -> 8
    assert batching.plan_packing(np.full(5, 8), seq_buckets=(8,), micro_batch=1).num_micro == 8
