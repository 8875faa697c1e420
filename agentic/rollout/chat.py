"""Chat episodes: the env's observations as chat messages, in the model's own chat template.

In continuation mode (`episode.py`) observations are appended as raw text inside the model's
turn. In chat mode (`EpisodeConfig(mode="chat")`) the episode is a conversation: system and
user messages from the env's reset, then per turn the model's text as an assistant message
and the env's reply as tool or user messages, rendered by the tokenizer's own jinja2 chat
template. For a ChatML template:

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n{task}<|im_end|>\\n<|im_start|>assistant\\n   mask 0
    {the model's tokens, as sampled}<|im_end|>                                                     mask 1
    \\n<|im_start|>user\\n<tool_response>\\n{...}\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n  mask 0

A model turn ends at the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`), found by
rendering a probe conversation (`ChatTemplate.of`), so configs never name it.

What the env may say:
  Observation.info["system"]: the system message. Observation.info["tools"]: tool JSON
    schemas; when the template renders a tools block (Hermes / Qwen2.5 `<tools>`), they go to
    it as `apply_chat_template(..., tools=...)` and Observation.info["system_without_tools"]
    (when given) replaces "system", since the template now lists the tools itself.
  Step.info["messages"]: the reply as chat messages, [{"role": "tool" | "user", "content": str}]
    (e.g. one tool message per call of the turn). Otherwise, or when the env host cut the
    observation to its size limit, the observation text is one message of role
    Step.info.get("role", "user").

The contract, checked after every turn; a violation raises `ChatTemplateError` naming the
template and the turn (the actor drops the group and counts it; a template that always
violates it stops the run with this message):
  1. Append-only: rendering the conversation with the turn's new messages starts with its
     rendering before them (generation prompt included). A template that rewrites earlier
     turns (Qwen3's drops earlier `<think>` reasoning once a new user message arrives) fails.
  2. Verbatim: the new rendering shows the model's turn exactly as its tokens spell it: the
     decoded text (special tokens included), then the end-of-turn token if the model sampled
     it. A template that edits assistant content (Llama-3's trims whitespace) fails for a
     turn that starts or ends with whitespace.
Only the rest of the new rendering (an end of turn the model did not sample, the tool and
user turns, the next generation prompt) is tokenized, once, with loss mask 0; a sampled stop
token other than the template's end of turn (a base model's EOS) is dropped for it.

What is exactly guaranteed: the episode's text, decode(ids), is the template's rendering of
the conversation so far, the assistant contents being the decoded model text. Its ids are that
rendering tokenized at once whenever every model turn's ids are the tokenizer's own encoding of
its text and the text does not begin with whitespace that could merge with the generation
prompt's last newline (tested for SmolLM2's, Qwen2.5's and Llama-3's templates). A model may
sample another tokenization of its text: its ids are kept as sampled (re-tokenizing would make
training off-policy) and the trajectory's metric `retokenized_differs` is 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from agentic.core import Observation, Step
from agentic.rollout.transcript import TextCodec

_PROBE = "chat-template-probe"
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool", "description": "a probe",
                                                 "parameters": {"type": "object", "properties": {}}}}


class ChatTemplateError(ValueError):
    """The chat template cannot render this episode as one growing token sequence."""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A tokenizer's chat template as a chat episode uses it.

    Attributes:
      name: the tokenizer's name and the template's sha1, for error messages.
      end_of_turn_id: the token that ends an assistant turn in this template.
      stop_token_ids: what ends a model turn: the end of turn, and the EOS when it differs.
      renders_tools: the template writes a tools block when given `tools=`.
    """

    tokenizer: Any
    name: str
    end_of_turn_id: int
    stop_token_ids: tuple[int, ...]
    renders_tools: bool

    @classmethod
    def of(cls, tokenizer: TextCodec) -> ChatTemplate:
        """The tokenizer's template, probed once per tokenizer (and again if its template changes)."""
        source = getattr(tokenizer, "chat_template", None)
        cached = getattr(tokenizer, "_probed_chat_template", None)
        if cached is None or cached[0] != source:
            cached = (source, cls._probe(tokenizer))
            with contextlib.suppress(AttributeError):  # a tokenizer that takes no attributes is probed each time
                tokenizer._probed_chat_template = cached
        return cached[1]

    @classmethod
    def _probe(cls, tokenizer: TextCodec) -> ChatTemplate:
        source = getattr(tokenizer, "chat_template", None)
        label = getattr(tokenizer, "name", "") or type(tokenizer).__name__
        if not source:
            raise ChatTemplateError(f"chat mode needs a chat template; tokenizer {label!r} has none "
                                    "(use mode='continuation')")
        name = f"{label!r} (sha1 {hashlib.sha1(source.encode()).hexdigest()[:10]})"
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
        after = text[text.rindex(_PROBE) + len(_PROBE):] if _PROBE in text else ""
        ids = tokenizer.encode(after, add_special_tokens=False)
        if not ids or tokenizer.decode(ids[:1], skip_special_tokens=True) != "":
            raise ChatTemplateError(f"chat template of {name} ends an assistant turn with {after[:40]!r}, not a special "
                                    "token: chat mode stops each model turn at the template's end-of-turn token")
        eos = tokenizer.eos_token_id
        stops = (ids[0],) if eos is None or eos == ids[0] else (ids[0], eos)
        user = [{"role": "user", "content": "hi"}]
        try:
            renders_tools = "probe_tool" in tokenizer.apply_chat_template(user, tools=[_PROBE_TOOL])
        except jinja2.TemplateError:
            renders_tools = False
        return cls(tokenizer=tokenizer, name=name, end_of_turn_id=ids[0], stop_token_ids=stops,
                   renders_tools=renders_tools)

    def render(self, messages: Sequence[Mapping[str, str]], tools: Sequence[Any] | None, turn: int) -> str:
        """The conversation as the template writes it, ending with the generation prompt."""
        try:
            return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                      **({"tools": list(tools)} if tools else {}))
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template of {self.name} failed to render turn {turn}: {e}") from e


