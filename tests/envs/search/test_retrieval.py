"""Retrieval: BM25 index round trip, micro-batching, the Flax encoder, dense retrieval, /retrieve."""

import asyncio
import time

import numpy as np
import pytest
import requests

from envs.search.batching import MicroBatcher
from envs.search.build_index import build_index, cached_world
from envs.search.retrieval import BM25Retriever, DenseRetriever, HttpRetriever, load_retriever
from envs.search.world import build_world


def test_bm25_index_round_trip_finds_the_subject_passage(world, index_dir):
    retriever = load_retriever("bm25", index_dir=index_dir)
    tasks = world.test_tasks
    results = retriever.batch_search([t["question"] for t in tasks], 3)
    hits = [t["passage_ids"][0] in [h["document"]["id"] for h in r] for t, r in zip(tasks, results, strict=True)]
    assert np.mean(hits) >= 0.95
    first = results[0][0]
    assert set(first) == {"document", "score"} and set(first["document"]) == {"id", "contents"}
    assert first["document"] == world.corpus[int(first["document"]["id"])]
    assert [h["score"] for h in results[0]] == sorted((h["score"] for h in results[0]), reverse=True)


def test_bm25_edge_queries(index_dir):
    retriever = load_retriever("bm25", index_dir=index_dir)
    out = retriever.batch_search(["", "the of and", "zzzqqqxxx", "Where was he born"], 3)
    assert out[:3] == [[], [], []]  # nothing known to match: no hits rather than arbitrary ones
    assert len(out[3]) == 3
    assert retriever.batch_search([], 3) == []


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_index"):
        load_retriever("bm25", index_dir=str(tmp_path))
    with pytest.raises(ValueError, match="bm25"):
        load_retriever("sparse", index_dir=str(tmp_path))


class _Recorder:
    def __init__(self, delay_s=0.0, fail=False):
        self.batches, self.delay_s, self.fail = [], delay_s, fail

    def batch_search(self, queries, topk):
        self.batches.append(list(queries))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("index exploded")
        return [[{"document": {"id": q, "contents": q}, "score": float(k)} for k in range(topk)] for q in queries]


def test_micro_batcher_batches_concurrent_episodes():
    rec = _Recorder(delay_s=0.002)
    batcher = MicroBatcher(rec, max_batch=64, max_wait_ms=20)

    async def main():
        return await asyncio.gather(*(batcher.search(f"q{i}", 1 + i % 3) for i in range(200)))

    results = asyncio.run(main())
    batcher.close()
    assert [r[0]["document"]["id"] for r in results] == [f"q{i}" for i in range(200)]
    assert [len(r) for r in results] == [1 + i % 3 for i in range(200)]  # each caller gets its own topk
    assert len(rec.batches) <= 8 and max(len(b) for b in rec.batches) <= 64
    assert batcher.queries == 200 and batcher.calls == len(rec.batches)


def test_micro_batcher_one_query_per_call_and_errors_reach_every_caller():
    rec = _Recorder()
    one = MicroBatcher(rec, max_batch=1)

    async def main(b, n):
        return await asyncio.gather(*(b.search(f"q{i}", 2) for i in range(n)), return_exceptions=True)

    asyncio.run(main(one, 10))
    assert [len(b) for b in rec.batches] == [1] * 10
    failing = MicroBatcher(_Recorder(fail=True), max_batch=8, max_wait_ms=5)
    errors = asyncio.run(main(failing, 5))
    assert all(isinstance(e, RuntimeError) and "exploded" in str(e) for e in errors)
    for b in (one, failing):
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        one.submit("q", 1)


def test_encoder_matches_sentence_transformers_reference():
    """all-MiniLM-L6-v2 similarities published in the sentence-transformers docs (sbert.net usage page)."""
    from envs.search.encoder import TextEncoder, default_encoder_dir

    enc = TextEncoder(default_encoder_dir())
    assert enc.pooling == "mean" and enc.query_prefix == ""
    v = enc.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    np.testing.assert_allclose([sims[0, 1], sims[0, 2], sims[1, 2]], [0.6660, 0.1046, 0.1411], atol=2e-3)
    # A batch and a single text give the same vector (padding does not leak into the pooling).
    np.testing.assert_allclose(enc.encode(["He drove to the stadium."])[0], v[2], atol=1e-5)


