"""Chat episodes (`agentic.rollout.chat`): token-exact against the model's own chat template.

The property: after every turn the episode's token ids are the template's rendering of the whole
conversation so far, tokenized at once, for SmolLM2's template (its GGUF tokenizer) and the
Qwen2.5 and Llama-3 templates (fixtures/chat_templates, on small BPE tokenizers of each family).
The expected ids here are computed only with `apply_chat_template` and `encode`, from the plan of
each random conversation, never with the episode's own code.
"""

import asyncio
import json
import random

import pytest

from agentic import models
from agentic.core import Completion, Env, Generator, Observation, Step
from agentic.models.tokenizer import Tokenizer
from agentic.rollout.chat import ChatTemplate, ChatTemplateError
from agentic.rollout.episode import EpisodeConfig, run_episode
from envs.tools.env import ToolEnv
from tests.rollout.chat_tokenizers import family_tokenizer

TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluates arithmetic.",
                                           "parameters": {"type": "object",
                                                          "properties": {"expression": {"type": "string"}}}}}]
SYSTEM, SYSTEM_WITHOUT_TOOLS = "Use the calculator. Tools: calculator(expression).", "Use the calculator."
PIECES = ["the", "answer", "is", "391", "Let", "me", "compute", "17", "*", "23", "naïve", "数学问题", "🙂", "Привет",
          "x=1;", "{", "}", '"quoted"', "tab\there", "line\nbreak", "two  spaces", "<answer>4</answer>", "(3 + 4) / 7",
          "¿qué?", "a\n\nparagraph", "<think>", "</think>"]


@pytest.fixture(scope="module")
def smollm2():
    return models.load_tokenizer("smollm2-135m-instruct")


def tokenizer_of(name, smollm2):
    return smollm2 if name == "smollm2" else family_tokenizer(name)


RENDERS_TOOLS = {"smollm2": False, "qwen2.5": True, "llama3": True}


# ------------------------------------------------------------------ a planned conversation


def random_plan(rng: random.Random) -> dict:
    """Model turns (text, whether the model ends it with its end-of-turn token) and env replies."""
    def text(k):
        return " ".join(rng.choice(PIECES) for _ in range(k))

    turns = []
    for _ in range(rng.randint(1, 5)):
        content = text(rng.randint(0, 8))
        for _ in range(rng.choice([0, 0, 1, 2])):
            args = {"expression": f"{rng.randint(0, 99)} * {rng.randint(0, 99)}"}
            content += f'\n<tool_call>\n{json.dumps({"name": "calculator", "arguments": args})}\n</tool_call>'
        content = content.strip() or "ok"
        kind = rng.choice(["tools", "user", "user_text", "empty"])
        if kind == "tools":  # parallel calls' responses, some errors, some empty
            reply = [{"role": "tool", "content": rng.choice([
                json.dumps({"name": "calculator", "content": text(2)}, ensure_ascii=False),
                json.dumps({"name": "calculator", "error": "not valid JSON: " + text(3)}, ensure_ascii=False),
                ""])} for _ in range(rng.randint(1, 3))]
        else:
            reply = [{"role": "user", "content": "" if kind == "empty" else text(rng.randint(1, 6))}]
        turns.append({"content": content, "eot": rng.random() < 0.85, "reply": reply, "as_text": kind == "user_text"})
    return {"prompt": text(rng.randint(1, 6)), "turns": turns, "ends_done": rng.random() < 0.5}


def render(tok, renders_tools, messages):
    """The template's one-shot rendering of `messages` (with the tools when it has a tools block)."""
    kwargs = {"tools": TOOLS} if renders_tools else {}
    return tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)


