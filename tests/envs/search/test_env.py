"""The search_r1 env: Search-R1's protocol text for text, and end to end through the env host."""

import asyncio

import numpy as np
import pytest

import agentic.env
from agentic.env.client import EnvClient
from agentic.env.local_hosts import HostProcess
from envs.search.batching import MicroBatcher
from envs.search.env import SearchR1Config, SearchR1Env, truncate_observation
from envs.search.policies import NoSearch, SearchThenAnswer, prior_guesses

# Written out independently of the implementation: Search-R1's scripts/data_process/nq_search.py.
PUBLISHED_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: What is the capital of China?\n")
INVALID = ("\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
           "</search>. If I want to give the final answer, I should put the answer between <answer> and "
           "</answer>. Let me try again.\n")
TASK = {"question": "What is the capital of China", "golden_answers": ["Beijing", "Peking"]}


class FakeRetriever:
    corpus = []

    def __init__(self):
        self.queries = []

    def batch_search(self, queries, topk):
        self.queries += queries
        return [[{"document": {"id": str(k), "contents": f'"Title {k}"\nText {k} about {q}.\nline two'},
                  "score": 1.0 - k} for k in range(topk)] for q in queries]


def make(**kw):
    retriever = FakeRetriever()
    return SearchR1Env(SearchR1Config(**kw), batcher=MicroBatcher(retriever, max_wait_ms=0)), retriever


def play(env, task, actions):
    async def main():
        obs = await env.reset(task)
        return obs, [await env.step(a) for a in actions]
    return asyncio.run(main())


def test_prompt_stop_strings_and_observation_format():
    env, retriever = make()
    obs, steps = play(env, TASK, ["<think>I should look it up.</think>\n<search> capital of China </search>"])
    assert obs.text == PUBLISHED_PROMPT
    assert obs.info["stop"] == ["</search>"]  # and the turn cut: tests/rollout/test_search_r1_turns.py
    assert obs.info["turn_cut"] == ["</search>", "</answer>"]
    assert retriever.queries == ["capital of China"]
    assert steps[0].observation == (
        '\n\n<information>Doc 1(Title: "Title 0") Text 0 about capital of China.\nline two\n'
        'Doc 2(Title: "Title 1") Text 1 about capital of China.\nline two\n'
        'Doc 3(Title: "Title 2") Text 2 about capital of China.\nline two</information>\n\n')
    assert (steps[0].reward, steps[0].done) == (0.0, False)


def test_answer_ends_episode_with_em_and_metrics():
    env, _ = make()
    _, steps = play(env, TASK, ["<search>a</search>", "no tags at all", "<think>ok</think><answer> the Peking. </answer>"])
    assert steps[1].observation == INVALID and not steps[1].done
    last = steps[2]
    assert (last.done, last.truncated, last.reward, last.observation) == (True, False, 1.0, "")
    assert last.info["metrics"] == env.metrics()
    assert {k: env.metrics()[k] for k in ("em", "search_calls", "turns", "invalid_actions")} == \
        {"em": 1.0, "search_calls": 1.0, "turns": 3.0, "invalid_actions": 1.0}
    with pytest.raises(RuntimeError, match="ended"):
        asyncio.run(env.step("<answer>x</answer>"))


def test_turn_limit_gives_one_final_unexecuted_turn():
    env, retriever = make(max_turns=2)
    _, steps = play(env, TASK, ["<search>a</search>", "<search>b</search>", "<search>c</search>"])
    assert retriever.queries == ["a", "b"]  # the final turn's search is not executed
    assert (steps[2].done, steps[2].truncated, steps[2].reward, steps[2].info["reason"]) == (True, True, 0.0, "max_turns")
    env, _ = make(max_turns=1)
    _, steps = play(env, TASK, ["<search>a</search>", "<answer>Beijing</answer>"])
    assert steps[1].done and steps[1].reward == 1.0 and not steps[1].truncated


def test_prompt_example_answer_never_counts():
    """The gold answer is the prompt's own example: a policy that never answers must still get 0."""
    env, _ = make(max_turns=1)
    obs, steps = play(env, TASK, ["<think>Beijing? see the example</think>", "For example, Beijing."])
    assert "<answer> Beijing </answer>" in obs.text
    assert steps[-1].done and steps[-1].reward == 0.0 and env.metrics()["answered"] == 0.0


