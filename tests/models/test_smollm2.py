"""SmolLM2-135M-Instruct from GGUF vs an independent reference (transformers + torch on the same GGUF).

The fixture is made by tools/make_reference_logits.py (see its docstring to regenerate).
"""

import json
import os

import jax
import numpy as np
import pytest

from agentic import models as M

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "smollm2_reference.npz")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def our_logits(smollm2, ref):
    """Our f32 logits for the reference prompts, all prompts in one right-padded batch (one compile)."""
    cfg, params, _ = smollm2
    prompts = [ref[f"prompt_ids_{k}"] for k in range(_num_prompts(ref))]
    T = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), T), np.int32)
    for k, p in enumerate(prompts):
        tokens[k, :len(p)] = p
    pos = np.broadcast_to(np.arange(T), tokens.shape)
    logits, _ = jax.jit(M.forward, static_argnums=0)(cfg, params, tokens, pos)
    logits = np.asarray(logits)
    return [logits[k, :len(p)] for k, p in enumerate(prompts)]


def _num_prompts(ref):
    return json.loads(bytes(ref["meta"]).decode())["num_prompts"]


def _rel_err(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_config_matches_registry(smollm2):
    cfg, params, tok = smollm2
    assert cfg == M.get_config("smollm2-135m-instruct")
    assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape == (30, 576, 9, 64)
    assert tok.vocab_size == cfg.vocab_size == 49152


def test_logits_match_reference(ref, our_logits):
    cols = ref["cols"]
    errs = []
    for k, ours in enumerate(our_logits):
        errs.append(_rel_err(ours[:, cols], ref[f"logits_cols_{k}"]))
        if f"full_rows_{k}" in ref:
            errs.append(_rel_err(ours[ref[f"full_pos_{k}"]], ref[f"full_rows_{k}"]))
            assert ours[ref[f"full_pos_{k}"]].argmax(-1) == ref[f"full_rows_{k}"].argmax(-1)
    print(f"max |ours - ref| / max |ref| = {max(errs):.2e}")
    assert max(errs) <= 1e-3, errs


def test_cached_decode_matches_reference(smollm2, ref):
    """Prefill + token-by-token decode through the KV cache reproduces the reference too."""
    cfg, params, _ = smollm2
    ids = ref["prompt_ids_1"]
    fwd = jax.jit(M.forward, static_argnums=0)
    cache = M.init_cache(cfg, 1, 32)
    P = len(ids) - 2
    outs = []
    logits, cache = fwd(cfg, params, ids[None, :P], np.arange(P)[None], cache=cache)
    outs.append(np.asarray(logits[0]))
    for t in range(P, len(ids)):
        logits, cache = fwd(cfg, params, ids[None, t:t + 1], np.array([[t]]), cache=cache)
        outs.append(np.asarray(logits[0]))
    ours = np.concatenate(outs)
    assert _rel_err(ours[:, ref["cols"]], ref["logits_cols_1"]) <= 1e-3


def test_tokenizer_matches_reference_ids_and_round_trips(smollm2, ref):
    _, _, tok = smollm2
    strings = json.loads(bytes(ref["tok_strings"]).decode())
    ids, off = ref["tok_ids"], ref["tok_offsets"]
    for i, s in enumerate(strings):
        want = ids[off[i]:off[i + 1]].tolist()
        got = tok.encode(s)
        assert got == want, (s, got, want)
        assert tok.decode(got) == s
    for k in range(_num_prompts(ref)):
        p = ref[f"prompt_ids_{k}"].tolist()
        assert tok.encode(tok.decode(p)) == p


def test_special_tokens_and_chat_template(smollm2):
    _, _, tok = smollm2
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert (start, end) == (1, 2) and tok.eos_token_id == end and tok.pad_token_id == 2
    assert tok.encode("<|im_start|>") == [start] and tok.encode("<|im_end|>") == [end]
    assert tok.decode([start, end]) == "<|im_start|><|im_end|>"
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>"), skip_special_tokens=True) == "user\nhi"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                    {"role": "assistant", "content": "A"}], add_generation_prompt=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"


def test_greedy_answer(smollm2, our_logits):
    _, _, tok = smollm2
    assert tok.decode([int(our_logits[0][-1].argmax())]) == "The"  # "The capital of France is Paris."
