"""ToolEnv in chat mode, end to end: a real env host subprocess, SmolLM2-135M-Instruct (real
weights, from its GGUF) in the embedded engine, and a scripted tool-calling policy."""

import asyncio
import dataclasses
import json

import pytest

from agentic import models
from agentic.env.client import EnvClient
from agentic.env.local_hosts import HostProcess
from agentic.inference.engine import EngineConfig, JaxEngine
from agentic.rollout.episode import EpisodeConfig, run_episode
from agentic.rollout.remote_env import RemoteEnv
from agentic.rollout.scripted import ScriptedGenerator
from envs.tools.env import ToolEnv

TASK = {"id": "mul", "prompt": "What is 17 * 23?", "answer": "391"}
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'
CALCULATOR_DESCRIPTION = "Evaluates an arithmetic expression (+ - * / ** %, sqrt, log, sin, cos, pi, e)."
CALCULATOR_PARAMETERS = {"type": "object", "properties": {"expression": {"type": "string",
                                                                        "description": "e.g. (3 + 4) * 2 / 7"}},
                         "required": ["expression"]}
CONFIG = EpisodeConfig(mode="chat", max_turns=3, max_new_tokens_per_turn=96, max_total_tokens=1024, temperature=0.0)


@pytest.fixture(scope="module")
def smollm2():
    return models.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def host():
    with HostProcess(["tools"], "--import", "envs") as h:
        yield h


class Recording:
    """A generator that keeps every completion it returns (what the model sampled)."""

    def __init__(self, inner):
        self.inner, self.completions = inner, []

    async def generate_one(self, request):
        completion = await self.inner.generate_one(request)
        self.completions.append(completion)
        return completion

    async def release(self, session_id):
        await self.inner.release(session_id)


def episode(host, generator, tokenizer, config=CONFIG):
    async def main():
        async with EnvClient(host.address) as client:
            env = RemoteEnv(client, "tools", {"tools": ["calculator"], "max_turns": 2})
            return await run_episode(env=env, task=TASK, generator=generator, tokenizer=tokenizer, config=config,
                                     episode_id="e0", group_id="g0", seed=0)
    return asyncio.run(asyncio.wait_for(main(), 120))


def assert_only_sampled_tokens_train(traj, completions, end_of_turn):
    """Loss mask 1 exactly on each turn's sampled tokens (with their log-probs), 0 elsewhere."""
    ids = traj.tokens.tolist()
    assert len(traj.turn_starts) == len(completions)
    for start, c in zip(traj.turn_starts, completions, strict=True):
        n = len(c.token_ids)
        assert ids[start:start + n] == list(c.token_ids) and traj.loss_mask[start:start + n].all()
        assert traj.behavior_logprobs[start:start + n].tolist() == pytest.approx(list(c.logprobs))
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == end_of_turn  # the turn ended at the template's end of turn
    assert traj.loss_mask.sum() == sum(len(c.token_ids) for c in completions)
    assert (traj.behavior_logprobs[traj.loss_mask == 0] == 0).all()


def test_scripted_calls_are_answered_in_tool_turns(host, smollm2):
    _, _, tok = smollm2

    class TwoCallsThenAnswer:
        def __init__(self):
            self.turn, self.observations = 0, []

        def act(self, observation):
            self.observations.append(observation)
            self.turn += 1
            return CALL % "17 * 23" + "\n" + CALL % "2 ** 10" if self.turn == 1 else "<answer>391</answer>"

    policy = TwoCallsThenAnswer()
    generator = Recording(ScriptedGenerator(tok, lambda prompt: policy))
    traj = episode(host, generator, tok)
    assert traj.reward == 1.0 and traj.metrics["tool_calls"] == 2 and traj.metrics["retokenized_differs"] == 0

    # SmolLM2's template has no tools block: the tools come in ToolEnv's system message.
    system = ToolEnv(tools=["calculator"]).system_prompt()
    prompt = tok.decode(traj.tokens[:traj.prompt_len].tolist())
    assert prompt == (f"<|im_start|>system\n{system}<|im_end|>\n"
                      "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n")
    schema = {"type": "function", "function": {"name": "calculator", "description": CALCULATOR_DESCRIPTION,
                                               "parameters": CALCULATOR_PARAMETERS}}
    assert "<tools>\n" + json.dumps(schema) + "\n</tools>" in system
    # The two calls of turn 1 are answered in two tool turns; mask 0, between the model's turns.
    first, second = traj.turn_starts
    between = tok.decode(traj.tokens[first + len(generator.completions[0].token_ids):second].tolist())
    assert between == ('\n<|im_start|>tool\n{"name": "calculator", "content": "391"}<|im_end|>\n'
                       '<|im_start|>tool\n{"name": "calculator", "content": "1024"}<|im_end|>\n<|im_start|>assistant\n')
    assert '"content": "391"}\ntool\n' in policy.observations[1]  # what the scripted policy read
    assert_only_sampled_tokens_train(traj, generator.completions, tok.eos_token_id)
    # Token-exact: the whole episode is the template's one-shot rendering of the conversation.
    turns = [CALL % "17 * 23" + "\n" + CALL % "2 ** 10", "<answer>391</answer>"]
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": TASK["prompt"]},
                    {"role": "assistant", "content": turns[0]},
                    {"role": "tool", "content": '{"name": "calculator", "content": "391"}'},
                    {"role": "tool", "content": '{"name": "calculator", "content": "1024"}'}]
    one_shot = tok.apply_chat_template(conversation, add_generation_prompt=True) + turns[1] + "<|im_end|>"
    assert traj.tokens.tolist() == tok.encode(one_shot)


def test_the_real_model_in_chat_mode(host, smollm2):
    """SmolLM2 itself (greedy) against the tools host: its turns end at `<|im_end|>`, only its
    sampled tokens train, and the episode reads as the template's rendering."""
    config, params, tok = smollm2
    engine = JaxEngine(config, params, tok, EngineConfig(num_slots=2, max_len=1024, prefill_chunk=512))
    try:
        generator = Recording(engine)
        traj = episode(host, generator, tok, dataclasses.replace(CONFIG, max_new_tokens_per_turn=40))
    finally:
        engine.close_sync()
    assert generator.completions and traj.metrics["turns"] >= 1
    assert_only_sampled_tokens_train(traj, generator.completions, tok.token_to_id("<|im_end|>"))
    text = tok.decode(traj.tokens.tolist())
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant that can call tools.")
    # Between two turns: the end of turn (unless the model sampled it), the env's tool or user
    # turn, the generation prompt; nothing else.
    for c, start, end in zip(generator.completions, traj.turn_starts, traj.turn_starts[1:], strict=False):
        between = tok.decode(traj.tokens[start + len(c.token_ids):end].tolist())
        between = between if c.token_ids[-1] == tok.eos_token_id else between.removeprefix("<|im_end|>")
        assert between.startswith(("\n<|im_start|>tool\n{", "\n<|im_start|>user\nno <tool_call> or <answer>"))
        assert between.endswith("<|im_end|>\n<|im_start|>assistant\n") and between.count("assistant") == 1