class PlannedEnv(Env):
    def __init__(self, plan):
        self.plan, self.turn = plan, 0

    async def reset(self, task):
        return Observation(text=self.plan["prompt"], info={"system": SYSTEM, "system_without_tools": SYSTEM_WITHOUT_TOOLS,
                                                           "tools": TOOLS})

    async def step(self, action):
        turn = self.plan["turns"][self.turn]
        assert action == turn["content"]  # the env gets the model's text
        self.turn += 1
        if self.turn == len(self.plan["turns"]) and self.plan["ends_done"]:
            return Step(observation="", reward=1.0, done=True)
        reply = turn["reply"]
        if turn["as_text"]:  # one message from the observation text, role from info
            return Step(observation=reply[0]["content"], info={"role": "user"})
        return Step(observation="\n".join(m["content"] for m in reply), info={"messages": reply})


class PlannedModel(Generator):
    """Samples the plan's turns (the tokenizer's own encoding of each text) and checks, at every
    turn, that the episode so far is the template's one-shot rendering of the planned conversation."""

    def __init__(self, tok, plan, renders_tools):
        self.tok, self.plan, self.renders_tools = tok, plan, renders_tools
        self.eot = tok.token_to_id("<|eot_id|>") or tok.token_to_id("<|im_end|>")  # Llama-3's, else ChatML's
        system = SYSTEM_WITHOUT_TOOLS if renders_tools else SYSTEM
        self.messages = [{"role": "system", "content": system}, {"role": "user", "content": plan["prompt"]}]
        self.sampled, self.stop_token_ids = [], set()

    def turn_ids(self, turn):
        return self.tok.encode(turn["content"]) + ([self.eot] if turn["eot"] else [])

    async def generate(self, requests):
        (r,) = requests
        k = len(self.sampled)
        if k:
            previous = self.plan["turns"][k - 1]
            self.messages += [{"role": "assistant", "content": previous["content"]}, *previous["reply"]]
        assert list(r.prompt_ids) == self.tok.encode(render(self.tok, self.renders_tools, self.messages)), f"turn {k}"
        self.stop_token_ids |= set(r.params.stop_token_ids)
        ids = self.turn_ids(self.plan["turns"][k])
        self.sampled.append(ids)
        return [Completion(token_ids=tuple(ids), logprobs=tuple(-0.1 * (k + 1) for _ in ids),
                           finish_reason="stop" if self.plan["turns"][k]["eot"] else "length")]


def chat_episode(tok, env, generator, max_turns=8, **kw):
    config = EpisodeConfig(mode="chat", max_turns=max_turns, max_new_tokens_per_turn=4096, max_total_tokens=100_000,
                           **kw)
    return asyncio.run(run_episode(env=env, task={"id": "t"}, generator=generator, tokenizer=tok, config=config,
                                   episode_id="e", group_id="g", seed=0))


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5", "llama3"])
def test_random_conversations_are_the_templates_one_shot_rendering(name, smollm2):
    tok = tokenizer_of(name, smollm2)
    assert ChatTemplate.of(tok).renders_tools == RENDERS_TOOLS[name]
    rng = random.Random(name)
    for _ in range(60):
        plan = random_plan(rng)
        model = PlannedModel(tok, plan, RENDERS_TOOLS[name])
        n = len(plan["turns"])
        traj = chat_episode(tok, PlannedEnv(plan), model, max_turns=n)
        ids = traj.tokens.tolist()
        assert len(model.sampled) == n and model.stop_token_ids == {model.eot} == {ChatTemplate.of(tok).end_of_turn_id}
        # The whole episode, tokenized once: the conversation through the last reply, rendered by
        # the template, then (when the env ended it) the model's last turn as it spelled it.
        if plan["ends_done"]:
            last = model.turn_ids(plan["turns"][-1])
            assert ids == tok.encode(render(tok, model.renders_tools, model.messages) + tok.decode(last))
            assert traj.reward == 1.0
        else:
            last = plan["turns"][-1]
            full = [*model.messages, {"role": "assistant", "content": last["content"]}, *last["reply"]]
            assert ids == tok.encode(render(tok, model.renders_tools, full)) and traj.truncated
        # Loss mask 1 exactly on the sampled tokens, with their log-probs; 0 on everything else.
        assert [ids[s:s + len(t)] for s, t in zip(traj.turn_starts, model.sampled, strict=True)] == model.sampled
        assert traj.loss_mask.sum() == sum(map(len, model.sampled))
        for k, (s, t) in enumerate(zip(traj.turn_starts, model.sampled, strict=True)):
            assert traj.loss_mask[s:s + len(t)].all() and (traj.behavior_logprobs[s:s + len(t)] == -0.1 * (k + 1)).all()
        assert traj.prompt_len == traj.turn_starts[0] and traj.metrics["retokenized_differs"] == 0.0


