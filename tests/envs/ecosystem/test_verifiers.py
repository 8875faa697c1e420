"""The verifiers adapter through a real env host subprocess, with the real package (verifiers 0.3.1's
classic API): a MultiTurnEnv and a ToolEnv written in `vf_envs.py` and loaded by their
`load_environment`, the ReasoningGymEnv that verifiers ships, and an env that raises (the session
fails with EnvStepError naming the exception, and the host serves the next episode)."""

import asyncio

import pytest

from agentic.env.client import EnvClient
from agentic.env.errors import EnvStepError, InvalidEnvRequest
from agentic.env.local_hosts import HostProcess
from tests.env_client import run_with_client as run

GUESS = {"environment": "tests.envs.ecosystem.vf_envs:load_environment"}
SECRETS = (11, 3, 16, 8)  # vf_envs.load_environment's dataset
RG = {"environment": "verifiers:ReasoningGymEnv",
      "env_args": {"gym": "basic_arithmetic", "num_train_examples": 6, "num_eval_examples": 2, "seed": 3}}


@pytest.fixture(scope="module")
def host():
    with HostProcess(["verifiers"], "--import", "envs.ecosystem.verifiers", startup_timeout_s=120) as h:
        yield h


async def binary_search(client, task, kwargs=GUESS):
    session, obs = await client.open("verifiers", task, kwargs)
    low, high, steps = 1, 16, []
    while not steps or not steps[-1].done:
        guess = (low + high) // 2
        steps.append(await client.step(session, str(guess)))
        if "higher" in steps[-1].observation:
            low = guess + 1
        elif "lower" in steps[-1].observation:
            high = guess - 1
    return obs, steps, await client.close(session)


def test_a_multi_turn_env_runs_to_its_stop_condition_and_the_rubric_scores_it(host):
    async def body(client):
        solved = await asyncio.gather(*(binary_search(client, {"index": i}) for i in range(len(SECRETS))))
        session, _ = await client.open("verifiers", {"index": 0}, GUESS)
        wrong = [await client.step(session, a) for a in ("1", "one", "2", "3", "4", "5")]
        wrong_metrics = await client.close(session)
        given = await binary_search(client, {"prompt": [{"role": "user", "content": "Guess."}], "answer": "5"})
        session, _ = await client.open("verifiers", {"index": 2}, GUESS)
        gave_up = [await client.step(session, a) for a in ("4", "give up")]
        return solved, wrong, wrong_metrics, given, gave_up

    solved, wrong, wrong_metrics, given, gave_up = run(host.address, body)
    for secret, (obs, steps, metrics) in zip(SECRETS, solved, strict=True):
        assert obs.text == "I picked a number from 1 to 16. Guess it."
        assert obs.info["system"].startswith("Guess the secret number") and obs.info["max_turns"] == 6
        assert all(s.info["messages"][0]["role"] == "user" and " is wrong: go " in s.observation for s in steps[:-1])
        last = steps[-1]
        assert last.done and last.reward == 1.0 and last.info["stop_condition"] == "guessed"
        assert last.info["answer"] == str(secret) and last.observation == ""
        assert metrics["correct"] == 1.0 and metrics["guesses"] == len(steps) - 1 == metrics["turns"] - 1
    assert wrong[1].observation == "Reply with a number."
    assert [s.done for s in wrong] == [False] * 5 + [True]  # max_turns=6
    assert wrong[-1].reward == 0.0 and wrong[-1].info["stop_condition"] == "max_turns_reached"
    assert wrong_metrics["correct"] == 0.0 and wrong_metrics["num_turns"] == 6.0
    assert given[1][-1].reward == 1.0 and given[0].text == "Guess." and "system" not in given[0].info
    assert gave_up[1].done and gave_up[1].reward == 0.0 and gave_up[1].observation == "The number was 16."
    assert gave_up[1].info["stop_condition"] == "has_final_env_response"
    assert gave_up[1].info["messages"] == [{"role": "user", "content": "The number was 16."}]


