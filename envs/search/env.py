"""The Search-R1 environment (Jin et al. 2025, arXiv 2503.09516), faithful to its public code.

Protocol, per model turn (an *action*):

  * `<search> query </search>`: the env retrieves the top-k passages and answers
    `"\\n\\n<information>Doc 1(Title: T1) text1\\nDoc 2(Title: T2) text2\\n...</information>\\n\\n"`
    (the title is the first line of the passage, with its wiki-18 quotes, as in Search-R1).
  * `<answer> text </answer>`: the episode ends and is scored.
  * anything else: Search-R1's invalid-action message, the episode goes on.

Where a turn ends, as Search-R1's `_postprocess_responses`: it generates without stop strings and
cuts the turn's text after the first `</search>` if the turn holds one anywhere, else after the
first `</answer>`; then the first `<search>…</search>` or `<answer>…</answer>` pair of the cut text
is the action (`postprocess_predictions`). So `<answer> A </answer> then <search> q </search>`
is all kept and answers A, and `<search> q <answer> A </answer> </search>` searches
"q <answer> A </answer>". The env announces that rule to the episode: stop strings `("</search>",)`
(generating past the first `</search>` would be cut anyway) and the turn cut
`["</search>", "</answer>"]` in `Observation.info` (see `agentic.rollout.episode.cut_turn`), so the
tokens trained on are the tokens the cut keeps and the env gets the cut text.

Turn limit, as Search-R1's generation loop: the first `max_turns` actions are executed; one more
final action is allowed, in which an answer is scored but a search is not executed (the episode
ends, `truncated=True`). So a model sees at most `max_turns` search results and may still answer
after `max_turns` searches: an episode takes up to `max_turns + 1` model turns, which reset
announces as `Observation.info["max_turns"]` (the actor's turn budget must be at least that).

Observations are capped at `max_obs_tokens` tokens (the whole `<information>` block, wrapper
included): with `obs_tokenizer` (a tokenizer.json path, a directory holding one, or a model name
for `agentic.models.load_tokenizer`) tokens are the model's; without, whitespace-separated words.
Unlike Search-R1, which cuts the observation's token ids (and so may cut `</information>`), the
passages are cut and the wrapper kept, so tags stay balanced.

Reward (on the last step): exact match of the answer after SQuAD normalization against any gold
answer (`reward="em"`), or Search-R1 v0.3's format-aware score (`reward="em_format"`). Answers are
taken from the model's actions only: the two `<answer>` pairs of the prompt ("inside <answer> and
</answer>", "<answer> Beijing </answer>") and the one of the invalid-action message never count,
and an episode without a model answer scores 0. Search-R1 extracts from prompt + response instead
and scores such an episode on "Beijing" or "and" (see `envs/search/rewards.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
import threading
from typing import Any

from agentic.core import Env, Observation, Step, Task
from envs.search import rewards
from envs.search.batching import MicroBatcher

PROMPT_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query "
    "</search> and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> "
    "and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

INVALID_ACTION = (
    "\nMy previous action is invalid. "
    "If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)

STOP = ("</search>",)
TURN_CUT = ("</search>", "</answer>")  # in priority order: Search-R1's `_postprocess_responses`
_OBS_PREFIX, _OBS_SUFFIX = "\n\n<information>", "</information>\n\n"


def make_prompt(question: str) -> str:
    """Search-R1's prompt; like its data scripts, a question not ending in "?" gets one."""
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return PROMPT_TEMPLATE.format(question=question)