def test_turns_sampled_in_another_tokenization_are_kept_and_flagged(smollm2):
    """A model may spell its text in ids the tokenizer would not choose (here: byte by byte, and a
    leading newline that merges with the generation prompt's): the ids stay as sampled, the text is
    still the template's rendering, and `retokenized_differs` says the one-shot ids would differ."""
    tok = smollm2
    eot = ChatTemplate.of(tok).end_of_turn_id
    plan = {"prompt": "hi", "ends_done": False, "turns": [
        {"content": "\nok then", "eot": True, "reply": [{"role": "user", "content": "and?"}], "as_text": False}]}
    spelled = [tok.token_to_id(c) for c in ["Ċ", "o", "k", "Ġ", "t", "h", "e", "n"]] + [eot]

    class Spelling(PlannedModel):
        def turn_ids(self, turn):
            return spelled

    model = Spelling(tok, plan, renders_tools=False)
    traj = chat_episode(tok, PlannedEnv(plan), model, max_turns=1)
    s = traj.turn_starts[0]
    assert traj.tokens[s:s + len(spelled)].tolist() == spelled and traj.loss_mask.sum() == len(spelled)
    messages = [*model.messages, {"role": "assistant", "content": "\nok then"}, plan["turns"][0]["reply"][0]]
    one_shot = render(tok, False, messages)
    assert tok.decode(traj.tokens.tolist()) == one_shot and tok.encode(one_shot) != traj.tokens.tolist()
    assert traj.metrics["retokenized_differs"] == 1.0


def test_a_template_that_rewrites_earlier_turns_is_refused():
    """Qwen3's template drops an assistant turn's <think> reasoning once a later user message
    arrives: the conversation it renders is not the growing sequence the model saw."""
    tok = family_tokenizer("qwen3")
    turns = [{"content": "<think>\nplan a call\n</think>\n\n<tool_call>\n{}\n</tool_call>", "eot": True,
              "reply": [{"role": "tool", "content": "4"}], "as_text": False},
             {"content": "<think>\nit said 4\n</think>\n\nIs 4 right?", "eot": True,
              "reply": [{"role": "user", "content": "yes"}], "as_text": False}]
    plan = {"prompt": "2 + 2?", "ends_done": False, "turns": turns}
    with pytest.raises(ChatTemplateError) as e:
        chat_episode(tok, PlannedEnv(plan), PlannedModel(tok, plan, renders_tools=True), max_turns=2)
    message = str(e.value)
    assert message.startswith("chat template of 'qwen3 (test BPE)' (sha1 ") and "not append-only at turn 1" in message
    assert "plan a call" in message and "mode='continuation'" in message


def test_a_template_that_edits_the_models_turn_is_refused():
    """Llama-3's template trims message content: a turn ending in whitespace is not what it shows."""
    tok = family_tokenizer("llama3")
    plan = {"prompt": "hi", "ends_done": False, "turns": [
        {"content": "hello there \n", "eot": True, "reply": [{"role": "user", "content": "ok"}], "as_text": False}]}

    class Raw(PlannedModel):  # no one-shot check: the rendering cannot hold this turn
        async def generate(self, requests):
            ids = self.turn_ids(self.plan["turns"][len(self.sampled)])
            self.sampled.append(ids)
            return [Completion(token_ids=tuple(ids), logprobs=(0.0,) * len(ids), finish_reason="stop")]

    with pytest.raises(ChatTemplateError) as e:
        chat_episode(tok, PlannedEnv(plan), Raw(tok, plan, renders_tools=True), max_turns=1)
    assert "'llama3 (test BPE)'" in str(e.value) and "does not show the model's turn 0 as sampled" in str(e.value)
    assert "'hello there \\n<|eot_id|>'" in str(e.value)


