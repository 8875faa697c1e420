"""Flax causal LMs (Llama / Qwen2 family), loading, export, tokenizers."""