def format_passages(hits: list[dict]) -> str:
    """Search-R1's `_passages2string`: "Doc {i}(Title: {first line}) {rest}\\n" per hit."""
    out = []
    for i, hit in enumerate(hits):
        title, _, text = hit["document"]["contents"].partition("\n")
        out.append(f"Doc {i + 1}(Title: {title}) {text}\n")
    return "".join(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchR1Config:
    """Knobs of the search_r1 env (JSON-serializable; passed as keyword arguments to `make`).

    Attributes:
        retriever: "bm25" | "dense" (in-process, read `index_dir`) or "http" (a Search-R1
            compatible /retrieve server at `retrieval_url`).
        index_dir: index directory (`python -m envs.search.build_index`); None = the cached
            synthetic world of `world_passages` passages and seed `world_seed`.
        retrieval_url: e.g. "http://127.0.0.1:8000/retrieve" for retriever "http".
        encoder: encoder directory overriding the one recorded in a dense index.
        cache_dir: where the default world is cached (default $AGENTIC_CACHE_DIR or ~/.cache/agentic).
        topk: passages per search (Search-R1: 3).
        max_turns: executed actions per episode, plus one final answer-only action (Search-R1: 4).
        max_obs_tokens: cap on one observation (Search-R1: 500).
        obs_tokenizer: tokenizer used to count observation tokens; None = whitespace words.
        reward: "em" (0/1 exact match) or "em_format" (Search-R1 v0.3 format reward).
        structure_format_score, final_format_score, retrieval_score: v0.3 reward knobs.
        micro_batch: most queries one retrieval call serves (1 = no micro-batching).
        micro_batch_wait_ms: how long a query waits for others to join its batch.
    """

    retriever: str = "bm25"
    index_dir: str | None = None
    retrieval_url: str | None = None
    encoder: str | None = None
    world_passages: int = 20_000
    world_seed: int = 0
    cache_dir: str | None = None
    topk: int = 3
    max_turns: int = 4
    max_obs_tokens: int = 500
    obs_tokenizer: str | None = None
    reward: str = "em"
    structure_format_score: float = 0.2
    final_format_score: float = 0.1
    retrieval_score: float = 0.0  # Search-R1's v0.3 scripts run with reward_model.retrieval_score=0
    micro_batch: int = 256
    micro_batch_wait_ms: float = 5.0

    def __post_init__(self):
        if self.retriever not in ("bm25", "dense", "http"):
            raise ValueError(f"retriever must be 'bm25', 'dense' or 'http', got {self.retriever!r}")
        if self.retriever == "http" and not self.retrieval_url:
            raise ValueError("retriever='http' needs retrieval_url (e.g. http://127.0.0.1:8000/retrieve)")
        if self.reward not in ("em", "em_format"):
            raise ValueError(f"reward must be 'em' or 'em_format', got {self.reward!r}")
        for name in ("topk", "max_turns", "max_obs_tokens", "micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_wait_ms < 0:
            raise ValueError(f"micro_batch_wait_ms must be >= 0, got {self.micro_batch_wait_ms}")


# One retriever (and its micro-batcher) per process and retrieval setting, shared by all episodes.
_BATCHERS: dict[tuple, MicroBatcher] = {}
_BATCHERS_LOCK = threading.Lock()


def shared_batcher(config: SearchR1Config) -> MicroBatcher:
    from envs.search.build_index import add_dense_index, cached_world_dir
    from envs.search.retrieval import load_retriever, read_meta

    key = (config.retriever, config.index_dir, config.retrieval_url, config.encoder, config.world_passages,
           config.world_seed, config.cache_dir, config.micro_batch, config.micro_batch_wait_ms)
    with _BATCHERS_LOCK:
        batcher = _BATCHERS.get(key)
        if batcher is None:
            index_dir = config.index_dir
            if index_dir is None and config.retriever != "http":
                index_dir = cached_world_dir(config.world_passages, config.world_seed, config.cache_dir)
                if config.retriever == "dense" and not read_meta(index_dir).get("dense"):
                    add_dense_index(index_dir, config.encoder)
            retriever = load_retriever(config.retriever, index_dir=index_dir, url=config.retrieval_url,
                                       encoder_dir=config.encoder)
            batcher = MicroBatcher(retriever, max_batch=config.micro_batch,
                                   max_wait_ms=config.micro_batch_wait_ms)
            _BATCHERS[key] = batcher
        return batcher


@functools.lru_cache(maxsize=8)
def _load_tokenizer(name: str):
    path = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if os.path.isfile(path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        tok.no_truncation()  # a tokenizer.json may carry its model's truncation/padding; counting needs neither
        tok.no_padding()
        return tok
    from agentic.models import load_tokenizer  # a model name of the registry

    return load_tokenizer(name)


def _count_and_cut(text: str, budget: int, tokenizer_name: str | None) -> tuple[int, str]:
    """(tokens in text, text cut after its first `budget` tokens)."""
    if tokenizer_name is None:
        ends = [m.end() for m in re.finditer(r"\S+", text)]
    else:
        tok = _load_tokenizer(tokenizer_name)
        enc = tok.encode(text, add_special_tokens=False)
        if not hasattr(enc, "offsets"):  # an agentic.models tokenizer: ids only
            ids = list(enc)
            return len(ids), text if len(ids) <= budget else tok.decode(ids[:budget])
        ends = [end for _, end in enc.offsets]
    if len(ends) <= budget:
        return len(ends), text
    return len(ends), text[: ends[budget - 1]] if budget > 0 else ""


def truncate_observation(passages: str, max_tokens: int, tokenizer_name: str | None = None) -> tuple[str, bool]:
    """Wraps passages in <information> tags, cutting the passages so the whole fits `max_tokens`."""
    wrapper, _ = _count_and_cut(_OBS_PREFIX + _OBS_SUFFIX, max_tokens, tokenizer_name)
    body = passages.strip()
    _, cut = _count_and_cut(body, max(0, max_tokens - wrapper), tokenizer_name)
    return _OBS_PREFIX + cut + _OBS_SUFFIX, cut != body


class SearchR1Env(Env):
    """One Search-R1 episode. Task: `{"question", "golden_answers": [...], ...}`."""

    def __init__(self, config: SearchR1Config, batcher: MicroBatcher | None = None):
        self.config = config
        self._batcher = batcher
        self._task: Task | None = None
        self._gold: list[str] = []
        self._response: list[str] = []  # actions and observations, in order (for the format reward)
        self._turns = 0
        self._search_calls = 0
        self._invalid = 0
        self._obs_truncated = 0
        self._answer: str | None = None
        self._reward = 0.0
        self._em = 0.0
        self._done = False

    async def reset(self, task: Task) -> Observation:
        if "question" not in task or "golden_answers" not in task:
            raise ValueError(f"search_r1 task needs 'question' and 'golden_answers', got keys {sorted(task)}")
        if isinstance(task["golden_answers"], str):
            raise ValueError("search_r1 task 'golden_answers' must be a list of strings, not a string")
        self._gold = [str(g) for g in task["golden_answers"]]
        if self._batcher is None:  # the first episode of a process loads the index, off the event loop
            self._batcher = await asyncio.to_thread(shared_batcher, self.config)
        self._task = task
        return Observation(text=make_prompt(str(task["question"])),
                           info={"stop": list(STOP), "turn_cut": list(TURN_CUT),
                                 "max_turns": self.config.max_turns + 1, "env": "search_r1"})

    async def step(self, action: str) -> Step:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        if self._done:
            raise RuntimeError("step() after the episode ended")
        self._turns += 1
        self._response.append(action)
        kind, content = rewards.parse_action(action)
        final_turn = self._turns > self.config.max_turns
        if kind == "answer":
            self._answer = content
            return self._finish({})
        if final_turn:
            if kind is None:
                self._invalid += 1
            return self._finish({"reason": "max_turns"}, truncated=True)
        if kind == "search":
            self._search_calls += 1
            hits = await self._batcher.search(content, self.config.topk)
            obs, cut = truncate_observation(format_passages(hits), self.config.max_obs_tokens,
                                            self.config.obs_tokenizer)
            self._obs_truncated += int(cut)
            self._response.append(obs)
            return Step(observation=obs, info={"action": "search", "query": content, "observation_truncated": cut})
        self._invalid += 1
        self._response.append(INVALID_ACTION)
        return Step(observation=INVALID_ACTION, info={"action": "invalid"})

    def _finish(self, info: dict[str, Any], truncated: bool = False) -> Step:
        self._done = True
        gold = self._gold
        self._em = float(rewards.em_check(self._answer, gold))
        if self.config.reward == "em":
            self._reward = self._em
        else:
            c = self.config
            self._reward = rewards.format_reward(
                "".join(self._response), self._answer, gold, structure_format_score=c.structure_format_score,
                final_format_score=c.final_format_score, retrieval_score=c.retrieval_score)
        info = {**info, "action": "answer" if self._answer is not None else "none", "answer": self._answer,
                "metrics": self.metrics()}
        return Step(observation="", reward=self._reward, done=True, truncated=truncated, info=info)

    def metrics(self) -> dict[str, float]:
        return {"em": self._em, "reward": self._reward, "search_calls": float(self._search_calls),
                "turns": float(self._turns), "invalid_actions": float(self._invalid),
                "answered": float(self._answer is not None), "obs_truncated": float(self._obs_truncated)}


def make_env(**kwargs: Any) -> SearchR1Env:
    """Registry factory: `agentic.env.make("search_r1", topk=3, ...)` (see `SearchR1Config`)."""
    return SearchR1Env(SearchR1Config(**kwargs))
