"""Agent programs as environments: an agent written only against the `openai` client (a subprocess, not our
code) runs against our server in session mode on SmolLM2-135M-Instruct: one tool call, one streamed reply;
the recorded trajectory's tokens are what the engine sampled, mask 1 exactly on them, and it trains
through `Learner.update`."""

import asyncio
import json
import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from agentic import models
from agentic.inference.engine import EngineConfig, JaxEngine
from agentic.inference.http_server import SGLangServer, start_server
from agentic.learner import Learner, LearnerConfig

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness_agent.py")


@pytest.fixture(scope="module")
def smollm2():
    return models.load_model("smollm2-135m-instruct")


class Recording:
    """Keeps every completion the engine returns (what it sampled), around the real engine."""

    def __init__(self, engine):
        self.completions, inner = [], engine.generate

        async def generate(requests, keys=None):
            out = await inner(requests, keys)
            self.completions += [(list(r.prompt_ids), c) for r, c in zip(requests, out, strict=True)]
            return out
        engine.generate = generate


async def run_agent(url: str, *args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, AGENT, url, *args, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def test_an_openai_client_agent_becomes_a_trajectory(smollm2):
    config, params, tok = smollm2
    engine = JaxEngine(config, params, tok, EngineConfig(num_slots=2, max_len=1024, prefill_chunk=512))
    recording = Recording(engine)
    server = SGLangServer(engine, model_path="smollm2")

    async def main():
        port = portpicker.pick_unused_port()
        runner = await start_server(server, "127.0.0.1", port)
        try:
            base = f"http://127.0.0.1:{port}/sessions/%s/v1"
            return await asyncio.gather(run_agent(base % "tools-0"), run_agent(base % "plain-0", "--no-tools"))
        finally:
            await runner.cleanup()
            await engine.close()

    seen, plain = asyncio.run(main())
    # What the agent saw: an OpenAI-shaped tool call it could run, then a streamed reply, token by token.
    assert seen["finish_reason"] == "tool_calls" and seen["tool_calls"][0]["name"] == "add"
    assert set(seen["tool_calls"][0]["arguments"]) == {"a", "b"} and seen["tool_calls"][0]["id"].startswith("call_")
    assert seen["stream_chunks"] >= 2 and seen["streamed"], (seen, plain)
    assert seen["reported"]["trajectories"] == 1 and seen["reported"]["diverged"] == 0
    assert plain["tool_calls"] == [] and plain["reported"]["trajectories"] == 1

    [traj] = server.chat.sessions.take("tools-0")
    [other] = server.chat.sessions.take("plain-0")
    assert traj.reward == 1.0 and other.reward == 0.0 and traj.group_id == other.group_id == "add"
    for t in (traj, other):
        ids = t.tokens.tolist()
        assert len(t.turn_starts) == 2 and t.metrics["prompt_diverged"] == 0.0
        # The engine's two requests of this session: each prompt is the recorded tokens up to the turn
        # (the engine continued from them), and what it sampled follows, with its log-probs, mask 1.
        turns = sorted({len(p): (p, c) for p, c in recording.completions  # (both agents' first requests are alike)
                        if ids[:len(p) + len(c.token_ids)] == p + list(c.token_ids)}.values(), key=lambda pc: len(pc[0]))
        assert [len(p) for p, _ in turns] == list(t.turn_starts)
        for p, c in turns:
            n = len(c.token_ids)
            assert t.loss_mask[len(p):len(p) + n].all()
            # (the two agents' alike first requests may differ in float noise: one ran in a mixed step)
            assert t.behavior_logprobs[len(p):len(p) + n].tolist() == pytest.approx(list(c.logprobs), abs=1e-5)
        assert int(t.loss_mask.sum()) == sum(len(c.token_ids) for _, c in turns)  # mask 1 exactly there
        assert (t.behavior_logprobs[t.loss_mask == 0] == 0).all()
    first = tok.decode(traj.tokens[traj.turn_starts[0]:traj.turn_starts[1]].tolist())
    assert first.startswith('<tool_call>\n{"name": "add"') and "<|im_start|>tool\n" in first  # then the tool turn
    streamed = tok.decode(traj.tokens[traj.turn_starts[1]:].tolist(), skip_special_tokens=True)
    assert streamed.startswith(seen["streamed"])

    cfg = models.get_config("tiny").replace(vocab_size=config.vocab_size)
    learner = Learner(LearnerConfig(lr=1e-2, micro_batch_size=2, seq_buckets=(512,), mesh_shape=(1, 1, 1)), cfg)
    before = jax.tree.map(np.asarray, learner.params)
    metrics = learner.update([traj, other])
    assert learner.version == 1 and np.isfinite(metrics["learner/loss"])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, learner.params))
    assert any(changed)
