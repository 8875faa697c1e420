"""GGUF checkpoints (llama.cpp): config, weights and tokenizer from one file.

Tensors are memory-mapped by `gguf.GGUFReader`, dequantized one at a time with
`gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, and the other types the
gguf package knows), renamed to HF names and, for the llama architecture, un-permuted:
llama.cpp's converter reorders the rows of attn_q / attn_k so RoPE can rotate interleaved pairs;
we use HF's rotate-half convention, so the permutation is inverted here.
"""

from __future__ import annotations

import numpy as np

from agentic.models.config import ModelConfig
from agentic.models.tokenizer import Tokenizer

SUPPORTED_ARCHS = ("llama", "qwen2")
# llama.cpp tensor names -> HF tensor names
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_to_gguf_name(hf: str) -> str:
    for g, h in _GLOBAL.items():
        if hf == h:
            return g
    if hf.startswith("model.layers."):
        i, rest = hf[len("model.layers."):].split(".", 1)
        for g, h in _BLOCK.items():
            if rest == h:
                return f"blk.{i}.{g}"
    raise KeyError(hf)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf `permute` (rows of a q/k weight or bias)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (HF rotate-half rows -> interleaved), for writing test GGUFs."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFFile:
    """An open GGUF file: metadata fields, config, tokenizer and per-tensor dequantized reads."""

    def __init__(self, path: str):
        import gguf  # local: only needed for GGUF

        self.path = path
        self._gguf = gguf
        self.reader = gguf.GGUFReader(path, "r")
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._fields_cache: dict | None = None

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    @property
    def fields(self) -> dict:
        if self._fields_cache is None:
            self._fields_cache = {k: self.field(k) for k in self.reader.fields}
        return self._fields_cache

    @property
    def arch(self) -> str:
        return self.field("general.architecture")

    def config(self, *, dtype: str = "float32", param_dtype: str | None = None) -> ModelConfig:
        arch = self.arch
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"{self.path}: unsupported GGUF architecture {arch!r} (supported: {SUPPORTED_ARCHS})")
        if "rope_freqs.weight" in self.tensors:
            raise ValueError(f"{self.path}: GGUF rope_freqs (Llama-3.1+ rope scaling) is not supported; load the "
                             "HF checkpoint directory instead")

        def req(key):
            v = self.field(f"{arch}.{key}")
            if v is None:
                raise ValueError(f"{self.path}: GGUF metadata {arch}.{key} is missing")
            return v

        H = int(req("attention.head_count"))
        D = int(req("embedding_length"))
        vocab = self.field(f"{arch}.vocab_size")
        if vocab is None:
            vocab = len(self.reader.fields["tokenizer.ggml.tokens"].data)
        head_dim = self.field(f"{arch}.attention.key_length") or self.field(f"{arch}.rope.dimension_count") or D // H
        return ModelConfig(
            arch=arch, vocab_size=int(vocab), hidden_size=D, intermediate_size=int(req("feed_forward_length")),
            num_layers=int(req("block_count")), num_heads=H,
            num_kv_heads=int(self.field(f"{arch}.attention.head_count_kv", H)), head_dim=int(head_dim),
            rope_theta=float(self.field(f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(f"{float(req('attention.layer_norm_rms_epsilon')):.6g}"),
            tie_word_embeddings="output.weight" not in self.tensors,
            qkv_bias="blk.0.attn_q.bias" in self.tensors,
            max_position_embeddings=int(self.field(f"{arch}.context_length", 8192)),
            dtype=dtype, param_dtype=param_dtype or dtype)

    def tokenizer(self) -> Tokenizer:
        keys = [k for k in self.reader.fields if k.startswith("tokenizer.")]
        return Tokenizer.from_gguf_fields({k: self.field(k) for k in keys})

    def get_gguf(self, name: str) -> np.ndarray:
        """One tensor, dequantized to float32 (numpy layout = HF [out, in])."""
        t = self.tensors[name]  # KeyError -> reported by the caller with the HF name
        return self._gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))

    def get_hf(self, config: ModelConfig, hf_name: str) -> np.ndarray:
        """A tensor by its HF name, in HF layout (q/k un-permuted for llama)."""
        try:
            gname = hf_to_gguf_name(hf_name)
        except KeyError:
            raise KeyError(hf_name) from None
        if gname not in self.tensors:
            raise KeyError(f"{hf_name!r} (GGUF name {gname!r})")
        w = self.get_gguf(gname)
        if config.arch == "llama":
            if gname.endswith(("attn_q.weight", "attn_q.bias")):
                w = unpermute_qk(w, config.num_heads)
            elif gname.endswith(("attn_k.weight", "attn_k.bias")):
                w = unpermute_qk(w, config.num_kv_heads)
        return w
