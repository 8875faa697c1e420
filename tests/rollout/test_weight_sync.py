"""Weight sync from the learner to remote SGLang-API servers: export safetensors to a
shared path, POST /update_weights_from_disk with the version, and the next
completions come from the new weights (our SGLang-compatible server, real HTTP)."""

import jax
import portpicker

from agentic import models
from agentic.async_thread import AsyncThread
from agentic.core import GenerateRequest, SamplingParams
from agentic.inference.engine import EngineConfig, JaxEngine
from agentic.inference.http_server import SGLangServer, start_server
from agentic.inference.sglang_client import SGLangClient, SGLangWeights


def scaled(params):
    return jax.tree.map(lambda x: x * 8 if x.ndim >= 2 else x, params)  # non-degenerate greedy output


def test_weight_sync_to_sglang_servers(tmp_path):
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    cfg = models.get_config("tiny").replace(vocab_size=tokenizer.vocab_size)
    old, new = (scaled(models.init_params(cfg, jax.random.key(s))) for s in (0, 1))
    thread = AsyncThread("test")
    port = portpicker.pick_unused_port()
    request = GenerateRequest(prompt_ids=tokenizer.encode("The capital of Vastoria is"),
                              params=SamplingParams(max_new_tokens=8, temperature=0.0))

    async def up():
        engine = JaxEngine(cfg, old, tokenizer, EngineConfig(num_slots=2, max_len=64))
        server = SGLangServer(engine, model_path="tiny", load_params=lambda path: models.load_model(path)[1])
        return engine, await start_server(server, "127.0.0.1", port), SGLangClient([f"http://127.0.0.1:{port}"])

    engine, runner, client = thread.run(up(), timeout=120)
    try:
        before = thread.run(client.generate_one(request), timeout=120)
        SGLangWeights(client, str(tmp_path / "weights"), cfg, tokenizer, thread.run).publish(new, 1)
        after = thread.run(client.generate_one(request), timeout=120)
        assert (before.weight_version, after.weight_version) == (0, 1)
        assert after.token_ids != before.token_ids
        # What the servers loaded is exactly what the learner had.
        reloaded = models.load_model(str(tmp_path / "weights" / "version_000001"))[1]
        assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(reloaded), strict=True))
        # The next version replaces it on disk: one export kept, not one per step
        SGLangWeights(client, str(tmp_path / "weights"), cfg, tokenizer, thread.run).publish(old, 2)
        assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["version_000002"]
        assert thread.run(client.generate_one(request), timeout=120).weight_version == 2
    finally:
        thread.run(client.close(), timeout=30)
        thread.run(runner.cleanup(), timeout=30)
        thread.run(engine.close(), timeout=60)
        thread.close()
