"""Retrieval built for wiki-18's scale, on small corpora: the memory-mapped corpus, the streaming
sharded resumable index builder, Search-R1's own prebuilt files served as they are, e5 prefixes
from the config (an HF-cache snapshot directory named by a hash), the server's token and caps.
The >= 1M-passage measurement is bench/retrieval_scale.py (BUILD.md), not a CI test."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from envs.search import dense_index
from envs.search.batching import MicroBatcher
from envs.search.corpus_store import MmapCorpus
from envs.search.encoder import TextEncoder, default_encoder_dir, family_settings
from envs.search.retrieval import DenseRetriever, HttpRetriever


def _write_corpus(path, rows, blank_lines=False):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n" + ("\n" if blank_lines else ""))


def test_mmap_corpus_reads_rows_in_place(tmp_path):
    rows = [{"id": str(i), "contents": f'"Title {i}"\nText of passage {i} é'} for i in range(50)]
    path = tmp_path / "wiki-18.jsonl"
    _write_corpus(path, rows, blank_lines=True)
    with open(path, "a") as f:  # a last line without "\n", in title/text form
        f.write(json.dumps({"id": "50", "title": "Last", "text": "no newline"}))
    corpus = MmapCorpus(str(path))
    assert len(corpus) == 51 and corpus[7] == rows[7] and corpus[-2] == rows[49]
    assert corpus[50] == {"id": "50", "contents": '"Last"\nno newline'}
    assert list(corpus)[:50] == rows
    with pytest.raises(IndexError, match="out of range"):
        corpus[51]
    assert os.path.exists(str(path) + ".offsets.npy")
    _write_corpus(path, rows[:3])  # the corpus changed: the cached offsets are rebuilt
    assert len(MmapCorpus(str(path))) == 3


def test_streaming_builder_shards_resumes_and_builds_each_index_type(tmp_path):
    n, dim = 3000, 32
    corpus_path = tmp_path / "corpus.jsonl"
    _write_corpus(corpus_path, [{"id": str(i), "contents": f'"T{i}"\nbody {i}'} for i in range(n)])
    corpus = MmapCorpus(str(corpus_path))
    embed = dense_index.synthetic_embed(dim, topics=64, seed=3)
    out = str(tmp_path / "idx")
    # two workers share the shards; worker 1 dies before its first shard finishes
    calls = []

    def failing(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("preempted")
        return embed(rows)

    with pytest.raises(RuntimeError, match="preempted"):
        dense_index.encode_shards(corpus, out, failing, dim=dim, shard_size=1000, batch_size=400, worker=1,
                                  num_workers=2, log=lambda s: None)
    assert os.listdir(os.path.join(out, "emb")) == []  # no partial shard left behind
    assert dense_index.encode_shards(corpus, out, embed, dim=dim, shard_size=1000, batch_size=400, worker=0,
                                     num_workers=2, log=lambda s: None) == [0, 2]
    with pytest.raises(FileNotFoundError, match="1 of 3 embedding shards"):
        dense_index.build_faiss(out, "Flat", num_docs=n, shard_size=1000, log=lambda s: None)
    assert dense_index.encode_shards(corpus, out, embed, dim=dim, shard_size=1000, batch_size=400, worker=1,
                                     num_workers=2, log=lambda s: None) == [1]
    assert dense_index.encode_shards(corpus, out, embed, dim=dim, shard_size=1000, worker=0, num_workers=1,
                                     log=lambda s: None) == []  # resumed: nothing left to do
    stored = np.concatenate([np.load(dense_index.shard_path(out, s)) for s in range(3)])
    assert stored.dtype == np.float16 and stored.shape == (n, dim)
    np.testing.assert_allclose(stored[:5], embed([corpus[i] for i in range(5)]), atol=1e-3)

    queries = dense_index.synthetic_vectors(np.arange(100), np.random.default_rng(3).standard_normal((64, dim)),
                                            noise=0.5, seed=3, salt=1).astype(np.float32)
    exact = np.argsort(-(queries @ stored.astype(np.float32).T), axis=1)[:, :3]
    recalls = {}
    import faiss

    faiss.omp_set_num_threads(1)  # a shared 2-core box: OpenMP spinning threads only contend
    for faiss_type in ("Flat", "SQfp16", "IVF16,PQ16x4", "HNSW16"):
        path = dense_index.build_faiss(out, faiss_type, num_docs=n, shard_size=1000, train_size=2000,
                                       ivf_nprobe=8, log=lambda s: None)
        index = dense_index.open_index(path)
        assert index.ntotal == n
        _, got = index.search(queries, 3)
        recalls[faiss_type] = np.mean([len(set(g) & set(e)) / 3 for g, e in zip(got, exact, strict=True)])
    assert recalls["Flat"] == 1.0 and recalls["SQfp16"] >= 0.95, recalls
    assert recalls["HNSW16"] >= 0.9 and recalls["IVF16,PQ16x4"] >= 0.3, recalls

    # bfloat16 storage round-trips to within bf16's precision
    v = embed([corpus[0]])
    np.testing.assert_allclose(dense_index.from_storage(dense_index._to_storage(v, "bfloat16"), "bfloat16"), v,
                               atol=1e-2)


def _hf_cache_e5_dir(tmp_path):
    """The MiniLM checkpoint laid out as an HF-cache snapshot: a directory named by a commit hash."""
    snap = tmp_path / "hub" / "models--intfloat--e5-base-v2" / "snapshots" / "f52bf8ec8c7124536f0efb74aca902b2995e5bcd"
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        os.symlink(os.path.join(default_encoder_dir(), name), snap / name)
    return str(snap)


def test_hf_cache_encoder_directory_gets_the_configured_prefixes(tmp_path):
    snap = _hf_cache_e5_dir(tmp_path)
    e5 = TextEncoder(snap, **family_settings("e5"))
    assert (e5.query_prefix, e5.passage_prefix, e5.pooling) == ("query: ", "passage: ", "mean")
    plain = TextEncoder(snap)  # no family, no prefixes: nothing is guessed, from the path or otherwise
    assert (plain.query_prefix, plain.passage_prefix) == ("", "")
    text = "who wrote hamlet"
    np.testing.assert_allclose(e5.encode([text]), plain.encode(["query: " + text]), atol=1e-5)
    np.testing.assert_allclose(e5.encode([text], is_query=False), plain.encode(["passage: " + text]), atol=1e-5)
    assert not np.allclose(e5.encode([text]), plain.encode([text]), atol=1e-3)
    with pytest.raises(ValueError, match="unknown encoder family"):
        family_settings("e6")


def _search_r1_prebuilt(tmp_path, encoder_dir):
    """A tiny corpus and index written by Search-R1's index_builder.py conventions: wiki-18.jsonl
    rows {"id", "contents"}; e5_Flat.index = faiss.index_factory(dim, "Flat", METRIC_INNER_PRODUCT)
    over "passage: "-prefixed, mean-pooled, normalized embeddings, row i = line i."""
    import faiss

    titles = ["Hamlet", "Eiffel Tower", "Photosynthesis", "Mount Everest", "Python (language)", "Jazz"]
    texts = ["Hamlet is a tragedy written by William Shakespeare around 1600.",
             "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
             "Photosynthesis converts light energy into chemical energy in plants.",
             "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
             "Python is a programming language created by Guido van Rossum.",
             "Jazz is a music genre that originated in New Orleans."]
    rows = [{"id": str(i), "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(zip(titles, texts, strict=True))]
    corpus = tmp_path / "wiki-18.jsonl"
    _write_corpus(corpus, rows)
    enc = TextEncoder(encoder_dir, max_length=180)  # their builder adds "passage: " to each passage itself
    emb = enc.encode([f"passage: {r['contents']}" for r in rows], is_query=False).astype(np.float32)
    index = faiss.index_factory(emb.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(emb)
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    return str(tmp_path / "e5_Flat.index"), str(corpus), rows


def _start_server(args, env=None):
    import portpicker

    port = portpicker.pick_unused_port()
    proc = subprocess.Popen([sys.executable, "-m", "envs.search.retrieval_server", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            requests.get(url + "/health", timeout=1)
            return proc, url + "/retrieve"
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "retrieval server did not start"
            time.sleep(0.2)


def test_search_r1_prebuilt_index_is_served_as_it_is_with_token_and_caps(tmp_path):
    """Search-R1's e5_Flat.index + wiki-18.jsonl, no meta.json: served by our server with
    `--encoder-family e5`, found by the env's HTTP client with the token, capped per request."""
    snap = _hf_cache_e5_dir(tmp_path)
    index_path, corpus_path, rows = _search_r1_prebuilt(tmp_path, snap)
    assert sorted(os.listdir(tmp_path)) == ["e5_Flat.index", "hub", "wiki-18.jsonl"]
    token = "s3cret-token"
    proc, url = _start_server(["--faiss", index_path, "--corpus", corpus_path, "--encoder", snap,
                               "--encoder-family", "e5", "--max-queries", "8", "--max-topk", "4"],
                              env={"AGENTIC_RETRIEVAL_TOKEN": token})
    try:
        queries = ["who wrote hamlet", "when was the eiffel tower built", "highest mountain on earth"]
        assert requests.post(url, json={"queries": queries}, timeout=30).status_code == 401
        assert requests.post(url, json={"queries": queries}, headers={"Authorization": "Bearer nope"},
                             timeout=30).status_code == 401
        client = HttpRetriever(url, token=token)
        result = client.batch_search(queries, 2)
        assert [hits[0]["document"] for hits in result] == [rows[0], rows[1], rows[3]]
        # the same answer in process, through Search-R1's files
        local = DenseRetriever.from_files(index_path, corpus_path, snap, family="e5")
        assert [[h["document"]["id"] for h in r] for r in local.batch_search(queries, 2)] == \
               [[h["document"]["id"] for h in r] for r in result]
        # caps: a request over them fails alone; each query in a micro-batch keeps its own topk
        auth = {"Authorization": f"Bearer {token}"}
        r = requests.post(url, json={"queries": ["x"] * 9}, headers=auth, timeout=30)
        assert r.status_code == 422 and "at most 8 queries" in r.text
        r = requests.post(url, json={"queries": ["x"], "topk": 10**30}, headers=auth, timeout=30)
        assert r.status_code == 422
        r = requests.post(url, json={"queries": ["x"], "topk": 5}, headers=auth, timeout=30)
        assert r.status_code == 422 and "topk must be in [1, 4]" in r.text
        assert len(client.batch_search(["jazz music"], 4)[0]) == 4
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_micro_batch_keeps_each_querys_topk(tmp_path):
    snap = _hf_cache_e5_dir(tmp_path)
    index_path, corpus_path, _ = _search_r1_prebuilt(tmp_path, snap)
    batcher = MicroBatcher(DenseRetriever.from_files(index_path, corpus_path, snap, family="e5"), max_wait_ms=50)
    futs = [batcher.submit("hamlet", 1), batcher.submit("jazz", 4), batcher.submit("python", 2)]
    assert [len(f.result(timeout=30)) for f in futs] == [1, 4, 2]
    assert batcher.calls == 1
    batcher.close()


