"""Search-R1's turn budget and turn cut, whole episodes through a real search_r1 env host.

The expected results are worked out here from Search-R1's own definitions (its
`search_r1/llm_agent/generation.py`), independently of our env and episode code.
"""

import asyncio
import re

import pytest

from agentic import models
from agentic.env.client import EnvClient
from agentic.env.local_hosts import HostProcess
from agentic.rollout.episode import EpisodeConfig, run_episode
from agentic.rollout.remote_env import RemoteEnv
from agentic.rollout.scripted import ScriptedGenerator

TASK = {"id": "china", "question": "What is the capital of China", "golden_answers": ["Beijing"]}
GOLD = "beijing"


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def host():
    with HostProcess(["search_r1"], "--import", "envs") as h:
        yield h


class Script:
    """A scripted policy: its turns, in order, whatever it observes."""

    def __init__(self, turns):
        self.turns = list(turns)

    def act(self, observation: str) -> str:
        return self.turns.pop(0)


class MarkedLogprobs(ScriptedGenerator):
    """The scripted generator, with distinct log-probs per token (so a test can see which were kept)."""

    def __init__(self, tokenizer, turns):
        super().__init__(tokenizer, lambda prompt: Script(turns))
        self.completions = []

    async def generate(self, requests):
        out = []
        for c in await super().generate(requests):
            c = type(c)(**{**c.__dict__, "logprobs": tuple(-0.01 * (i + 1) for i in range(len(c.token_ids)))})
            self.completions.append(c)
            out.append(c)
        return out


class RecordingEnv(RemoteEnv):
    """A remote search_r1 session that records the actions it is sent."""

    actions: list

    async def step(self, action):
        self.actions.append(action)
        return await super().step(action)


def run(host, tokenizer, tmp_path, turns, *, episode_turns, **env_kwargs):
    generator = MarkedLogprobs(tokenizer, turns)
    kwargs = {"world_passages": 200, "world_seed": 0, "cache_dir": str(tmp_path / "world"), "max_turns": 4,
              **env_kwargs}

    async def main():
        async with EnvClient(host.address) as client:
            env = RecordingEnv(client, "search_r1", kwargs)
            env.actions = []
            traj = await run_episode(env=env, task=TASK, generator=generator, tokenizer=tokenizer,
                                     config=EpisodeConfig(max_turns=episode_turns, max_new_tokens_per_turn=128,
                                                          max_total_tokens=8192),
                                     episode_id="e0", group_id="g0", seed=0)
            return traj, env.actions

    traj, actions = asyncio.run(asyncio.wait_for(main(), 120))
    return traj, actions, generator.completions


# --- item 1: the turn budget ---------------------------------------------------------------------

def test_four_searches_then_an_answer_needs_max_turns_plus_one_model_turns(host, tokenizer, tmp_path):
    """Search-R1's `run_llm_loop`: `max_turns` rounds of generate -> search, then one final
    generation (`do_search=False`). With max_turns=4, four searches and then an answer are scored
    on the answer: EM 1. The episode needs 4 + 1 model turns for it; with 4 it is cut off first."""
    env_max_turns = 4
    turns = [f"<think>look {i}</think><search> capital of China {i} </search>" for i in range(env_max_turns)]
    turns.append("<think>found it</think><answer> Beijing </answer>")

    traj, actions, _ = run(host, tokenizer, tmp_path, turns, episode_turns=env_max_turns + 1)
    assert (traj.reward, traj.metrics["em"], traj.truncated) == (1.0, 1.0, False)
    assert traj.metrics["search_calls"] == env_max_turns and len(traj.turn_starts) == env_max_turns + 1
    assert actions == turns

    traj, actions, _ = run(host, tokenizer, tmp_path, turns, episode_turns=env_max_turns)
    assert (traj.reward, traj.truncated) == (0.0, True)
    assert traj.metrics["search_calls"] == env_max_turns and actions == turns[:env_max_turns]


def test_env_announces_its_turn_budget_and_cut(tmp_path):
    from envs.search import make_env

    env = make_env(world_passages=200, world_seed=0, cache_dir=str(tmp_path / "world"), max_turns=4)
    obs = asyncio.run(env.reset(TASK))
    assert obs.info["max_turns"] == 5  # 4 executed actions + the final answer-only one
    assert obs.info["stop"] == ["</search>"] and obs.info["turn_cut"] == ["</search>", "</answer>"]


# --- item 2: where a turn ends -------------------------------------------------------------------

def search_r1_cut(text: str) -> str:
    """Search-R1's `_postprocess_responses` on one decoded turn: up to the first `</search>` if the
    turn holds one anywhere, else up to the first `</answer>`, else the whole turn."""
    for tag in ("</search>", "</answer>"):
        if tag in text:
            return text.split(tag)[0] + tag
    return text


def search_r1_action(text: str):
    """Search-R1's `postprocess_predictions`: the first <search>/<answer> pair decides."""
    m = re.search(r"<(search|answer)>(.*?)</\1>", text, re.DOTALL)
    return (m.group(1), m.group(2).strip()) if m else (None, "")