def observation_messages(step: Step) -> list[dict[str, str]]:
    """The env's reply as chat messages (see the module docstring)."""
    messages = step.info.get("messages")
    if messages is None or step.info.get("observation_truncated"):
        return [{"role": str(step.info.get("role", "user")), "content": step.observation}]
    if not isinstance(messages, list) or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError(f"Step.info['messages'] must be a list of {{'role': str, 'content': str}}, got {messages!r:.200}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class ChatConversation:
    """The episode's messages and the template's rendering of them (ending with the generation prompt)."""

    def __init__(self, template: ChatTemplate, obs: Observation):
        self.template = template
        tools = list(obs.info.get("tools") or ())
        self.tools = tools if tools and template.renders_tools else None
        system = obs.info.get("system_without_tools") if self.tools else None
        system = system or obs.info.get("system")
        self.messages = ([{"role": "system", "content": str(system)}] if system else []) + [
            {"role": "user", "content": obs.text}]
        self.rendered = template.render(self.messages, self.tools, turn=0)

    def add_turn(self, model_ids: Sequence[int], reply: list[dict[str, str]], turn: int) -> list[int]:
        """Adds the model's turn (its kept tokens) and the env's reply; returns the ids that follow the
        model's tokens: the template's text after them, up to and including the next generation prompt."""
        t = self.template
        ended = bool(model_ids) and model_ids[-1] == t.end_of_turn_id
        tok = t.tokenizer
        content = tok.decode(list(model_ids[:-1] if ended else model_ids), skip_special_tokens=False)
        messages = [*self.messages, {"role": "assistant", "content": content}, *reply]
        rendered = t.render(messages, self.tools, turn)
        if not rendered.startswith(self.rendered):
            i = next((i for i, (a, b) in enumerate(zip(self.rendered, rendered, strict=False)) if a != b),
                     len(rendered))
            raise ChatTemplateError(
                f"chat template of {t.name} is not append-only at turn {turn}: with the model's turn and the env's "
                f"reply it renders the conversation before them differently (from character {i}: "
                f"{self.rendered[max(0, i - 40):i + 40]!r} became {rendered[max(0, i - 40):i + 40]!r}), e.g. it "
                "drops earlier reasoning. Chat mode trains on one growing token sequence, which this template would "
                "not show the model; use a template that renders each turn the same whatever follows, or "
                "mode='continuation'.")
        suffix = rendered[len(self.rendered):]
        shown = content + (tok.decode([t.end_of_turn_id]) if ended else "")
        if not suffix.startswith(shown):
            raise ChatTemplateError(
                f"chat template of {t.name} does not show the model's turn {turn} as sampled: the model's tokens "
                f"spell {shown[-200:]!r} but the template renders {suffix[:len(shown) + 20][-220:]!r} (it edits "
                "assistant content, e.g. trims whitespace or strips <think>). Training on the sampled tokens would "
                "not match what the template shows the model.")
        self.messages, self.rendered = messages, rendered
        return tok.encode(suffix[len(shown):], add_special_tokens=False)


class ChatTranscript:
    """Chat mode's `agentic.rollout.transcript.Transcript`: the contract above."""

    def __init__(self, tokenizer: TextCodec):
        self.tokenizer, self.template = tokenizer, ChatTemplate.of(tokenizer)
        self.stop_token_ids = self.template.stop_token_ids
        self.chat: ChatConversation | None = None

    def start(self, obs: Observation) -> list[int]:
        self.chat = ChatConversation(self.template, obs)
        return self.tokenizer.encode(self.chat.rendered, add_special_tokens=False)

    def keep(self, ids: list[int], kept: int) -> int:
        t = self.template
        if ids[kept:kept + 1] == [t.end_of_turn_id]:
            kept += 1  # the model ended its turn right at the cut: keep (and train) its end of turn
        if kept and ids[kept - 1] in t.stop_token_ids and ids[kept - 1] != t.end_of_turn_id:
            kept -= 1  # another stop token (a base model's EOS): the template's end of turn replaces it
        return kept

    def follow(self, kept_ids: list[int], step: Step, turn: int) -> list[int]:
        return self.chat.add_turn(kept_ids, observation_messages(step), turn)

    def metrics(self, tokens: list[int]) -> dict[str, float]:
        one_shot = self.tokenizer.encode(self.tokenizer.decode(tokens, skip_special_tokens=False),
                                         add_special_tokens=False)
        return {"retokenized_differs": float(one_shot != tokens)}
