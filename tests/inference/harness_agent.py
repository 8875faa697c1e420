"""An agent program written only against the `openai` client (and the standard library): it calls a tool,
answers in a streamed reply, and reports its reward to the server's session route. Not our code's user:
it knows nothing of the framework, only a base_url.

    python tests/inference/harness_agent.py BASE_URL [--no-tools]

BASE_URL is `{server}/sessions/{key}/v1`; prints one JSON line of what it saw.
"""

import json
import sys
import urllib.request

from openai import OpenAI

TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Adds two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": %d, "b": %d}}\n</tool_call>'


def main(base_url: str, use_tools: bool) -> None:
    client = OpenAI(base_url=base_url, api_key="none", max_retries=0)
    messages = [{"role": "system", "content": "You call tools. To add two numbers, reply with a tool call exactly "
                                              "like the examples."}]
    for a, b in [(1, 2), (4, 5), (7, 1)]:  # few-shot turns, written by the harness
        messages += [{"role": "user", "content": f"Add {a} and {b}."}, {"role": "assistant", "content": CALL % (a, b)}]
    messages.append({"role": "user", "content": "Add 2 and 3."})
    first = client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, max_tokens=48,
                                           temperature=1.0, seed=3, tool_choice="auto" if use_tools else "none")
    message = first.choices[0].message
    seen = {"finish_reason": first.choices[0].finish_reason, "tool_calls": [], "content": message.content}
    if message.tool_calls:
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)
            seen["tool_calls"].append({"id": call.id, "name": call.function.name, "arguments": args})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
    else:
        messages.append({"role": "assistant", "content": message.content})
        messages.append({"role": "user", "content": "And the sum?"})
    chunks, text = 0, ""
    for chunk in client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, max_tokens=24,
                                                temperature=1.0, seed=5, stream=True, tool_choice="none"):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            text += chunk.choices[0].delta.content
    seen.update(stream_chunks=chunks, streamed=text)
    reward = 1.0 if seen["tool_calls"] else 0.0  # the harness's own rule: it used its tool
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/reward", method="POST",
                                     data=json.dumps({"reward": reward, "group_id": "add"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        seen["reported"] = json.load(r)
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], "--no-tools" not in sys.argv[2:])
