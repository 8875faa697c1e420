"""Generator protocol, embedded JAX engine, SGLang client and compatible server."""

from agentic.core import (
    Completion,
    GenerateRequest,
    Generator,
    GeneratorError,
    SamplingParams,
)

__all__ = ["Completion", "GenerateRequest", "Generator", "GeneratorError", "SamplingParams"]