def test_format_reward_option():
    good = ["<think>look up</think><search>q</search>", "<think>found</think><answer>Beijing</answer>"]
    env, _ = make(reward="em_format")
    assert play(env, TASK, good)[1][-1].reward == 1.0
    env, _ = make(reward="em_format")
    assert play(env, TASK, ["<answer>Beijing</answer>"])[1][-1].reward == pytest.approx(0.8)
    env, _ = make(reward="em_format", structure_format_score=0.3)
    assert play(env, TASK, ["<think>t</think><answer>Rome</answer>"])[1][-1].reward == pytest.approx(0.3)
    # A wrong, well-formed answer after a search that retrieved the gold answer: the v0.3 scripts
    # run with retrieval_score=0 (the default here), so no bonus unless it is asked for.
    wrong = ["<think>look up</think><search>capital of China</search>", "<think>t</think><answer>Rome</answer>"]
    env, _ = make(reward="em_format")
    assert play(env, TASK, wrong)[1][-1].reward == pytest.approx(0.2)


def test_observation_truncation_by_words_and_by_tokenizer():
    from envs.search.encoder import default_encoder_dir

    passages = "Doc 1(Title: A) " + " ".join(f"w{i}" for i in range(1000))
    obs, cut = truncate_observation(passages, 500)
    assert cut and obs.startswith("\n\n<information>Doc 1") and obs.endswith("</information>\n\n")
    assert 495 <= len(obs.split()) <= 500  # the tags glue to the first and last word
    tok_dir = default_encoder_dir()  # any tokenizer.json works; this one ships with the package
    obs, cut = truncate_observation(passages, 100, tok_dir)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{tok_dir}/tokenizer.json")
    tok.no_truncation()
    tok.no_padding()
    n = len(tok.encode(obs, add_special_tokens=False).ids)
    assert cut and 95 <= n <= 100 and obs.endswith("</information>\n\n")
    assert truncate_observation("short", 500) == ("\n\n<information>short</information>\n\n", False)
    env, _ = make(max_obs_tokens=20)
    _, steps = play(env, TASK, ["<search>q</search>"])
    assert len(steps[0].observation.split()) <= 20 and steps[0].info["observation_truncated"]


def test_bad_config_and_tasks_are_clear_errors():
    with pytest.raises(ValueError, match="retriever"):
        agentic.env.make("search_r1", retriever="google")
    with pytest.raises(ValueError, match="retrieval_url"):
        agentic.env.make("search_r1", retriever="http")
    with pytest.raises(ValueError, match="max_turns"):
        agentic.env.make("search_r1", max_turns=0)
    with pytest.raises(TypeError):
        agentic.env.make("search_r1", top_k=3)
    env, _ = make()
    with pytest.raises(ValueError, match="golden_answers"):
        asyncio.run(env.reset({"question": "q"}))
    with pytest.raises(ValueError, match="list"):
        asyncio.run(env.reset({"question": "q", "golden_answers": "Beijing"}))


async def _episodes(client, tasks, policy, env_kwargs):
    async def one(task):
        session, obs = await client.open("search_r1", task, env_kwargs)
        agent, text = policy(task), obs.text
        try:
            for _ in range(10):
                step = await client.step(session, agent.act(text))
                text = step.observation
                if step.done:
                    return step.info["metrics"]
            raise AssertionError("episode did not end")
        finally:
            await client.close(session)
    return await asyncio.gather(*(one(t) for t in tasks))


def test_end_to_end_over_env_host_needs_retrieval(world, index_dir):
    """Held-out 2-hop questions through a real env host: searching solves them, priors alone do not."""
    tasks = [t for t in world.test_tasks if t["hops"] == 2]
    assert len(tasks) >= 150
    guesses = prior_guesses(world.train_tasks)
    kwargs = {"index_dir": index_dir, "retriever": "bm25"}

    async def main(address):
        async with EnvClient(address) as client:
            searched = await _episodes(client, tasks, SearchThenAnswer, kwargs)
            guessed = await _episodes(client, tasks, lambda t: NoSearch(t, guesses), kwargs)
            return searched, guessed

    with HostProcess(["search_r1"], "--import", "envs") as host:
        searched, guessed = asyncio.run(main(host.address))
    em_search = np.mean([m["em"] for m in searched])
    em_guess = np.mean([m["em"] for m in guessed])
    print(f"held-out 2-hop EM over the env host: search-then-answer {em_search:.3f}, no-search {em_guess:.3f} "
          f"({len(tasks)} questions)")
    assert em_search >= 0.9
    assert em_guess <= 0.05
    assert np.mean([m["search_calls"] for m in searched]) == pytest.approx(2.0, abs=0.2)
    assert all(m["search_calls"] == 0 for m in guessed)
