"""Demonstrations from a scripted policy, through the real actor loop.

`ScriptedGenerator` is a `Generator` whose "model" is a scripted policy (e.g.
`envs.search.policies.SearchThenAnswer`): given an episode's token history it
decodes the newest observation, asks the policy for its action and returns the
action's tokens, ended where an engine would end them (the request's stop
strings, stop tokens and `max_new_tokens`; an action the script completes ends
with the request's first stop token, the EOS a model would emit). Run through the ordinary `Actor` and
env hosts, it yields trajectories in exactly the layout RL episodes have (prompt
and observations with loss mask 0, actions with loss mask 1), which a cold-start
SFT phase trains on (`agentic.learner` policy loss "nll").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agentic.core import Completion, GenerateRequest, Generator, SamplingParams
from agentic.inference.stops import Finish, StopChecker


class ScriptedPolicy(Protocol):
    def act(self, observation: str) -> str: ...


@dataclasses.dataclass
class _Session:
    policy: ScriptedPolicy
    seen: int


class ScriptedGenerator(Generator):
    """Answers each turn with a scripted policy's action (log-probs 0: a deterministic behavior policy).

    Args:
      tokenizer: encodes actions / decodes observations.
      policy_for_prompt: builds the episode's policy from its first prompt text.
    """

    def __init__(self, tokenizer: Any, policy_for_prompt: Callable[[str], ScriptedPolicy]):
        self.tokenizer = tokenizer
        self.policy_for_prompt = policy_for_prompt
        self._sessions: dict[str, _Session] = {}

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        out = []
        for r in requests:
            if r.session_id is None:
                raise ValueError("ScriptedGenerator needs a session_id per episode")
            ids = list(r.prompt_ids)
            session = self._sessions.get(r.session_id)
            if session is None:
                session = self._sessions[r.session_id] = _Session(
                    self.policy_for_prompt(self.tokenizer.decode(ids)), 0)
            observation = self.tokenizer.decode(ids[session.seen:], skip_special_tokens=True)
            action = self.tokenizer.encode(session.policy.act(observation), add_special_tokens=False)
            action, finish = self._finish(action, r.params)
            session.seen = len(ids) + len(action)
            out.append(Completion(token_ids=tuple(action), logprobs=(0.0,) * len(action),
                                  finish_reason=finish.kind, matched=finish.matched, prompt_tokens=len(ids)))
        return out

    def _finish(self, action: list[int], params: SamplingParams) -> tuple[list[int], Finish]:
        """The action as an engine would return it: ended by a stop string, stop token or length."""
        checker = StopChecker(max_new_tokens=params.max_new_tokens, stop=params.stop,
                              stop_token_ids=params.stop_token_ids, tokenizer=self.tokenizer)
        if params.stop_token_ids:  # the script's action is complete: a model ends its turn with EOS
            action = action + [params.stop_token_ids[0]]
        for n in range(1, len(action) + 1):
            finish = checker.check(action[:n])
            if finish is not None:
                return action[:n], finish
        return action, Finish("stop")

    async def release(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
