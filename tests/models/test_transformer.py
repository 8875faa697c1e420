"""Transformer: cache path == full path, chunked log-probs == log_softmax, segment isolation, axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic import models as M

CONFIGS = ["tiny", "tiny-qwen2", "tiny-llama3"]
fwd = jax.jit(M.forward, static_argnums=0, static_argnames=("return_hidden",))
logprobs = jax.jit(M.token_logprobs, static_argnums=0, static_argnames=("chunk_size", "return_entropy"))


def _params(name, seed=0):
    cfg = M.get_config(name)
    return cfg, M.init_params(cfg, jax.random.key(seed))


def _randomize(params, seed=1, scale=0.2):
    """Random non-trivial values everywhere (biases / norms init to 0 / 1)."""
    return _randomize_jit(params, jax.random.key(seed), scale)


@jax.jit
def _randomize_jit(params, key, scale):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys, strict=True)])


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama3"])  # "tiny": test_cache_padding_rows_not_written
def test_cache_prefill_then_decode_matches_full(name):
    cfg, params = _params(name)
    params = _randomize(params)
    B, T, P = 2, 12, 5
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    full, none = fwd(cfg, params, tokens, pos)
    assert none is None and full.shape == (B, T, cfg.vocab_size) and full.dtype == jnp.float32

    cache = M.init_cache(cfg, B, 16)
    logits, cache = fwd(cfg, params, tokens[:, :P], pos[:, :P], cache=cache)
    outs = [logits]
    for t in range(P, T):
        logits, cache = fwd(cfg, params, tokens[:, t:t + 1], pos[:, t:t + 1], cache=cache)
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=2e-5, rtol=1e-4)


def test_cache_padding_rows_not_written():
    """Left rows of different lengths: position -1 tokens are skipped and do not change results."""
    cfg, params = _params("tiny")
    params = _randomize(params)
    toks = jax.random.randint(jax.random.key(3), (1, 6), 0, cfg.vocab_size)
    ref, _ = fwd(cfg, params, toks, jnp.arange(6)[None])
    # row 0: 4-token prompt right-padded with position -1; row 1: the 6 tokens
    tokens = jnp.concatenate([jnp.pad(toks[:, :4], ((0, 0), (0, 2))), toks], 0)
    pos = jnp.array([[0, 1, 2, 3, -1, -1], [0, 1, 2, 3, 4, 5]])
    cache = M.init_cache(cfg, 2, 8)
    logits, cache = fwd(cfg, params, tokens, pos, cache=cache)
    np.testing.assert_allclose(logits[0, :4], ref[0, :4], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(logits[1], ref[0], atol=2e-5, rtol=1e-4)
    assert float(jnp.abs(cache["k"][:, 0, 4:]).max()) == 0.0
    # continue row 0 at position 4 with token 4
    nxt, _ = fwd(cfg, params, toks[:, 4:5].repeat(2, 0), jnp.array([[4], [6]]), cache=cache)
    np.testing.assert_allclose(nxt[0, 0], ref[0, 4], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2"])
def test_token_logprobs_equals_log_softmax(name):
    cfg, params = _params(name)
    params = _randomize(params)
    B, T = 2, 11
    tokens = jax.random.randint(jax.random.key(4), (B, T), 0, cfg.vocab_size)
    targets = jnp.roll(tokens, -1, axis=1)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    logits, _ = fwd(cfg, params, tokens, pos)
    for temp in (1.0, 0.7):
        ref_all = jax.nn.log_softmax(logits / temp, -1)
        ref = jnp.take_along_axis(ref_all, targets[..., None], -1)[..., 0]
        lp, ent = logprobs(cfg, params, tokens, targets, pos, temperature=temp, chunk_size=4,
                                   return_entropy=True)
        np.testing.assert_allclose(lp, ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(ent, -(jnp.exp(ref_all) * ref_all).sum(-1), atol=1e-4, rtol=1e-5)


def test_token_logprobs_gradient_equals_full_log_softmax_gradient():
    cfg, params = _params("tiny-qwen2")
    params = _randomize(params)
    B, T = 2, 11
    tokens = jax.random.randint(jax.random.key(4), (B, T), 0, cfg.vocab_size)
    targets = jnp.roll(tokens, -1, axis=1)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))

    def loss_chunked(p):
        return logprobs(cfg, p, tokens, targets, pos, chunk_size=3).sum()

    def loss_full(p):
        lg, _ = fwd(cfg, p, tokens, pos)
        return jnp.take_along_axis(jax.nn.log_softmax(lg, -1), targets[..., None], -1).sum()

    g1, g2 = jax.jit(jax.grad(loss_chunked))(params), jax.jit(jax.grad(loss_full))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_segment_ids_isolate_packed_sequences():
    cfg, params = _params("tiny-qwen2")
    params = _randomize(params)
    a = jax.random.randint(jax.random.key(5), (1, 5), 0, cfg.vocab_size)
    b = jax.random.randint(jax.random.key(6), (1, 4), 0, cfg.vocab_size)
    la, _ = fwd(cfg, params, a, jnp.arange(5)[None])
    lb, _ = fwd(cfg, params, b, jnp.arange(4)[None])
    packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], 1)
    pos = jnp.concatenate([jnp.arange(5), jnp.arange(4), jnp.zeros(3, jnp.int32)])[None]
    seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
    lp, _ = fwd(cfg, params, packed, pos, segment_ids=seg)
    np.testing.assert_allclose(lp[0, :5], la[0], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(lp[0, 5:9], lb[0], atol=2e-5, rtol=1e-4)
    assert np.isfinite(np.asarray(lp)).all()


def test_rms_norm_gradient_equals_autodiff():
    from agentic.models.transformer import rms_norm

    x = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 3.0
    scale = 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (16,))
    w = jax.random.normal(jax.random.key(2), (2, 5, 16))

    def plain(x, scale):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5) * scale

    np.testing.assert_allclose(rms_norm(x, scale, 1e-5), plain(x, scale), rtol=1e-6)
    got = jax.grad(lambda x, s: (rms_norm(x, s, 1e-5) * w).sum(), argnums=(0, 1))(x, scale)
    want = jax.grad(lambda x, s: (plain(x, s) * w).sum(), argnums=(0, 1))(x, scale)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_swiglu_gradient_equals_autodiff():
    from agentic.models.transformer import swiglu

    ks = jax.random.split(jax.random.key(4), 5)
    x, w = jax.random.normal(ks[0], (7, 16)) * 2.0, jax.random.normal(ks[4], (7, 16))
    wg, wu, wd = (jax.random.normal(k, s) * 0.3 for k, s in zip(ks[1:4], [(16, 24), (16, 24), (24, 16)], strict=True))

    def plain(x, wg, wu, wd):
        return (jax.nn.silu(x @ wg) * (x @ wu)) @ wd

    np.testing.assert_allclose(swiglu(x, wg, wu, wd), plain(x, wg, wu, wd), rtol=1e-6)
    got = jax.grad(lambda *a: (swiglu(*a) * w).sum(), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
    want = jax.grad(lambda *a: (plain(*a) * w).sum(), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_blocked_attention_equals_one_block():
    """Query blocks that see only keys up to their own end == one [T, T] block: values and gradients."""
    cfg, params = _params("tiny-qwen2")
    params = _randomize(params)
    T = 45  # blocks of 16: 16 + 16 + 13, two packed sequences crossing a block edge, padding
    tokens = jax.random.randint(jax.random.key(8), (2, T), 0, cfg.vocab_size)
    seg = jnp.array([[1] * 20 + [2] * 22 + [0] * 3, [1] * T])
    pos = jnp.stack([jnp.concatenate([jnp.arange(20), jnp.arange(22), jnp.zeros(3, jnp.int32)]), jnp.arange(T)])
    full, blocked = cfg.replace(attention_block=0), cfg.replace(attention_block=16)

    def loss(c, p):
        return (logprobs(c, p, tokens, tokens, pos, segment_ids=seg) * (seg > 0)).sum()

    np.testing.assert_allclose(loss(blocked, params), loss(full, params), rtol=1e-5)
    g_full = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(full, params)
    g_blocked = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(blocked, params)
    for a, b in zip(jax.tree.leaves(g_blocked), jax.tree.leaves(g_full), strict=True):
        # f32 sums in another order: errors measured ~2e-6 of each leaf's largest entry
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())), rtol=1e-4)


def test_blocked_attention_gradients_match_autodiff_reference():
    """attention.blocked_attention's hand-written backward == autodiff of the plain softmax attention,
    with GQA groups, a block size that does not divide T, packed segments and a fully masked row."""
    from agentic.models.attention import blocked_attention
    from agentic.models.transformer import _attend

    B, T, H, KVH, Dh = 2, 23, 6, 2, 8
    kq, kk, kv, kw = jax.random.split(jax.random.key(3), 4)
    q, w = jax.random.normal(kq, (B, T, H, Dh)), jax.random.normal(kw, (B, T, H, Dh))
    k, v = jax.random.normal(kk, (B, T, KVH, Dh)), jax.random.normal(kv, (B, T, KVH, Dh))
    seg = jnp.array([[1] * 9 + [2] * 13 + [0], [1] * T])
    idx = jnp.arange(T)
    mask = (idx[None, :] <= idx[:, None])[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)

    def ref(q, k, v):
        return _attend(q.reshape(B, T, KVH, H // KVH, Dh) , k, v, mask, "float32").reshape(B, T, H, Dh)

    for block in (5, 8, T):
        out = blocked_attention(q, k, v, mask, block)
        np.testing.assert_allclose(out, ref(q, k, v), atol=1e-5)
        got = jax.grad(lambda q, k, v, block=block: (blocked_attention(q, k, v, mask, block) * w).sum(), argnums=(0, 1, 2))(q, k, v)
        want = jax.grad(lambda q, k, v: (ref(q, k, v) * w).sum(), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_param_logical_axes_match_params(name):
    cfg, params = _params(name)
    axes = M.param_logical_axes(cfg)
    is_t = lambda x: isinstance(x, tuple)  # noqa: E731
    assert jax.tree.structure(axes, is_leaf=is_t) == jax.tree.structure(params)
    allowed = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", None}
    for ax, p in zip(jax.tree.leaves(axes, is_leaf=is_t), jax.tree.leaves(params), strict=True):
        assert len(ax) == p.ndim and set(ax) <= allowed
    assert axes["layers"]["self_attn"]["q_proj"]["kernel"] == ("layers", "embed", "heads", "head_dim")
    assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == cfg.num_layers
    assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
    assert ("bias" in params["layers"]["self_attn"]["k_proj"]) == cfg.qkv_bias
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == cfg.num_params()


def test_bf16_remat_runs_and_is_close():
    cfg, params = _params("tiny")
    params = _randomize(params)
    tokens = jax.random.randint(jax.random.key(7), (2, 8), 0, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    ref = logprobs(cfg, params, tokens, tokens, pos)
    cfg16 = cfg.replace(dtype="bfloat16", remat=True)
    lp = logprobs(cfg16, params, tokens, tokens, pos)
    assert lp.dtype == jnp.float32
    np.testing.assert_allclose(lp, ref, atol=0.15, rtol=0.05)
    g = jax.jit(jax.grad(lambda p: logprobs(cfg16, p, tokens, tokens, pos).sum()))(params)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(g))


def test_config_errors():
    with pytest.raises(ValueError, match="architecture"):
        M.get_config("tiny").replace(arch="gpt2")
    with pytest.raises(ValueError, match="num_kv_heads"):
        M.get_config("tiny").replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="attention_block"):
        M.get_config("tiny").replace(attention_block=-1)
    with pytest.raises(KeyError, match="unknown model"):
        M.get_config("nope")
