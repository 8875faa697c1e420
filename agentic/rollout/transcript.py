"""What turns an episode's text into tokens: the tokenizer surface (`TextCodec`) and the per-mode
`Transcript` protocol. Its implementations import this module, and the episode loop imports them:

    transcript.py  ◄──  chat.py (ChatTranscript)  ◄──  episode.py (ContinuationTranscript, run_episode)
          ▲                                                   │
          └───────────────────────────────────────────────────┘

so no two of them import each other (chat mode builds on this module, not on the episode loop).
"""

from __future__ import annotations

from typing import Protocol

from agentic.core import Observation, Step


class TextCodec(Protocol):
    """The tokenizer surface the episode uses (see `agentic.models` tokenizers)."""

    eos_token_id: int

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, ids, skip_special_tokens: bool = False) -> str: ...
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, **kwargs) -> str: ...


class Transcript(Protocol):
    """How an episode's text becomes tokens, per mode: continuation
    (`agentic.rollout.episode.ContinuationTranscript`) or chat (`agentic.rollout.chat.ChatTranscript`).
    The loop in `agentic.rollout.episode.run_episode` is the same."""

    stop_token_ids: tuple[int, ...]  # tokens that end a model turn

    def start(self, obs: Observation) -> list[int]:
        """The prompt's ids (loss mask 0)."""

    def keep(self, ids: list[int], kept: int) -> int:
        """How many of a turn's sampled `ids` to keep, given `kept` the turn cut keeps."""

    def follow(self, kept_ids: list[int], step: Step, turn: int) -> list[int]:
        """The ids after the model's kept tokens and before its next turn (loss mask 0)."""

    def metrics(self, tokens: list[int]) -> dict[str, float]:
        """Extra metrics of the finished episode."""
