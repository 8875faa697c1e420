"""Hugging Face checkpoint directories: config.json <-> ModelConfig, safetensors read / write.

Reading: `model.safetensors` or a sharded `model.safetensors.index.json`; each tensor is read
on demand (safetensors `safe_open`), so only one tensor at a time is materialized on the host.
Writing (`export_hf`): config.json + model.safetensors (or shards + index when `max_shard_bytes`
is set) + tokenizer files, streamed one tensor at a time. `load_hf_dir(export_hf(...))` gives
back identical params.
"""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np

from agentic.models.config import ModelConfig
from agentic.models.weights import _spec, iter_hf_tensors

_ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ST_DTYPE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16"}
_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def config_from_hf(cfg: dict, *, dtype: str = "float32", param_dtype: str | None = None,
                   where: str = "config.json") -> ModelConfig:
    arch = cfg.get("model_type")
    if arch not in _ARCH_CLASS:
        raise ValueError(f"{where}: unsupported model_type {arch!r} (supported: {sorted(_ARCH_CLASS)})")
    if arch == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        raise ValueError(f"{where}: llama with attention_bias/mlp_bias is not supported")
    H = cfg["num_attention_heads"]
    scaling = cfg.get("rope_scaling")
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return ModelConfig(
        arch=arch, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=H,
        num_kv_heads=cfg.get("num_key_value_heads") or H,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // H,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), rope_scaling=scaling,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2", max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
        dtype=dtype, param_dtype=param_dtype or dtype)


def config_to_hf(config: ModelConfig, tokenizer=None) -> dict:
    out = {
        "architectures": [_ARCH_CLASS[config.arch]],
        "model_type": config.arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling_dict,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "torch_dtype": _TORCH_DTYPE[config.param_dtype],
        "use_cache": True,
    }
    if config.arch == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    return out


class SafetensorsDir:
    """Read tensors by name from a HF checkpoint dir (single file or sharded index)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.exists(single):
            weight_map = None
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
        self._files = {}
        if weight_map is None:
            self._files["model.safetensors"] = safe_open(single, framework="numpy")
            self.weight_map = {k: "model.safetensors" for k in self._files["model.safetensors"].keys()}
        else:
            self.weight_map = dict(weight_map)
            for fname in sorted(set(weight_map.values())):
                fp = os.path.join(path, fname)
                if not os.path.exists(fp):
                    raise FileNotFoundError(f"{path}: shard {fname} listed in model.safetensors.index.json is missing")
                self._files[fname] = safe_open(fp, framework="numpy")

    def keys(self):
        return self.weight_map.keys()

    def get(self, name: str) -> np.ndarray:
        fname = self.weight_map.get(name)
        if fname is None:
            raise KeyError(name)
        return self._files[fname].get_tensor(name)


def read_hf_config(path: str, *, dtype: str = "float32", param_dtype: str | None = None) -> ModelConfig:
    cp = os.path.join(path, "config.json")
    if not os.path.exists(cp):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    with open(cp) as f:
        return config_from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype, where=cp)


def _write_safetensors(path: str, items: list[tuple[str, tuple, np.dtype]], tensors) -> None:
    """Streams tensors (an iterator matching `items` order) into one safetensors file."""
    header, off = {}, 0
    for name, shape, dt in items:
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _ST_DTYPE[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for (name, shape, dt), (tname, arr) in zip(items, tensors, strict=True):
            assert tname == name and tuple(arr.shape) == tuple(shape), (name, tname, arr.shape, shape)
            f.write(np.ascontiguousarray(arr.astype(dt, copy=False)).tobytes())


def export_hf(config: ModelConfig, params, out_dir: str, tokenizer=None, *, max_shard_bytes: int | None = None) -> str:
    """Writes a HF checkpoint dir: config.json, model.safetensors (or shards + index), tokenizer files.

    Tensors are stored in config.param_dtype (f32 / bf16 / f16), in HF layout and names.
    """
    os.makedirs(out_dir, exist_ok=True)
    dt = np.dtype(jax.numpy.dtype(config.param_dtype))
    items = []
    for path, name, hf_shape, _, _ in _spec(config):
        if path[0] == "layers":
            items += [(name.format(i=i), tuple(hf_shape), dt) for i in range(config.num_layers)]
        else:
            items.append((name, tuple(hf_shape), dt))
    shards: list[list] = [[]]
    size = 0
    for it in items:
        n = int(np.prod(it[1])) * dt.itemsize
        if max_shard_bytes and shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(it)
        size += n
    gen = iter_hf_tensors(config, params)
    # iter_hf_tensors yields in _spec order, the order of `items`
    if len(shards) == 1:
        _write_safetensors(os.path.join(out_dir, "model.safetensors"), shards[0], gen)
        for stale in ("model.safetensors.index.json",):
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(os.path.join(out_dir, fname), shard, (next(gen) for _ in shard))
            weight_map.update({name: fname for name, _, _ in shard})
        total = sum(int(np.prod(s)) * dt.itemsize for _, s, _ in items)
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        if os.path.exists(os.path.join(out_dir, "model.safetensors")):
            os.remove(os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(config, tokenizer), f, indent=2)
    if tokenizer is not None:
        tokenizer.save(out_dir)
        if tokenizer.eos_token_id is not None:
            with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                           "pad_token_id": tokenizer.pad_token_id}, f, indent=2)
    return out_dir
