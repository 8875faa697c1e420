"""HF checkpoint dirs: loading a tiny checkpoint written here in HF layout (single + sharded), export."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from agentic import models as M
from agentic.models.hf import export_hf
from agentic.models.loading import byte_tokenizer, load_model, load_tokenizer


def _random_params(cfg, seed=0):
    p = M.init_params(cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
                                     for x in leaves])


def _hf_tensors(cfg, params):
    """Our params -> HF names / [out, in] layout, written out independently of agentic.models.weights."""
    D, H, KVH, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    lay = params["layers"]
    out = {"model.embed_tokens.weight": params["embed_tokens"]["embedding"],
           "model.norm.weight": params["norm"]["scale"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = params["lm_head"]["kernel"].T
    for i in range(cfg.num_layers):
        a, m, pre = lay["self_attn"], lay["mlp"], f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = lay["input_layernorm"]["scale"][i]
        out[pre + "post_attention_layernorm.weight"] = lay["post_attention_layernorm"]["scale"][i]
        out[pre + "self_attn.q_proj.weight"] = a["q_proj"]["kernel"][i].reshape(D, H * Dh).T
        out[pre + "self_attn.k_proj.weight"] = a["k_proj"]["kernel"][i].reshape(D, KVH * Dh).T
        out[pre + "self_attn.v_proj.weight"] = a["v_proj"]["kernel"][i].reshape(D, KVH * Dh).T
        out[pre + "self_attn.o_proj.weight"] = a["o_proj"]["kernel"][i].reshape(H * Dh, D).T
        if cfg.qkv_bias:
            for n in "qkv":
                out[pre + f"self_attn.{n}_proj.bias"] = a[f"{n}_proj"]["bias"][i].reshape(-1)
        for n in ("gate_proj", "up_proj", "down_proj"):
            out[pre + f"mlp.{n}.weight"] = m[n]["kernel"][i].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _hf_config(cfg):
    return {"model_type": cfg.arch, "architectures": ["X"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling_dict, "rms_norm_eps": cfg.rms_norm_eps,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "max_position_embeddings": cfg.max_position_embeddings, "torch_dtype": "float32"}


def _write_hf_dir(path, cfg, params, *, sharded=False, dtype=np.float32):
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.astype(dtype) for k, v in _hf_tensors(cfg, params).items()}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(_hf_config(cfg), f)
    if not sharded:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        parts = [names[0::3], names[1::3], names[2::3]]
        wm = {}
        for k, part in enumerate(parts):
            fn = f"model-{k + 1:05d}-of-00003.safetensors"
            save_file({n: tensors[n] for n in part}, os.path.join(path, fn), metadata={"format": "pt"})
            wm.update({n: fn for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
    byte_tokenizer().save(path)
    return tensors


def _assert_tree_equal(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32), **kw)


@pytest.mark.parametrize("name,sharded", [("tiny", False), ("tiny-qwen2", True), ("tiny-llama3", True)])
def test_load_hf_dir(tmp_path, name, sharded):
    cfg = M.get_config(name)
    params = _random_params(cfg)
    _write_hf_dir(tmp_path / "ckpt", cfg, params, sharded=sharded)
    cfg2, params2, tok = load_model(str(tmp_path / "ckpt"))
    assert cfg2 == cfg.replace(head_dim=cfg.head_dim)
    _assert_tree_equal(params, params2)
    assert len(tok.encode("hello <|im_start|>world")) == len("hello world") + 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_reload_identical(tmp_path, dtype):
    cfg = M.get_config("tiny-qwen2")
    params = jax.tree.map(lambda x: x.astype(dtype), _random_params(cfg, seed=3))
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    tok = byte_tokenizer()
    export_hf(cfg, params, str(tmp_path / "out"), tokenizer=tok)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        os.listdir(tmp_path / "out"))
    cfg2, params2, tok2 = load_model(str(tmp_path / "out"), dtype=dtype)
    assert cfg2 == cfg
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(x).view(np.uint16 if dtype == "bfloat16" else np.uint32),
                                      np.asarray(y).view(np.uint16 if dtype == "bfloat16" else np.uint32))
    s = "<|im_start|>user\nhé 123<|im_end|>"
    assert tok2.encode(s) == tok.encode(s) and tok2.decode(tok2.encode(s)) == s
    assert tok2.eos_token_id == tok.eos_token_id and tok2.chat_template == tok.chat_template
    # sharded export reads back too, and matches an independent HF-layout writer
    export_hf(cfg, params, str(tmp_path / "sh"), tokenizer=tok, max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "sh" / "model.safetensors.index.json")
    _, params3, _ = load_model(str(tmp_path / "sh"), dtype=dtype)
    _assert_tree_equal(params, params3)
    ref = _hf_tensors(cfg, jax.tree.map(np.asarray, params))
    from agentic.models.hf import SafetensorsDir
    st = SafetensorsDir(str(tmp_path / "out"))
    assert set(st.keys()) == set(ref)
    np.testing.assert_array_equal(st.get("model.layers.1.self_attn.q_proj.weight").astype(np.float32),
                                  ref["model.layers.1.self_attn.q_proj.weight"].astype(np.float32))


def test_bf16_checkpoint_to_f32(tmp_path):
    cfg = M.get_config("tiny")
    params = _random_params(cfg, seed=5)
    _write_hf_dir(tmp_path / "c", cfg, params, dtype=ml_dtypes.bfloat16)
    _, p2, _ = load_model(str(tmp_path / "c"))
    want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    _assert_tree_equal(want, p2)


def test_load_errors_name_the_tensor(tmp_path):
    cfg = M.get_config("tiny")
    params = _random_params(cfg)
    d = tmp_path / "c"
    tensors = _write_hf_dir(d, cfg, params)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(d))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*shape \(3, 3\)"):
        load_model(str(d))
    cfgj = json.loads((d / "config.json").read_text())
    cfgj["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfgj))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
        load_model(str(d))


def test_registry_hf_models_explain_where_weights_go(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTIC_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("qwen2.5-0.5b-instruct", "llama-3.2-3b", "qwen2.5-7b"):
        with pytest.raises(FileNotFoundError, match=f"{tmp_path}/{name}"):
            load_model(name)
    cfg = M.get_config("qwen2.5-7b")
    assert (cfg.hidden_size, cfg.num_layers, cfg.tie_word_embeddings, cfg.qkv_bias) == (3584, 28, False, True)
    assert dict(M.get_config("llama-3.2-3b").rope_scaling)["rope_type"] == "llama3"
    # a registered name finds its weights in $AGENTIC_MODELS_DIR/<name>
    tiny = M.get_config("tiny-qwen2")
    _write_hf_dir(tmp_path / "qwen2.5-0.5b", tiny, _random_params(tiny))
    cfg2, _, _ = load_model("qwen2.5-0.5b")
    assert cfg2.hidden_size == tiny.hidden_size


def test_tiny_models_load_random_with_byte_tokenizer():
    cfg, params, tok = load_model("tiny")
    assert cfg == M.get_config("tiny") and tok.vocab_size <= cfg.vocab_size
    assert load_tokenizer("tiny-qwen2").vocab_size == tok.vocab_size
    s = "<|im_start|>assistant\nñ 日本 🙂<|im_end|>"
    ids = tok.encode(s)
    assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == s
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\nñ 日本 🙂"
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_load_streams_into_target_shardings(tmp_path):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devs = np.array(jax.devices()[:4] if len(jax.devices()) >= 4 else jax.devices()[:1])
    mesh = Mesh(devs.reshape(-1), ("fsdp",))
    cfg = M.get_config("tiny-qwen2")
    params = _random_params(cfg)
    _write_hf_dir(tmp_path / "c", cfg, params, sharded=True)
    rules = {"embed": "fsdp"}  # shard the model dim; everything else replicated
    axes = M.param_logical_axes(cfg)
    shardings = jax.tree.map(lambda ax: NamedSharding(mesh, PartitionSpec(*[rules.get(a) for a in ax])), axes,
                             is_leaf=lambda x: isinstance(x, tuple))
    _, p2, _ = load_model(str(tmp_path / "c"), shardings=shardings)
    for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(p2), strict=True):
        assert x.sharding == s
    _assert_tree_equal(params, p2)