def test_server_refuses_a_public_bind_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AGENTIC_RETRIEVAL_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "envs.search.retrieval_server", "--host", "0.0.0.0",
                        "--port", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "without a token" in r.stderr


def test_scale_cli_builds_a_servable_index(tmp_path):
    """`build_index --scale` end to end with the real encoder, then loaded by the dense retriever."""
    rows = [{"id": str(i), "contents": f'"Entity {i}"\nEntity {i} was born in city number {i * 7}.'}
            for i in range(40)]
    corpus_path = tmp_path / "c.jsonl"
    _write_corpus(corpus_path, rows)
    snap = _hf_cache_e5_dir(tmp_path)
    out = tmp_path / "idx"
    from envs.search.build_index import main

    main(["--scale", "--corpus", str(corpus_path), "--out", str(out), "--encoder", snap, "--encoder-family", "e5",
          "--faiss-type", "HNSW8", "--shard-size", "16", "--batch-size", "8"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dense"]["query_prefix"] == "query: " and meta["dense"]["faiss_type"] == "HNSW8"
    assert len(os.listdir(out / "emb")) == 3
    retriever = DenseRetriever.load(str(out))
    assert isinstance(retriever.corpus, MmapCorpus)
    hits = retriever.batch_search(["Entity 12 was born in city number 84."], 3)[0]
    assert hits[0]["document"] == rows[12]
    shutil.rmtree(out / "emb")  # the shards are not needed to serve
    assert DenseRetriever.load(str(out)).batch_search(["Entity 3"], 1)[0][0]["document"]["id"] == "3"
