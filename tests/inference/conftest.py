"""Shared fixtures: a tiny Llama with a byte tokenizer and ONE compiled engine core.

Compiling is the slow part on CPU, so every test reuses `core` (module scope per
file would recompile); tests leave it idle and flushed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic import models
from agentic.inference.engine import EngineConfig, EngineCore

EOS = 256


class ByteTokenizer:
    """Token id = byte value (0..255); 256 = <eos>; 257.. = special tokens <|tN|>; 258 = BOS,
    added by `encode(add_special_tokens=True)` as HF tokenizers add theirs."""

    eos_token_id = EOS
    pad_token_id = 257
    bos_token_id = 258

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return ([self.bos_token_id] if add_special_tokens else []) + list(text.encode("utf-8"))

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        """A minimal ChatML-like template (the real one is the checkpoint's jinja2 template)."""
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out, buf = [], bytearray()
        for t in ids:
            t = int(t)
            if t < 256:
                buf.append(t)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append("<eos>" if t == EOS else f"<|t{t}|>")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def scaled_params(config, seed: int, scale: float = 8.0):
    """Random params scaled up so greedy decoding is not degenerate (it echoes at scale 1)."""
    p = models.init_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, p)


@pytest.fixture(scope="session")
def tiny():
    config = models.get_config("tiny")
    return config, scaled_params(config, 0), ByteTokenizer(config.vocab_size)


ENGINE_CONFIG = EngineConfig(num_slots=4, max_len=128, prefill_chunk=32, max_prefill_batch=4, min_decode_kv=32,
                             min_prefill_bucket=8, bucket_growth=4, seed=0, page_size=16, num_pages=256,
                             mixed_prefill="on")  # "auto" is off on CPU; the tests check the mixed step


@pytest.fixture(scope="session")
def core(tiny):
    config, params, tok = tiny
    c = EngineCore(config, params, tok, ENGINE_CONFIG)
    yield c


@pytest.fixture
def fresh_core(core):
    """The shared core, idle, with empty prefix caches and the original weights."""
    assert not core.busy
    core.flush_cache()
    core.step()
    yield core
    core.run_until_idle()
    core.flush_cache()
    core.step()


class Reference:
    """Plain one-request-at-a-time decoding with full-sequence forwards (no KV cache)."""

    PAD_TO = 128

    def __init__(self, config, params):
        self.config, self.params = config, params

        @functools.partial(jax.jit, static_argnums=())
        def last_logits(params, tokens, n):
            seg = (jnp.arange(self.PAD_TO) < n).astype(jnp.int32)[None]
            logits, _ = models.forward(config, params, tokens[None], jnp.arange(self.PAD_TO)[None],
                                       segment_ids=seg)
            return logits[0, n - 1]

        self._last_logits = last_logits

        @jax.jit
        def logprobs(params, tokens, temperature):
            pos = jnp.arange(self.PAD_TO)[None]
            return models.token_logprobs(config, params, tokens[None, :-1], tokens[None, 1:], pos,
                                         temperature=temperature)[0]

        self._logprobs = logprobs

    def greedy(self, prompt, max_new_tokens, params=None, stop_ids=()):
        params = self.params if params is None else params
        seq = list(prompt)
        out = []
        for _ in range(max_new_tokens):
            buf = np.zeros(self.PAD_TO, np.int32)
            buf[: len(seq)] = seq
            t = int(jnp.argmax(self._last_logits(params, jnp.asarray(buf), len(seq))))
            out.append(t)
            seq.append(t)
            if t in stop_ids:
                break
        return out

    def logprobs(self, prompt, output, temperature=1.0, params=None):
        """log_softmax(logits / T)[token] of each output token, from one full-sequence forward."""
        params = self.params if params is None else params
        seq = list(prompt) + list(output)
        buf = np.zeros(self.PAD_TO + 1, np.int32)
        buf[: len(seq)] = seq
        lp = self._logprobs(params, jnp.asarray(buf), jnp.float32(temperature))
        return np.asarray(lp)[len(prompt) - 1: len(seq) - 1]


@pytest.fixture(scope="session")
def reference(tiny):
    config, params, _ = tiny
    return Reference(config, params)


def prompt_of(n: int, seed: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 256, size=n)]
