"""Search-R1: an LLM learns to call a search engine between reasoning steps (env "search_r1").

Quick start (the default data is an embedded synthetic world, so everything runs offline):

    import agentic.env, envs.search
    world = envs.search.cached_world(num_passages=20_000, seed=0)   # built once under the cache dir
    env = agentic.env.make("search_r1")                              # BM25 over that same world
    obs = await env.reset(world.train_tasks[0])                      # obs.info["stop"] = ["</search>"]
    step = await env.step("<think>...</think><search> Kalor Venthis </search>")

Pieces:
  * `env`: `SearchR1Env` / `SearchR1Config` (prompt, action parsing, observations, turn limit,
    rewards; every knob is a config field), registered as "search_r1".
  * `rewards`: SQuAD-normalized exact match, answer extraction, Search-R1 v0.3 format reward.
  * `world`: `build_world(num_passages, seed) -> World(corpus, train_tasks, test_tasks)`, the
    deterministic synthetic world (fictional entities, 1-hop and 2-hop questions, disjoint
    train/test subjects); `parse_fact` reads a fact back from a passage (scripted policies).
  * `build_index`: on-disk indexes (CLI `python -m envs.search.build_index`), and
    `cached_world(num_passages, seed, cache)` / `cached_world_dir(...)`: the synthetic world with
    its BM25 index under `$AGENTIC_CACHE_DIR` (default `~/.cache/agentic`)/search_r1/, built on
    first use (a few seconds for 20k passages) and loaded in under a second afterwards.
  * `retrieval`: BM25 (bm25s), dense (faiss + `encoder`, a Flax BERT loading HF safetensors) and
    HTTP (any Search-R1 `/retrieve` server) retrievers; `batching.MicroBatcher` batches the
    queries of concurrent episodes into one retrieval call.
  * `retrieval_server`: `python -m envs.search.retrieval_server --port 8000 [--index DIR]`, a
    Search-R1 compatible `POST /retrieve` server (also serves Search-R1's own `e5_Flat.index` +
    `wiki-18.jsonl`; bearer token, per-request caps).
  * `corpus_store`: `MmapCorpus`, a JSONL corpus read in place (memory-mapped, one offset a line).
  * `dense_index`: wiki-18-scale dense indexes: streaming, resumable, sharded encoding (f16/bf16
    shards), any faiss type (Flat, SQfp16, IVF-PQ, HNSW), memory-mapped reads.
  * `data`: readers for wiki-18 corpora, FlashRAG QA files and Search-R1 parquet rows, and
    `load_tasks`, an experiment's train / held-out tasks (the synthetic world or those files).
  * `experiment`: what the training loop needs of a Search-R1 run (tasks, env kwargs, the
    scripted cold-start policy, which demonstrations to keep, EM on the progress line).
  * `policies`: scripted policies (search-then-answer, no-search) used as sanity baselines.
"""

from agentic.env.registry import EnvSpec, register
from envs.search.env import PROMPT_TEMPLATE, SearchR1Config, SearchR1Env, make_env, make_prompt
from envs.search.world import World, build_world

_LAZY = {"CachedWorld", "cached_world", "cached_world_dir"}  # from build_index, which is also a CLI


def __getattr__(name):
    if name in _LAZY:
        from envs.search import build_index

        return getattr(build_index, name)
    raise AttributeError(f"module 'envs.search' has no attribute {name!r}")

register(EnvSpec(
    name="search_r1",
    factory=make_env,
    max_sessions=1024,
    step_deadline_s=60.0,
    memory_mb=2048,
    description="Search-R1: <search> a corpus (BM25 / dense / HTTP) then <answer>; EM reward",
    # The conformance episode runs on a small cached synthetic world (built on first use, < 1 s).
    example_task=lambda: __getattr__("cached_world")(200, 0).test_tasks[0],
    example_kwargs={"world_passages": 200, "world_seed": 0},
))

__all__ = ["PROMPT_TEMPLATE", "CachedWorld", "SearchR1Config", "SearchR1Env", "World", "build_world",
           "cached_world", "cached_world_dir", "make_env", "make_prompt"]
