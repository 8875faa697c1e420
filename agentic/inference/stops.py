"""When does a completion end: max_new_tokens, stop token ids / EOS, stop strings.

The rules follow SGLang's scheduler (`Req.check_finished`), checked after every
generated token, in this order:

1. `length`: the completion has `max_new_tokens` tokens
   -> finish_reason {"type": "length", "length": max_new_tokens}.
2. token: the last token is in `stop_token_ids`, or is the tokenizer's EOS
   (unless `ignore_eos`) -> {"type": "stop", "matched": token_id}.
3. string: a stop string appears in the detokenized output
   -> {"type": "stop", "matched": "the string"}.

Stop strings are matched on the detokenized *tail* of the output (the last few
tokens, enough to hold the longest stop string), so the cost per token does not
grow with the output length. A string is only searched in generated text, never
in the prompt. The matched token (or the tokens spelling the stop string) stay
in the output token ids; servers trim the *text* (SGLang's `no_stop_trim`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


@dataclasses.dataclass(frozen=True)
class Finish:
    """Why a completion ended: kind is "stop" | "length" | "abort"."""

    kind: str
    matched: str | int | None = None
    length: int | None = None

    def to_sglang(self) -> dict:
        """SGLang's meta_info.finish_reason dict."""
        if self.kind == "length":
            return {"type": "length", "length": self.length}
        if self.kind == "abort":
            return {"type": "abort", "message": str(self.matched or "aborted")}
        return {"type": "stop", "matched": self.matched}


class StopChecker:
    """Checks one request's finish conditions after each new token.

    Args:
      max_new_tokens: the length cap.
      stop: stop strings.
      stop_token_ids: stop token ids (EOS included by the caller unless ignore_eos).
      tokenizer: decodes the output tail; required when `stop` is non-empty.
    """

    # Tokens decoded past the longest stop string's character count: a token spells
    # at least one character, except byte-fallback pieces of one multi-byte char.
    _TAIL_SLACK = 4

    def __init__(self, *, max_new_tokens: int, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), tokenizer: Detokenizer | None = None):
        self.max_new_tokens = int(max_new_tokens)
        self.stop = tuple(s for s in stop if s)
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        if self.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to detokenize the output")
        self.tokenizer = tokenizer
        self._tail_tokens = max((len(s) for s in self.stop), default=0) + self._TAIL_SLACK

    def check(self, output_ids: Sequence[int]) -> Finish | None:
        """Returns the Finish if `output_ids` (all generated so far) is complete."""
        n = len(output_ids)
        if n == 0:
            return None
        if n >= self.max_new_tokens:
            return Finish("length", length=self.max_new_tokens)
        last = int(output_ids[-1])
        if last in self.stop_token_ids:
            return Finish("stop", matched=last)
        if self.stop:
            tail = self.tokenizer.decode(list(output_ids[-self._tail_tokens:]))
            for s in self.stop:
                if s in tail:
                    return Finish("stop", matched=s)
        return None


def trim_text(text: str, finish: Finish | None, no_stop_trim: bool = False) -> str:
    """SGLang's text trimming: cut a matched stop string (and anything after it).

    With `no_stop_trim` the stop string is kept (text after it is still cut).
    Stop *tokens* are removed from the text by decoding without them (see
    `completion_text`).
    """
    if finish is None or not isinstance(finish.matched, str):
        return text
    pos = text.find(finish.matched)
    if pos < 0:
        return text
    return text[: pos + len(finish.matched)] if no_stop_trim else text[:pos]


def completion_text(tokenizer: Detokenizer, output_ids: Sequence[int], finish: Finish | None, *,
                    skip_special_tokens: bool = True, no_stop_trim: bool = False) -> str:
    """The text SGLang returns for a completion (stop string / stop token trimmed)."""
    ids = list(output_ids)
    if (not no_stop_trim and finish is not None and isinstance(finish.matched, int)
            and not isinstance(finish.matched, bool) and ids):
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    return trim_text(text, finish, no_stop_trim)
