"""GGUF checkpoints (llama.cpp): config, weights and tokenizer from one file.

Tensors are memory-mapped by `gguf.GGUFReader`, dequantized one at a time with
`gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, and the other types the
gguf package knows), renamed to HF names and, for the llama architecture, un-permuted:
llama.cpp's converter reorders the rows of attn_q / attn_k so RoPE can rotate interleaved pairs;
we use HF's rotate-half convention, so the permutation is inverted here.
"""

from __future__ import annotations

import mmap
import struct

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


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Sequential little-endian reads over a memory-mapped GGUF header."""

    def __init__(self, mm):
        self.mm, self.pos = mm, 0

    def scalar(self, code):
        fmt = _SCALARS[code]
        (v,) = struct.unpack_from(fmt, self.mm, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        (n,) = struct.unpack_from("<Q", self.mm, self.pos)
        s = self.mm[self.pos + 8:self.pos + 8 + n].decode("utf-8", errors="replace")
        self.pos += 8 + n
        return s

    def value(self, code):
        if code == _STRING:
            return self.string()
        if code == _ARRAY:
            et, n = self.scalar(4), self.scalar(10)
            if et == _STRING:
                return [self.string() for _ in range(n)]
            if et == _ARRAY:
                return [self.value(_ARRAY) for _ in range(n)]
            dt = np.dtype(_SCALARS[et].replace("?", "u1"))
            arr = np.frombuffer(self.mm, dt, count=n, offset=self.pos)
            self.pos += n * dt.itemsize
            return [bool(x) for x in arr] if et == 7 else arr.tolist()
        return self.scalar(code)


def _dequantize(gguf, raw: np.ndarray, qtype) -> np.ndarray:
    """raw uint8 [rows, row_bytes] -> float32 [rows, row_elems], in chunks of ~4M values.

    Same result as gguf.quants.dequantize, which processes 16 rows at a time (slow on big tensors).
    """
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return raw.view(np.float32)
    if qtype == Q.F16:
        return raw.view(np.float16).astype(np.float32)
    cls = getattr(gguf.quants, qtype.name, None)
    if cls is None or not hasattr(cls, "dequantize_rows"):
        return gguf.quants.dequantize(raw, qtype)
    cls.init_grid()
    block, tsize = gguf.GGML_QUANT_SIZES[qtype]
    rows, row_bytes = raw.shape
    out = np.empty((rows, row_bytes // tsize * block), np.float32)
    step = max(1, (1 << 22) // max(1, out.shape[1]))
    for r in range(0, rows, step):
        out[r:r + step] = cls.dequantize_rows(np.ascontiguousarray(raw[r:r + step]))
    return out


class GGUFFile:
    """An open GGUF file: metadata fields, config, tokenizer and per-tensor dequantized reads.

    A small reader of our own for the container (header, metadata, tensor index): gguf.GGUFReader
    takes seconds to index a 49k-token vocabulary. Dequantization uses the gguf package.
    """

    def __init__(self, path: str):
        import gguf  # local: only needed for GGUF

        self.path = path
        self._gguf = gguf
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = np.frombuffer(mm, np.uint8)
        cur = _Cursor(mm)
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (bad magic {mm[:4]!r})")
        cur.pos = 4
        version = cur.scalar(4)
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = cur.scalar(10), cur.scalar(10)
        self.fields: dict = {}
        for _ in range(n_kv):
            key = cur.string()
            self.fields[key] = cur.value(cur.scalar(4))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            ndim = cur.scalar(4)
            dims = [cur.scalar(10) for _ in range(ndim)]
            infos.append((name, dims, cur.scalar(4), cur.scalar(10)))
        align = int(self.fields.get("general.alignment", 32))
        data_start = -(-cur.pos // align) * align
        self.tensors: dict = {}
        for name, dims, qt, off in infos:
            try:
                qtype = gguf.GGMLQuantizationType(qt)
            except ValueError:
                raise ValueError(f"{path}: tensor {name!r} has unknown GGML type {qt}") from None
            block, tsize = gguf.GGML_QUANT_SIZES[qtype]
            row = dims[0] if dims else 1
            rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            row_bytes = row // block * tsize
            start = data_start + off
            raw = buf[start:start + rows * row_bytes].reshape(rows, row_bytes)
            self.tensors[name] = (qtype, tuple(reversed(dims)), raw)

    def field(self, key, default=None):
        return self.fields.get(key, default)

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
            vocab = len(self.fields["tokenizer.ggml.tokens"])
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
        return Tokenizer.from_gguf_fields({k: v for k, v in self.fields.items() if k.startswith("tokenizer.")})

    def get_gguf(self, name: str) -> np.ndarray:
        """One tensor, dequantized to float32 (numpy layout = HF [out, in])."""
        qtype, shape, raw = self.tensors[name]  # KeyError -> reported by the caller with the HF name
        try:
            w = _dequantize(self._gguf, raw, qtype)
        except NotImplementedError:
            raise ValueError(f"{self.path}: tensor {name!r} has GGML type {qtype.name}, which the gguf package "
                             "cannot dequantize") from None
        return w.reshape(shape)

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
