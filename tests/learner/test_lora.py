"""LoRA: the merge by hand, only adapters train, checkpoints hold only them, merged export reloads."""

import json

import jax
import numpy as np
import pytest

from agentic import models
from agentic.learner import Learner, LearnerConfig, lora
from agentic.learner.testing import synthetic_trajectories
from agentic.models.loading import byte_tokenizer, load_model
from agentic.sharding import make_mesh

TINY = models.get_config("tiny")
CFG = LearnerConfig(lr=1e-2, micro_batch_size=4, seq_buckets=(64,), mesh_shape=(1, 1, 1), lora_rank=4,
                    lora_alpha=8.0, lora_targets=("q_proj", "o_proj", "down_proj"), async_checkpointing=False)


@pytest.fixture(scope="module")
def base():
    return jax.device_get(models.init_params(TINY, jax.random.key(0)))


def test_merge_is_w_plus_scaled_a_b(base):
    ad = lora.init_adapters(base, targets=("o_proj", "up_proj"), rank=3, key=jax.random.key(1))
    assert set(ad["layers"]["self_attn"]) == {"o_proj"} and set(ad["layers"]["mlp"]) == {"up_proj"}
    a = np.asarray(ad["layers"]["self_attn"]["o_proj"]["a"])
    assert a.shape == (2, 4 * 16, 3) and ad["layers"]["self_attn"]["o_proj"]["b"].shape == (2, 3, 64)
    b = np.random.default_rng(0).normal(size=(2, 3, 64)).astype(np.float32)
    ad["layers"]["self_attn"]["o_proj"]["b"] = b
    merged = lora.merge(base, ad, 0.5)
    w = base["layers"]["self_attn"]["o_proj"]["kernel"]            # [L, H, Dh, D]
    expect = w + 0.5 * np.einsum("lir,lro->lio", a, b).reshape(w.shape)
    np.testing.assert_allclose(merged["layers"]["self_attn"]["o_proj"]["kernel"], expect, rtol=1e-5, atol=1e-6)
    # B = 0 (the initial up_proj adapter): exactly the base kernel; untargeted kernels untouched
    np.testing.assert_array_equal(merged["layers"]["mlp"]["up_proj"]["kernel"], base["layers"]["mlp"]["up_proj"]["kernel"])
    assert merged["layers"]["self_attn"]["q_proj"] is base["layers"]["self_attn"]["q_proj"]


def test_only_adapters_train_and_checkpoint_and_export(base, tmp_path):
    cfg = CFG.replace(checkpoint_dir=str(tmp_path / "ck"))
    learner = Learner(cfg, TINY, base, mesh=make_mesh((1, 1, 1)))
    for x, y in zip(jax.tree.leaves(jax.device_get(learner.params)), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(x, y)  # step 0 is the base model
    learner.update(synthetic_trajectories(3, groups=2, group_size=4, vocab=TINY.vocab_size, max_len=40))
    merged = jax.device_get(learner.params)
    changed = {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(merged)[0]
               if not np.array_equal(x, _at(base, p))}
    assert changed == {"['layers']['self_attn']['q_proj']['kernel']", "['layers']['self_attn']['o_proj']['kernel']",
                       "['layers']['mlp']['down_proj']['kernel']"}
    for x, y in zip(jax.tree.leaves(jax.device_get(learner.state["frozen"])), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(x, y)  # the base never moves
    # optimizer state: the adapters' moments only (LoRA's memory saving)
    n_opt = lora.num_params(learner.state["opt_state"])
    assert n_opt <= 2 * lora.num_params(learner.adapters) + 8 < lora.num_params(base) / 4

    learner.save()
    learner.wait_for_checkpoint()
    meta = json.load(open(tmp_path / "ck" / "1" / "state" / "_METADATA"))["tree_metadata"]
    assert not any("frozen" in k or "kernel" in k or "embedding" in k for k in meta), list(meta)
    assert any("'lora'" in k for k in meta)
    # a fresh learner built from the base model restores the adapters: same merged policy
    again = Learner(cfg, TINY, base, mesh=make_mesh((1, 1, 1)))
    again.restore()
    for x, y in zip(jax.tree.leaves(jax.device_get(again.params)), jax.tree.leaves(merged), strict=True):
        np.testing.assert_array_equal(x, y)
    learner.close()
    again.close()

    # export: HF safetensors of base + adapter merged, reloaded equal
    out = str(tmp_path / "hf")
    lora.export_merged(TINY, base, jax.device_get(again.adapters), cfg.lora_scale, out, tokenizer=byte_tokenizer())
    _, reloaded, _ = load_model(out)
    for x, y in zip(jax.tree.leaves(reloaded), jax.tree.leaves(merged), strict=True):
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6, atol=1e-7)


def _at(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


def test_lora_config_errors():
    with pytest.raises(ValueError, match="lora_targets .* subset"):
        LearnerConfig(lora_rank=4, lora_targets=("qkv",))
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        LearnerConfig(lora_rank=-1)


def test_lora_kl_reference_is_the_base_across_updates(base):
    """With a KL term the frozen base is the reference: no second copy, valid after the state is donated."""
    learner = Learner(CFG.replace(kl_coef=0.1), TINY, base, mesh=make_mesh((1, 1, 1)))
    kls = [learner.update(synthetic_trajectories(3, s, groups=2, group_size=4, vocab=TINY.vocab_size, max_len=40))
           ["learner/kl"] for s in range(2)]
    assert kls[0] == 0.0 and kls[1] > 0.0  # step 0 is the base itself; then the adapters move away from it