def test_dense_retrieval_finds_the_source_passage(tmp_path):
    """Dense top-3 contains the passage each held-out question was written from, for >= 90% of them."""
    from envs.search.encoder import default_encoder_dir

    w = build_world(120, seed=1, test_fraction=0.6)
    out = build_index(w.corpus, str(tmp_path / "dense"), bm25=False, dense=True, encoder_dir=default_encoder_dir())
    retriever = load_retriever("dense", index_dir=out)
    assert isinstance(retriever, DenseRetriever)
    results = retriever.batch_search([t["question"] for t in w.test_tasks], 3)
    hits = [t["passage_ids"][0] in [h["document"]["id"] for h in r] for t, r in zip(w.test_tasks, results, strict=True)]
    assert len(hits) >= 120
    assert np.mean(hits) >= 0.9, np.mean(hits)


def test_cached_world_is_built_once(tmp_path):
    a = cached_world(300, seed=2, cache=str(tmp_path))
    stamp = (tmp_path / "search_r1").stat().st_mtime_ns
    b = cached_world(300, seed=2, cache=str(tmp_path))
    assert a == b and (tmp_path / "search_r1").stat().st_mtime_ns == stamp
    assert a.test_tasks == build_world(300, seed=2).test_tasks
    assert isinstance(load_retriever("bm25", index_dir=a.index_dir), BM25Retriever)


@pytest.fixture(scope="module")
def retrieval_server(index_dir):
    """`python -m envs.search.retrieval_server` as a real process on loopback."""
    import subprocess
    import sys

    import portpicker

    port = portpicker.pick_unused_port()
    proc = subprocess.Popen([sys.executable, "-m", "envs.search.retrieval_server", "--index", index_dir,
                             "--port", str(port), "--topk", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/retrieve"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                requests.get(url.replace("/retrieve", "/health"), timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "retrieval server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_retrieve_endpoint_speaks_search_r1(world, index_dir, retrieval_server):
    url = retrieval_server
    local = load_retriever("bm25", index_dir=index_dir)
    queries = [world.test_tasks[0]["question"], world.test_tasks[2]["question"]]
    body = requests.post(url, json={"queries": queries, "topk": 2, "return_scores": True}, timeout=10).json()
    assert set(body) == {"result"} and len(body["result"]) == 2
    for hits, expected in zip(body["result"], local.batch_search(queries, 2), strict=True):
        assert len(hits) == 2
        for hit in hits:
            assert set(hit) == {"document", "score"} and set(hit["document"]) == {"id", "contents"}
            assert isinstance(hit["score"], float) and isinstance(hit["document"]["id"], str)
        assert hits == expected
    # Without scores: Search-R1 returns the documents themselves; topk defaults to the server's.
    body = requests.post(url, json={"queries": queries[:1]}, timeout=10).json()
    assert len(body["result"][0]) == 3 and set(body["result"][0][0]) == {"id", "contents"}
    assert requests.post(url, json={"topk": 3}, timeout=10).status_code == 422
    # Our env's HTTP retriever reads the same server.
    assert HttpRetriever(url).batch_search(queries, 2) == local.batch_search(queries, 2)


def test_env_over_http_retriever(world, retrieval_server):
    import agentic.env
    from envs.search.policies import SearchThenAnswer

    async def episode(task):
        env = agentic.env.make("search_r1", retriever="http", retrieval_url=retrieval_server)
        policy, text = SearchThenAnswer(task), (await env.reset(task)).text
        while not (step := await env.step(policy.act(text))).done:
            text = step.observation
        return step.reward

    async def main():
        return await asyncio.gather(*(episode(t) for t in world.test_tasks[:40]))

    assert np.mean(asyncio.run(main())) >= 0.9


def test_unreachable_server_is_a_clear_error():
    import portpicker

    url = f"http://127.0.0.1:{portpicker.pick_unused_port()}/retrieve"
    with pytest.raises(ConnectionError, match="unreachable"):
        HttpRetriever(url, timeout_s=2).batch_search(["q"], 1)


def test_bm25_scores_equal_bm25s(world, index_dir):
    """Our numpy scorer returns bm25s's own ranking and scores (ties aside)."""
    import bm25s

    retriever = load_retriever("bm25", index_dir=index_dir)
    queries = [t["question"] for t in world.test_tasks[:100]]
    ours = retriever.batch_search(queries, 5)
    tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    _, scores = retriever.model.retrieve(tokens, k=5, show_progress=False, backend_selection="numpy")
    for hits, ref in zip(ours, scores, strict=True):
        # bm25s pads with score-0 documents that match no query word; those are not hits here
        np.testing.assert_allclose([h["score"] for h in hits], ref[ref > 0], rtol=1e-5)
