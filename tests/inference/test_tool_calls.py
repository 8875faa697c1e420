"""Tool calls in each family's format and the session recorder's bookkeeping, without a model: hermes and
Llama-3 JSON parse into OpenAI's shape and render back; OpenAI messages become what Qwen2.5's and
Llama-3's real templates render; a session extends a chain only when the rendering does, and flags a
rewritten history instead of re-tokenizing it."""

import json

import pytest

from agentic.core import Completion
from agentic.inference import tool_calls as tc
from agentic.inference.harness_session import HarnessSessions, SessionError
from tests.rollout.chat_tokenizers import family_tokenizer


def test_hermes_and_llama3_calls_parse_to_openai_shape_and_render_back():
    text = 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    content, calls = tc.parse_tool_calls(text, tc.HERMES)
    assert content == "Let me add." and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})}
    assert tc.render_tool_calls(calls, tc.HERMES) == text[len("Let me add.\n"):]
    content, calls = tc.parse_tool_calls('<|python_tag|>{"name": "add", "parameters": {"a": 1}}; '
                                         '{"name": "neg", "parameters": {"x": 4}}', tc.LLAMA3_JSON)
    assert content is None and [c["function"]["name"] for c in calls] == ["add", "neg"]
    for broken in ("<tool_call>\n{not json}\n</tool_call>", "no call at all", '<tool_call>{"arguments": {}}</tool_call>'):
        assert tc.parse_tool_calls(broken, tc.HERMES) == (broken, [])  # stays text, as vLLM leaves it
    assert tc.parse_tool_calls("The answer is {5}.", tc.LLAMA3_JSON)[1] == []


def test_families_are_read_from_their_templates_and_render_openai_messages():
    qwen, llama = family_tokenizer("qwen2.5"), family_tokenizer("llama3")
    assert tc.detect_format(qwen) == tc.HERMES and tc.detect_format(llama) == tc.LLAMA3_JSON
    assert tc.template_abilities(qwen) == (True, True)
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    messages = [{"role": "user", "content": "Add 2 and 3."},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    rendered = qwen.apply_chat_template(tc.template_messages(messages, tc.HERMES, True), add_generation_prompt=True)
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>' in rendered
    assert "<tool_response>\n5\n</tool_response>" in rendered
    inline = tc.template_messages(messages, tc.HERMES, False)  # a template without tool_calls support
    assert inline[1]["content"] == tc.render_tool_calls([call], tc.HERMES) and "tool_calls" not in inline[1]
    with pytest.raises(tc.ToolCallError, match="tools\\[0\\]"):
        tc.check_tools([{"type": "function", "function": {}}])
    with pytest.raises(tc.ToolCallError, match="tool_choice"):
        tc.check_tool_choice("required", [])


def completion(ids, logprob=-0.5):
    return Completion(token_ids=tuple(ids), logprobs=(logprob,) * len(ids), finish_reason="stop", weight_version=3)


def test_a_session_extends_its_chain_and_flags_a_rewritten_history():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
    sessions = HarnessSessions()
    s = sessions.get("k1")
    turn = s.prepare("<u>hi<a>", encode)
    s.record(turn, [completion(encode("yo!"))], decode, [("yo!", [])], end_of_turn=None)
    assert s.assistant_text({"role": "assistant", "content": "yo!"}) == "yo!"
    turn = s.prepare("<u>hi<a>yo!<u>more<a>", encode)  # extends: only the new text is tokenized
    assert turn.parent is not None and turn.prompt_ids == encode("<u>hi<a>yo!<u>more<a>")
    s.record(turn, [completion(encode("ok"), -0.25)], decode, [("ok", [])], end_of_turn=None)
    rewritten = s.prepare("<u>HI<a>", encode)  # the harness rewrote history: a new chain, flagged
    assert rewritten.parent is None and rewritten.diverged
    s.record(rewritten, [completion(encode("x"))], decode, [("x", [])], end_of_turn=None)
    trajectories = sessions.report("k1", 1.0, group_id="g")
    assert len(trajectories) == 2
    main, flagged = trajectories
    assert main.tokens.tolist() == encode("<u>hi<a>yo!<u>more<a>ok") and main.turn_starts == (8, 21)
    assert main.loss_mask.tolist() == [0] * 8 + [1] * 3 + [0] * 10 + [1] * 2
    assert main.behavior_logprobs[21:].tolist() == [-0.25, -0.25] and main.policy_version == 3
    assert main.metrics["prompt_diverged"] == 0.0 and flagged.metrics["prompt_diverged"] == 1.0
    assert main.reward == flagged.reward == 1.0 and main.group_id == "g"
    with pytest.raises(SessionError, match="already reported"):
        sessions.get("k1")
    with pytest.raises(SessionError, match="finite number"):
        sessions.report(sessions.get("k2").key, float("nan"))
    with pytest.raises(SessionError, match="key must be"):
        sessions.get("bad key/../x")
    assert sessions.take("k1") == trajectories