def test_a_tool_env_gets_hermes_tool_calls_and_answers_with_tool_messages(host):
    kwargs = {"environment": "tests.envs.ecosystem.vf_envs:load_tool_environment"}
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1234, "b": 4321}}\n</tool_call>'

    async def body(client):
        session, obs = await client.open("verifiers", {"index": 0}, kwargs)
        steps = [await client.step(session, call), await client.step(session, "<tool_call>{not json</tool_call>")]
        metrics = await client.close(session)
        session, _ = await client.open("verifiers", {"index": 0}, kwargs)
        steps += [await client.step(session, call), await client.step(session, "It is 5555.")]
        return obs, steps, metrics

    obs, steps, metrics = run(host.address, body)
    assert [t["function"]["name"] for t in obs.info["tools"]] == ["add"]
    assert obs.info["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    assert steps[0].info["messages"] == [{"role": "tool", "content": "5555"}] and not steps[0].done
    # a turn without a (well-formed) call is the answer: ToolEnv's `no_tools_called` ends the rollout
    assert steps[1].done and steps[1].reward == 0.0 and steps[1].info["stop_condition"] == "no_tools_called"
    assert metrics["add_calls"] == 1.0 and metrics["total_tool_calls"] == 1.0
    assert steps[3].done and steps[3].reward == 1.0 and steps[3].info["metrics"]["mentions_answer"] == 1.0


def test_verifiers_own_reasoning_gym_env(host):
    import reasoning_gym

    entries = reasoning_gym.create_dataset("basic_arithmetic", size=8, seed=3)

    async def body(client):
        results = []
        for i in range(4):
            session, obs = await client.open("verifiers", {"index": i}, RG)
            answer = entries[i]["answer"] if i % 2 == 0 else "no idea"
            results.append((obs, await client.step(session, f"<answer>{answer}</answer>"), await client.close(session)))
        session, obs = await client.open("verifiers", {"index": 1, "split": "eval"}, RG)
        return results, obs

    results, eval_obs = run(host.address, body)
    for i, (obs, step, metrics) in enumerate(results):
        assert obs.text == entries[i]["question"] and "<answer>" in obs.info["system"]
        assert step.done and step.reward == (1.0 if i % 2 == 0 else 0.0)
        assert metrics["check_answer_reward_func"] == step.reward and metrics["format_reward_func"] == 1.0
    assert eval_obs.text == entries[7]["question"]


def test_a_single_turn_env_scored_by_verifiers_math_rubric(host):
    kwargs = {"environment": "tests.envs.ecosystem.vf_envs:load_math_environment"}
    replies = ["So it is \\boxed{0.5}.", "\\boxed{\\frac{1}{2}}", "\\boxed{1/3}", "2^10 = \\boxed{1024}"]

    async def body(client):
        results = []
        for index, reply in zip((0, 0, 0, 1), replies, strict=True):
            session, obs = await client.open("verifiers", {"index": index}, kwargs)
            results.append((obs, await client.step(session, reply)))
            await client.close(session)
        return results

    results = run(host.address, body)
    assert results[0][0].text == "What is 1/4 + 1/4?" and "boxed" in results[0][0].info["system"]
    assert [step.reward for _, step in results] == [1.0, 1.0, 0.0, 1.0]
    assert all(step.done and step.info["stop_condition"] == "max_turns_reached" for _, step in results)


def test_a_raising_env_fails_its_session_with_a_typed_error_and_the_host_goes_on(host):
    raising = {"environment": "tests.envs.ecosystem.vf_envs:load_raising_environment"}

    async def body(client):
        session, _ = await client.open("verifiers", {"index": 1}, raising)
        first = await client.step(session, "9")
        with pytest.raises(EnvStepError) as e:
            await client.step(session, "raise")
        with pytest.raises(EnvStepError) as bad_index:
            await client.open("verifiers", {"index": 99}, GUESS)
        with pytest.raises(InvalidEnvRequest) as missing:
            await client.open("verifiers", {}, {"environment": "no_such_verifiers_env"})
        session, _ = await client.open("verifiers", {"index": 0},
                                       {"environment": "tests.envs.ecosystem.vf_envs:load_forgetful_environment"})
        with pytest.raises(EnvStepError) as forgetful:
            await client.step(session, "9")
        after = await binary_search(client, {"index": 1}, raising)
        return first, str(e.value), str(bad_index.value), str(missing.value), str(forgetful.value), after

    first, error, bad_index, missing, forgetful, after = run(host.address, body)
    assert first.observation == "9 is wrong: go lower."
    assert "KeyError" in error and "GuessNumberEnv was told to raise" in error
    assert "index 99" in bad_index and "4 rows" in bad_index
    assert "no_such_verifiers_env" in missing and "Could not import" in missing
    assert "RuntimeError" in forgetful and "turn by turn can be hosted" in forgetful
    assert after[1][-1].reward == 1.0  # the host lives on


def test_the_adapter_passes_the_conformance_suite():
    """Garbage actions get observations, episodes end on their own, metrics are numbers."""
    import envs.ecosystem.verifiers  # noqa: F401
    from agentic.env.conformance import check_env
    from agentic.env.registry import get_spec

    assert asyncio.run(check_env(get_spec("verifiers"))) == []


def test_a_chat_episode_renders_the_verifiers_tool_env_in_the_models_template(host):
    """The actor's chat mode over this host: the env's tools go to Qwen2.5's tools block, its tool
    message is a tool turn, and the episode is the template's one-shot rendering of the conversation."""
    from agentic.rollout.episode import EpisodeConfig, run_episode
    from agentic.rollout.remote_env import RemoteEnv
    from agentic.rollout.scripted import ScriptedGenerator
    from tests.rollout.chat_tokenizers import family_tokenizer

    tok = family_tokenizer("qwen2.5")
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1234, "b": 4321}}\n</tool_call>'

    class CallThenAnswer:
        def __init__(self):
            self.turn = 0

        def act(self, observation):
            self.turn += 1
            return call if self.turn == 1 else "5555"

    config = EpisodeConfig(mode="chat", max_turns=4, max_new_tokens_per_turn=96, max_total_tokens=2048)

    async def main():
        async with EnvClient(host.address) as client:
            env = RemoteEnv(client, "verifiers", {"environment": "tests.envs.ecosystem.vf_envs:load_tool_environment"})
            generator = ScriptedGenerator(tok, lambda prompt: CallThenAnswer())
            return await run_episode(env=env, task={"index": 0}, generator=generator, tokenizer=tok, config=config,
                                     episode_id="e0", group_id="g0", seed=0)

    traj = asyncio.run(asyncio.wait_for(main(), 120))
    assert traj.reward == 1.0 and len(traj.turn_starts) == 2
    text = tok.decode(traj.tokens.tolist(), skip_special_tokens=False)
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in text
    assert "<tool_response>\n5555\n</tool_response>" in text
    tools = [{"type": "function", "function": {"name": "add", "description": "Adds two integers.", "parameters": {
        "properties": {"a": {"description": "the first number.", "title": "A", "type": "integer"},
                       "b": {"description": "the second number.", "title": "B", "type": "integer"}},
        "required": ["a", "b"], "title": "add_args", "type": "object", "additionalProperties": False}}}]
    conversation = [{"role": "user", "content": "What is 1234 + 4321? Use the add tool."},
                    {"role": "assistant", "content": call}, {"role": "tool", "content": "5555"}]
    one_shot = tok.apply_chat_template(conversation, tools=tools, add_generation_prompt=True) + "5555<|im_end|>"
    assert traj.tokens.tolist() == tok.encode(one_shot, add_special_tokens=False)