FOLLOW_UP = "<think>ok</think><answer> Rome </answer>"  # a wrong answer, if the episode gets that far

TURNS = [
    # Both tags: `</search>` takes priority, the first pair decides -> an answer, all of it kept.
    "<think>sure</think><answer> Beijing </answer> then <search> capital of China </search>",
    # An unclosed <search> around an answer: cut at `</search>`, the search pair matches first.
    "<think>hm</think><search> capital <answer> Beijing </answer> of China </search> and more",
    # A search, then an answer in the same turn: the answer is cut off.
    "<think>hm</think><search> capital of China </search> <answer> Beijing </answer>",
    # An answer and trailing text: cut after `</answer>`.
    "<think>sure</think><answer> Beijing </answer> and that is all.",
    # An unclosed answer: nothing cut, an invalid action.
    "<think>sure</think><answer> Beijing",
]


@pytest.mark.parametrize("turn", TURNS)
def test_turn_is_cut_and_parsed_as_search_r1_does(host, tokenizer, tmp_path, turn):
    traj, actions, completions = run(host, tokenizer, tmp_path, [turn, FOLLOW_UP], episode_turns=5)

    cut = search_r1_cut(turn)
    kind, content = search_r1_action(cut)
    if kind == "answer":  # Search-R1: the episode ends, scored on that answer
        expected_actions = [cut]
        expected = {"reward": float(content.lower() == GOLD), "search_calls": 0.0}
    else:  # a search (executed) or an invalid action (the env's message); then the follow-up answer
        expected_actions = [cut, FOLLOW_UP]
        expected = {"reward": 0.0, "search_calls": float(kind == "search")}
    assert actions == expected_actions  # the env receives the cut text
    assert {"reward": traj.reward, "search_calls": traj.metrics["search_calls"]} == expected
    assert traj.metrics["invalid_actions"] == float(kind is None)

    # The first turn's trained tokens are exactly the tokens that spell the cut text.
    start = traj.turn_starts[0]
    end = traj.turn_starts[1] if len(traj.turn_starts) > 1 else len(traj.tokens)
    mask = traj.loss_mask[start:end]
    kept = int(mask.sum())
    assert mask[:kept].all() and not mask[kept:].any()  # kept tokens, then the observation
    kept_ids = traj.tokens[start:start + kept].tolist()
    assert tokenizer.decode(kept_ids, skip_special_tokens=True) == cut
    assert kept_ids == list(completions[0].token_ids[:kept])
    # an EOS the model emits right at the cut is kept (and trained): the model learns to stop there
    eos = [tokenizer.eos_token_id] if kept_ids[-1:] == [tokenizer.eos_token_id] else []
    assert kept_ids == tokenizer.encode(cut, add_special_tokens=False) + eos
    assert traj.behavior_logprobs[start:start + kept].tolist() == pytest.approx(completions[0].logprobs[:kept])
    assert not traj.behavior_logprobs[start + kept:end].any()


def test_text_after_an_answer_counts_for_the_format_reward(host, tokenizer, tmp_path):
    """Search-R1 v0.3 `compute_score_em` (qa_em_format.py) sees the whole cut turn: a correct answer
    followed by a search is a malformed sequence (`is_valid_sequence`: a tag after the final
    `</answer>`), so it scores `score - structure_format_score`, not `score`."""
    score, structure_format_score = 1.0, 0.2
    traj, _, _ = run(host, tokenizer, tmp_path, [TURNS[0]], episode_turns=5, reward="em_format",
                     structure_format_score=structure_format_score, retrieval_score=0.0)
    assert traj.reward == pytest.approx(score - structure_format_score)
    assert traj.metrics["em"] == 1.0


class PieceCodec:
    """Tokens are given text pieces (so one token can spell past a cut string)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_cut_turn_keeps_the_token_that_completes_the_cut_string():
    from agentic.rollout.episode import cut_turn

    pieces = ["<answer>", " A ", "</ans", "wer>\n", "<search>", " q ", "</search>", " tail"]
    codec = PieceCodec(pieces)
    answer_then_tail = [0, 1, 2, 3, 7]
    # The token "wer>\n" completes "</answer>": it is kept, "\n" with it; the env gets the exact cut.
    assert cut_turn(answer_then_tail, ["</search>", "</answer>"], codec) == (4, "<answer> A </answer>")
    # Priority is the list's order, not the position in the text.
    both = [0, 1, 2, 3, 4, 5, 6, 7]
    assert cut_turn(both, ["</search>", "</answer>"], codec) == (7, "<answer> A </answer>\n<search> q </search>")
    assert cut_turn(both, ["</answer>", "</search>"], codec) == (4, "<answer> A </answer>")
    assert cut_turn(both, [], codec) == (8, codec.decode(both))
    assert cut_turn([], ["</search>"], codec) == (0, "")
