"""How a reward-model env reaches its judge model: named backends that build (Generator, TextCodec).

Env kwargs cross the host as JSON, so the env names a backend and its JSON kwargs:

    {"backend": "sglang", "backend_kwargs": {"urls": ["http://judge:30000"], "tokenizer": "<name or path>"}}

Bundled backends: "sglang" (any SGLang-API server, including our JAX engine's server, via
`agentic.inference.sglang_client.SGLangClient`; the tokenizer via `agentic.models.load_tokenizer`) and
"fixed" (a judge that always answers the same text: smoke tests, conformance, dry runs). Register more
with `register_judge_backend(name, factory)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agentic.core import Completion, GenerateRequest, Generator
from agentic.registry import Registry


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class ByteCodec:
    """UTF-8 bytes as token ids (for fake/fixed judges that need no tokenizer)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", "replace")


class FixedJudge(Generator):
    """Answers every request with `reply` (as UTF-8 byte ids and text)."""

    def __init__(self, reply: str = "Looks right. Score: 10"):
        self.reply = reply
        self.requests = 0

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        self.requests += len(requests)
        ids = tuple(self.reply.encode("utf-8"))
        return [Completion(token_ids=ids, logprobs=(0.0,) * len(ids), finish_reason="stop", text=self.reply)
                for _ in requests]


BackendFactory = Callable[..., "tuple[Generator, TextCodec]"]
BACKENDS: Registry[BackendFactory] = Registry("judge backend")
_SHARED: dict[tuple, tuple[Generator, TextCodec]] = {}
_LOCK = threading.Lock()


def register_judge_backend(name: str, factory: BackendFactory) -> None:
    BACKENDS.add(name, factory)


def judge_backend(name: str, **kwargs: Any) -> tuple[Generator, TextCodec]:
    """The (generator, codec) of backend `name`; one instance per (name, kwargs) per worker process,
    shared by all its sessions (a connection pool to the judge, not one per episode)."""
    factory = BACKENDS.get(name)
    key = (name, repr(sorted(kwargs.items())))
    with _LOCK:
        if key not in _SHARED:
            _SHARED[key] = factory(**kwargs)
        return _SHARED[key]


def _sglang(urls: Sequence[str], tokenizer: str, **client_kwargs: Any) -> tuple[Generator, TextCodec]:
    from agentic.inference.sglang_client import SGLangClient
    from agentic.models import load_tokenizer

    return SGLangClient(list(urls), **client_kwargs), load_tokenizer(tokenizer)


def _fixed(reply: str = "Looks right. Score: 10") -> tuple[Generator, TextCodec]:
    return FixedJudge(reply), ByteCodec()


register_judge_backend("sglang", _sglang)
register_judge_backend("fixed", _fixed)
