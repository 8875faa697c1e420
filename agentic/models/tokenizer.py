"""Tokenizers from a HF `tokenizer.json` or from GGUF metadata, with jinja2 chat templates.

Built on the HF `tokenizers` library only (no torch, no transformers). Special tokens
(`<|im_start|>`, `<|im_end|>`, ...) written in text encode to their single ids and decode back
to their text unless `skip_special_tokens=True`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4

_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gguf_pre_tokenizer(pre: str):
    """HF pre-tokenizer equivalent to llama.cpp's `tokenizer.ggml.pre` for byte-level BPE."""
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        # llama.cpp: "\p{N}" then the GPT-2 regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
    if pre in ("gpt2", "gpt-2", "default", ""):
        return bl
    regex = {"qwen2": _QWEN2_REGEX, "llama-bpe": _LLAMA3_REGEX, "llama3": _LLAMA3_REGEX}.get(pre)
    if regex is None:
        raise ValueError(f"unsupported GGUF tokenizer.ggml.pre {pre!r} "
                         "(supported: smollm, starcoder, gpt2, qwen2, llama-bpe)")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _raise(msg):
    raise jinja2.exceptions.TemplateError(msg)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """HF transformers' `tojson` filter (jinja2's own escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    """A chat template compiled once (episodes render one per turn)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


class Tokenizer:
    """Text <-> token ids, special-token ids and the chat template of one checkpoint."""

    def __init__(self, hf: _HFTokenizer, *, eos_token_id: int | None, bos_token_id: int | None = None,
                 pad_token_id: int | None = None, chat_template: str | None = None, add_bos_token: bool = False,
                 unk_token_id: int | None = None, name: str = ""):
        self._tok = hf
        self.name = name  # where it was loaded from (a registry name or path), for error messages
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.unk_token_id = unk_token_id
        self.chat_template = chat_template
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf_fields(cls, fields: dict) -> Tokenizer:
        """From GGUF metadata (dict name -> python value, as from `gguf.ReaderField.contents()`)."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"unsupported GGUF tokenizer.ggml.model {model!r}: only byte-level BPE ('gpt2') "
                             "is supported")
        tokens = list(fields["tokenizer.ggml.tokens"])
        types = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        hf = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        hf.pre_tokenizer = _gguf_pre_tokenizer(fields.get("tokenizer.ggml.pre", "gpt2"))
        hf.decoder = decoders.ByteLevel()
        added = []
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
            if ty in (_GGUF_CONTROL, _GGUF_USER_DEFINED):
                added.append((i, AddedToken(t, special=ty == _GGUF_CONTROL, normalized=False)))
        if added:
            hf.add_tokens([a for _, a in added])  # same ids (they are already in the vocab)
            for i, a in added:
                if hf.token_to_id(a.content) != i:
                    raise ValueError(f"GGUF special token {a.content!r} maps to id {hf.token_to_id(a.content)}, "
                                     f"expected {i}")
        get = fields.get
        return cls(hf, eos_token_id=get("tokenizer.ggml.eos_token_id"), bos_token_id=get("tokenizer.ggml.bos_token_id"),
                   pad_token_id=get("tokenizer.ggml.padding_token_id"), unk_token_id=get("tokenizer.ggml.unknown_token_id"),
                   chat_template=get("tokenizer.chat_template"),
                   add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)))

    @classmethod
    def from_hf_dir(cls, path: str) -> Tokenizer:
        """From tokenizer.json (+ tokenizer_config.json, generation_config.json) in a HF checkpoint dir."""
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tj):
            raise FileNotFoundError(f"no tokenizer.json in {path} (only fast HF tokenizers are supported)")
        hf = _HFTokenizer.from_file(tj)
        cfg = {}
        if os.path.exists(os.path.join(path, "tokenizer_config.json")):
            with open(os.path.join(path, "tokenizer_config.json")) as f:
                cfg = json.load(f)

        def tok_id(key):
            v = cfg.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            return None if v is None else hf.token_to_id(v)

        eos, bos, pad = tok_id("eos_token"), tok_id("bos_token"), tok_id("pad_token")
        mc = {}
        if os.path.exists(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json")) as f:
                mc = json.load(f)
        if eos is None:
            e = mc.get("eos_token_id")
            eos = e[0] if isinstance(e, list) else e
        if bos is None:
            bos = mc.get("bos_token_id")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        if template is None and os.path.exists(os.path.join(path, "chat_template.jinja")):
            with open(os.path.join(path, "chat_template.jinja")) as f:
                template = f.read()
        return cls(hf, eos_token_id=eos, bos_token_id=bos, pad_token_id=pad, chat_template=template,
                   add_bos_token=bool(cfg.get("add_bos_token", False)))

    def save(self, out_dir: str) -> None:
        """Writes tokenizer.json + tokenizer_config.json (special tokens, chat template)."""
        os.makedirs(out_dir, exist_ok=True)
        self._tok.save(os.path.join(out_dir, "tokenizer.json"))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 131072,
        }
        for key, i in (("eos_token", self.eos_token_id), ("bos_token", self.bos_token_id),
                       ("pad_token", self.pad_token_id), ("unk_token", self.unk_token_id)):
            if i is not None:
                cfg[key] = self.id_to_token(i)
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)

    # ------------------------------------------------------------------ API
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def hf_tokenizer(self) -> _HFTokenizer:
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Renders the checkpoint's own jinja2 chat template (as HF transformers does).

        kwargs reach the template as variables, e.g. `tools=[json schema, ...]`."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        tmpl = _compile_template(self.chat_template)
        bos = self.id_to_token(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.id_to_token(self.eos_token_id) if self.eos_token_id is not None else ""
        return tmpl.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                           bos_token=bos, eos_token=eos, **kwargs)

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, eos={self.eos_token_id}, bos={self.bos_token_id}, "
                f"pad={self.pad_token_id})")