def test_the_end_of_turn_comes_from_the_template_and_other_stops_give_way_to_it():
    """A tokenizer whose EOS is not the template's end of turn (Llama-3's base `<|end_of_text|>`):
    both stop a turn; a turn ended by the EOS is closed by the template's `<|eot_id|>`, mask 0."""
    base = family_tokenizer("llama3")
    tok = Tokenizer(base.hf_tokenizer, eos_token_id=base.token_to_id("<|end_of_text|>"), bos_token_id=base.bos_token_id,
                    chat_template=base.chat_template, name="llama3-base")
    template = ChatTemplate.of(tok)
    eot, eos = base.token_to_id("<|eot_id|>"), base.token_to_id("<|end_of_text|>")
    assert template.end_of_turn_id == eot and template.stop_token_ids == (eot, eos)
    plan = {"prompt": "hi", "ends_done": False, "turns": [
        {"content": "hello", "eot": False, "reply": [{"role": "user", "content": "ok"}], "as_text": False}]}

    class EndsWithEos(PlannedModel):
        def turn_ids(self, turn):
            return self.tok.encode(turn["content"]) + [eos]

    model = EndsWithEos(tok, plan, renders_tools=True)
    traj = chat_episode(tok, PlannedEnv(plan), model, max_turns=1)
    ids, s = traj.tokens.tolist(), traj.turn_starts[0]
    hello = tok.encode("hello")
    assert model.stop_token_ids == {eot, eos} and eos not in ids
    assert ids[s:s + len(hello) + 1] == hello + [eot] and traj.loss_mask[s:].sum() == len(hello)


def test_tool_env_calls_in_the_qwen25_template():
    """ToolEnv in a chat episode with Qwen2.5's template: the template writes the tools block, the
    system message holds only the instructions, and a turn's parallel calls are answered in one
    tool turn (the template groups the tool messages), which the model's next turn follows."""
    tok = family_tokenizer("qwen2.5")
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'
    turns = [call % "17 * 23" + "\n" + call % "2 ** 10", "<answer>391</answer>"]

    class Script(Generator):
        async def generate(self, requests):
            ids = tok.encode(turns.pop(0)) + [tok.eos_token_id]
            return [Completion(token_ids=tuple(ids), logprobs=(0.0,) * len(ids), finish_reason="stop")]

    env = ToolEnv(tools=["calculator"], max_turns=3)
    traj = asyncio.run(run_episode(env=env, task={"prompt": "What is 17 * 23?", "answer": "391"}, generator=Script(),
                                   tokenizer=tok, config=EpisodeConfig(mode="chat", max_turns=3, max_new_tokens_per_turn=64),
                                   episode_id="e", group_id="g", seed=0))
    text = tok.decode(traj.tokens.tolist())
    prompt = tok.decode(traj.tokens[:traj.prompt_len].tolist())
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant that can call tools. When you know")
    assert "\n\n# Tools\n\nYou may call one or more functions" in prompt and prompt.count('"name": "calculator"') == 1
    assert prompt.endswith("<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n")
    assert ('</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"name": "calculator", "content": "391"}\n'
            '</tool_response>\n<tool_response>\n{"name": "calculator", "content": "1024"}\n</tool_response><|im_end|>\n'
            "<|im_start|>assistant\n<answer>391</answer><|im_end|>") in text
    assert traj.reward == 1.0 and traj.metrics["tool_calls"] == 2 and traj.metrics["retokenized_differs"] == 0


def test_chat_mode_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"unknown episode mode 'chatt'; choose one of \['continuation', 'chat'\]"):
        EpisodeConfig(mode="chatt")
    tok = Tokenizer(family_tokenizer("qwen2.5").hf_tokenizer, eos_token_id=2, name="no-template")
    with pytest.raises(ChatTemplateError, match="tokenizer 'no-template' has none"):
        ChatTemplate.of(tok)
