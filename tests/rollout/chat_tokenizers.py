"""Small byte-level BPE tokenizers for the Qwen2.5 and Llama-3 families, with their real chat templates.

The checkpoints are not here (nothing is downloaded), so each family's tokenizer is rebuilt in
miniature: its special tokens, its pre-tokenizer regex (`agentic.models.tokenizer`, as for its
GGUF `tokenizer.ggml.pre`), byte-level BPE merges trained on a small corpus, and the family's
own chat template (fixtures/chat_templates, sources in the README there). What the chat tests
exercise is the template and the incremental rendering, not the vocabulary.
"""

from __future__ import annotations

import functools
import os

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HF

from agentic.models.tokenizer import Tokenizer, _gguf_pre_tokenizer

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "chat_templates")

FAMILIES = {
    # family: (template file, GGUF pre-tokenizer, special tokens, eos, bos)
    "qwen2.5": ("qwen2_5.jinja", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None),
    "qwen3": ("qwen3.jinja", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", None),
    "llama3": ("llama3.jinja", "llama-bpe", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
               "<|eot_id|>", "<|begin_of_text|>"),
}

CORPUS = [
    "You are a helpful assistant. What is 17 * 23? The answer is 391.",
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>',
    '<tool_response>\n{"name": "calculator", "content": "391"}\n</tool_response>',
    '{"type": "function", "function": {"name": "calculator", "description": "Evaluates", "parameters": {}}}',
    "Given the following functions, please respond with a JSON for a function call.\n\n",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    "<answer>391</answer> <think>\nLet me think step by step.\n</think>\n\n",
    "unicode: naïve café, 数学问题, Привет, 🙂🚀, emoji and CJK text, tabs\tand  spaces.",
] * 4


def template_text(file: str) -> str:
    with open(os.path.join(TEMPLATES, file), encoding="utf-8") as f:
        return f.read()


@functools.cache
def family_tokenizer(family: str) -> Tokenizer:
    """A byte-level BPE tokenizer of `family` (see FAMILIES) carrying the family's chat template."""
    file, pre, specials, eos, bos = FAMILIES[family]
    template = template_text(file)
    hf = HF(models.BPE())
    hf.pre_tokenizer = _gguf_pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
                                  show_progress=False)
    hf.train_from_iterator(CORPUS + [template], trainer)
    return Tokenizer(hf, eos_token_id=hf.token_to_id(eos), bos_token_id=hf.token_to_id(bos) if bos else None,
                     chat_template=template, name=f"{family} (test BPE)")
