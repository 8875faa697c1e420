"""GGUF loading on small files written here: q/k un-permutation, quant types, tokenizer, errors."""

import gguf
import jax
import numpy as np
import pytest

from agentic import models as M
from agentic.models.config import ModelConfig
from agentic.models.gguf_loader import GGUFFile, permute_qk
from agentic.models.loading import byte_tokenizer, load_model

Q = gguf.GGMLQuantizationType
# a config whose matrices all have row lengths that are multiples of 256 (K-quant block size)
KCFG = ModelConfig(arch="llama", vocab_size=300, hidden_size=256, intermediate_size=256, num_layers=1,
                   num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10000.0)


def _hf_weights(cfg, params):
    """HF-layout numpy tensors from our params (test-side, independent of agentic.models.weights)."""
    D, H, KVH, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    lay, out = params["layers"], {}
    out["token_embd.weight"] = params["embed_tokens"]["embedding"]
    out["output_norm.weight"] = params["norm"]["scale"]
    if not cfg.tie_word_embeddings:
        out["output.weight"] = params["lm_head"]["kernel"].T
    for i in range(cfg.num_layers):
        a, m, b = lay["self_attn"], lay["mlp"], f"blk.{i}."
        out[b + "attn_norm.weight"] = lay["input_layernorm"]["scale"][i]
        out[b + "ffn_norm.weight"] = lay["post_attention_layernorm"]["scale"][i]
        out[b + "attn_q.weight"] = a["q_proj"]["kernel"][i].reshape(D, H * Dh).T
        out[b + "attn_k.weight"] = a["k_proj"]["kernel"][i].reshape(D, KVH * Dh).T
        out[b + "attn_v.weight"] = a["v_proj"]["kernel"][i].reshape(D, KVH * Dh).T
        out[b + "attn_output.weight"] = a["o_proj"]["kernel"][i].reshape(H * Dh, D).T
        if cfg.qkv_bias:
            for n in "qkv":
                out[b + f"attn_{n}.bias"] = a[f"{n}_proj"]["bias"][i].reshape(-1)
        out[b + "ffn_gate.weight"] = m["gate_proj"]["kernel"][i].T
        out[b + "ffn_up.weight"] = m["up_proj"]["kernel"][i].T
        out[b + "ffn_down.weight"] = m["down_proj"]["kernel"][i].T
    out = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in out.items()}
    if cfg.arch == "llama":  # what llama.cpp's convert_hf_to_gguf does to q/k rows
        for k in list(out):
            if "attn_q." in k:
                out[k] = permute_qk(out[k], cfg.num_heads)
            elif "attn_k." in k:
                out[k] = permute_qk(out[k], cfg.num_kv_heads)
    return out


def _write_gguf(path, cfg, tensors, *, qtype=None, arch=None):
    """tensors: name -> f32 array, or name -> (raw uint8 bytes, qtype)."""
    arch = arch or cfg.arch
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    tok = byte_tokenizer()
    tokens = [tok.id_to_token(i) for i in range(tok.vocab_size)] + ["ĠĠ"]  # + one merge
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=t[1])
        elif qtype is None or t.ndim == 1:
            w.add_tensor(name, t)
        elif qtype == Q.F16:
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _params(cfg, seed):
    p = M.init_params(cfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32), p)


def _assert_close(a, b, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for path, x in jax.tree_util.tree_leaves_with_path(a):
        y = b
        for k in path:
            y = y[k.key]
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=atol, rtol=0, err_msg=str(path))


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen2"])
def test_f32_gguf_round_trip_undoes_qk_permutation(tmp_path, name):
    cfg = M.get_config(name)
    params = _params(cfg, 0)
    path = _write_gguf(tmp_path / "m.gguf", cfg, _hf_weights(cfg, params))
    cfg2, params2, tok = load_model(path)
    assert cfg2 == cfg.replace(max_position_embeddings=cfg.max_position_embeddings)
    _assert_close(params, params2, atol=0)
    assert tok.vocab_size == byte_tokenizer().vocab_size + 1
    s = "<|im_start|>user\n héllo 42<|im_end|>"
    assert tok.encode(s) == byte_tokenizer().encode(s) and tok.decode(tok.encode(s)) == s
    assert tok.encode("a   b") == tok.encode("a") + [tok.vocab_size - 1] + tok.encode(" b")
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("qtype,atol", [(Q.F16, 1e-3), (Q.BF16, 4e-3), (Q.Q8_0, 4e-3), (Q.Q4_0, 0.06),
                                        (Q.Q4_1, 0.04)])
def test_quantized_types_dequantize_close(tmp_path, qtype, atol):
    cfg = M.get_config("tiny").replace(num_layers=1)
    params = _params(cfg, 1)
    path = _write_gguf(tmp_path / "m.gguf", cfg, _hf_weights(cfg, params), qtype=qtype)
    _, params2, _ = load_model(path)
    _assert_close(params, params2, atol=atol)


def _random_kquant(rows, cols, qtype, rng):
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    scale = np.full((rows, cols // block, 1), 0.01, np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin as f16 at the start of each block
        raw[..., 0:2], raw[..., 2:4] = scale, scale
    else:  # Q6_K: d as f16 at the end
        raw[..., -2:] = scale
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_k_quants_match_f32_file(tmp_path, qtype):
    """K-quant tensors (random blocks) load exactly as the same values stored as F32."""
    rng = np.random.default_rng(0)
    cfg = KCFG
    f32 = _hf_weights(cfg, _params(cfg, 2))
    raw = {k: ((_random_kquant(*v.shape, qtype, rng), qtype) if v.ndim == 2 else v) for k, v in f32.items()}
    deq = {k: (gguf.quants.dequantize(v[0], v[1]) if isinstance(v, tuple) else v) for k, v in raw.items()}
    assert all(np.isfinite(v).all() for v in deq.values())
    p_q = load_model(_write_gguf(tmp_path / "q.gguf", cfg, raw))[1]
    p_f = load_model(_write_gguf(tmp_path / "f.gguf", cfg, deq))[1]
    _assert_close(p_f, p_q, atol=0)


def test_errors_name_the_tensor(tmp_path):
    cfg = M.get_config("tiny")
    t = _hf_weights(cfg, _params(cfg, 0))
    bad = dict(t)
    del bad["blk.1.ffn_up.weight"]
    with pytest.raises(KeyError, match=r"blk\.1\.ffn_up\.weight"):
        load_model(_write_gguf(tmp_path / "a.gguf", cfg, bad))
    bad = dict(t)
    bad["blk.0.attn_v.weight"] = np.zeros((8, cfg.hidden_size), np.float32)
    with pytest.raises(ValueError, match=r"v_proj\.weight.*shape \(8, 64\)"):
        load_model(_write_gguf(tmp_path / "b.gguf", cfg, bad))
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'falcon'"):
        GGUFFile(_write_gguf(tmp_path / "c.gguf", cfg, t, arch="falcon")).config()
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        load_model(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K])
def test_chunked_dequantize_equals_gguf_package(qtype):
    from agentic.models.gguf_loader import _dequantize

    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, 512)).astype(np.float32)
    if qtype in (Q.Q4_K, Q.Q6_K):
        raw = _random_kquant(70, 512, qtype, rng)
    elif qtype == Q.F32:
        raw = x.view(np.uint8)
    elif qtype == Q.F16:
        raw = x.astype(np.float16).view(np.uint8)
    else:
        raw = gguf.quants.quantize(x, qtype)
    np.testing.assert_array_equal(_dequantize(gguf, raw, qtype), gguf.quants.dequantize(raw, qtype))
