"""Dense retrieval at scale on a synthetic corpus: build and serve time, peak RSS, recall@3, per index type.

  python bench/retrieval_scale.py --passages 1000000 --dim 768 --out /tmp/rscale \\
      [--types "Flat;SQfp16;IVF1024,PQ64np;HNSW32,SQfp16"]

Runs the real code paths (`build_index --scale` pieces: `MmapCorpus`, `encode_shards`,
`build_faiss`; serving: `DenseRetriever` over the memory-mapped corpus and index) with
synthetic embeddings (`dense_index.synthetic_embed`: 4096 clustered topics, unit norm), because
encoding millions of passages with e5 is not possible on a CPU box; index build and search cost
depend on the vectors' count and dimension, not on where they came from. Queries are held-out
perturbations of sampled passages' vectors (a question resembles its passage): recall@3 is the
overlap of an index's top-3 with Flat's (exact) top-3.

Each stage runs in its own subprocess so its peak RSS (ru_maxrss) is its own. The serve stage
also reports RssAnon (private memory: what Python and faiss allocated) and RssFile (pages of the
mapped corpus and index, shared with the page cache), and tracemalloc's peak of Python objects:
run at two corpus sizes, Python-held memory grows with the offsets array only (8 B a passage).
Prints one JSON line per stage and a markdown table.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

QUERIES = 200
QUERY_NOISE = 0.3  # the perturbation's norm, relative to the unit passage vector


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_corpus(a):
    t = time.time()
    path = os.path.join(a.out, "corpus.jsonl")
    rng = np.random.default_rng(0)
    words = np.asarray([f"w{i}" for i in range(5000)])
    with open(path, "w") as f:
        for lo in range(0, a.passages, 100_000):
            hi = min(a.passages, lo + 100_000)
            body = words[rng.integers(0, len(words), size=(hi - lo, 12))]
            f.writelines(json.dumps({"id": str(i), "contents": f'"Title {i}"\n' + " ".join(b)}) + "\n"
                         for i, b in zip(range(lo, hi), body, strict=True))
    write_s = time.time() - t
    from envs.search.corpus_store import MmapCorpus

    t = time.time()
    corpus = MmapCorpus(path)
    return {"stage": "corpus", "passages": len(corpus), "write_s": round(write_s, 1),
            "offsets_s": round(time.time() - t, 1), "corpus_mib": round(os.path.getsize(path) / 2**20, 1),
            "peak_rss_mib": round(_peak_mib())}


def stage_encode(a):
    from envs.search import dense_index
    from envs.search.corpus_store import MmapCorpus

    corpus = MmapCorpus(os.path.join(a.out, "corpus.jsonl"))
    t = time.time()
    dense_index.encode_shards(corpus, a.out, dense_index.synthetic_embed(a.dim), dim=a.dim,
                              shard_size=a.shard_size, batch_size=4096, log=lambda s: None)
    emb = sum(os.path.getsize(dense_index.shard_path(a.out, s))
              for s in range(dense_index.num_shards(len(corpus), a.shard_size)))
    return {"stage": "encode", "s": round(time.time() - t, 1), "emb_mib": round(emb / 2**20, 1),
            "peak_rss_mib": round(_peak_mib())}


def _queries(a):
    from envs.search import dense_index

    ids = np.random.default_rng(1).choice(a.passages, size=QUERIES, replace=False)
    shards = {}
    vecs = []
    for i in ids:
        s = int(i) // a.shard_size
        if s not in shards:
            shards[s] = np.load(dense_index.shard_path(a.out, s), mmap_mode="r")
        vecs.append(np.asarray(shards[s][int(i) % a.shard_size], np.float32))
    noise = np.random.default_rng(2).standard_normal((QUERIES, a.dim)).astype(np.float32)
    q = np.stack(vecs) + QUERY_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def stage_build(a, faiss_type):
    from envs.search import dense_index

    out = os.path.join(a.out, "idx_" + faiss_type.replace(",", "_"))
    os.makedirs(os.path.join(out, "emb"), exist_ok=True)
    for name in os.listdir(os.path.join(a.out, "emb")):  # share the encoded shards
        dst = os.path.join(out, "emb", name)
        if not os.path.exists(dst):
            os.symlink(os.path.join(a.out, "emb", name), dst)
    t = time.time()
    path = dense_index.build_faiss(out, faiss_type, num_docs=a.passages, shard_size=a.shard_size,
                                   train_size=a.train_size, log=lambda s: None)
    build_s = time.time() - t
    dense_index.write_meta(out, num_docs=a.passages, corpus_path=os.path.join(a.out, "corpus.jsonl"),
                           dense={"encoder": None, "faiss_type": faiss_type, "dim": a.dim,
                                  "index": os.path.join("dense", "index.faiss")})
    return {"stage": "build", "type": faiss_type, "s": round(build_s, 1),
            "index_mib": round(os.path.getsize(path) / 2**20, 1), "peak_rss_mib": round(_peak_mib())}


def stage_search(a, faiss_type):
    """Recall@3 against Flat and search time, the index memory-mapped."""
    from envs.search import dense_index

    q = _queries(a)
    got = {}
    times = {}
    for t_name in dict.fromkeys(["Flat", faiss_type]):
        index = dense_index.open_index(os.path.join(a.out, "idx_" + t_name.replace(",", "_"), "dense", "index.faiss"))
        index.search(q[:8], 3)  # warm
        t = time.time()
        _, got[t_name] = index.search(q, 3)
        times[t_name] = time.time() - t
        del index
    recall = float(np.mean([len(set(x) & set(y)) / 3 for x, y in zip(got[faiss_type], got["Flat"], strict=True)]))
    top1 = float(np.mean(got[faiss_type][:, 0] == got["Flat"][:, 0]))
    return {"stage": "search", "type": faiss_type, "recall_at_3_vs_flat": round(recall, 4),
            "top1_agrees_with_flat": round(top1, 4),
            "ms_per_query": round(1000 * times[faiss_type] / QUERIES, 3), "peak_rss_mib": round(_peak_mib())}


class _VectorEncoder:
    """Stands in for the e5 encoder: a query string "v:<k>" is the k-th held-out query vector."""

    def __init__(self, q):
        self.q = q
        self.dim = q.shape[1]

    def encode(self, texts, is_query=True):
        return self.q[[int(t[2:]) for t in texts]]


def stage_serve(a, faiss_type):
    """The server's retriever over the memory-mapped corpus and index: memory held by Python
    objects and private memory vs mapped pages (run at two corpus sizes to see the growth)."""
    import tracemalloc

    from envs.search import dense_index
    from envs.search.corpus_store import MmapCorpus
    from envs.search.retrieval import DenseRetriever

    q = _queries(a)
    tracemalloc.start()
    before = _status()
    t = time.time()
    corpus = MmapCorpus(os.path.join(a.out, "corpus.jsonl"))
    index = dense_index.open_index(os.path.join(a.out, "idx_" + faiss_type.replace(",", "_"), "dense", "index.faiss"))
    retriever = DenseRetriever(corpus, index, _VectorEncoder(q))
    load_s = time.time() - t
    t = time.time()
    for b in range(0, QUERIES, 50):
        hits = retriever.batch_search([f"v:{k}" for k in range(b, b + 50)], 3)
        assert all(h and h[0]["document"]["contents"] for h in hits)  # passages read back from the mapped corpus
    search_s = time.time() - t
    after = _status()
    _, py_peak = tracemalloc.get_traced_memory()
    return {"stage": "serve", "type": faiss_type, "corpus_passages": len(corpus), "load_s": round(load_s, 2),
            "ms_per_query": round(1000 * search_s / QUERIES, 3),
            "python_objects_peak_mib": round(py_peak / 2**20, 2),
            "rss_anon_growth_mib": round(after["RssAnon"] - before["RssAnon"], 1),
            "rss_file_mib": round(after["RssFile"], 1), "peak_rss_mib": round(_peak_mib())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--shard-size", type=int, default=250_000)
    p.add_argument("--train-size", type=int, default=40_000)
    p.add_argument("--types", default="Flat;SQfp16;IVF1024,PQ64np;HNSW32,SQfp16", help="';'-separated faiss types")
    p.add_argument("--out", required=True)
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arg", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.stage:  # a child: one stage, one JSON line
        import faiss

        faiss.omp_set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        fn = {"corpus": stage_corpus, "encode": stage_encode, "build": stage_build, "search": stage_search,
              "serve": stage_serve}[a.stage]
        args = a.arg.split("|") if a.arg else []
        print(json.dumps(fn(a, *args)), flush=True)
        return
    types = [t for t in a.types.split(";") if t]
    if "Flat" not in types:
        types.insert(0, "Flat")
    plan = [("corpus", None), ("encode", None)] + [("build", t) for t in types] + \
        [("search", t) for t in types if t != "Flat"] + [("serve", t) for t in dict.fromkeys(["Flat", types[-1]])]
    results = []
    base = [sys.executable, os.path.abspath(__file__), "--passages", str(a.passages), "--dim", str(a.dim),
            "--shard-size", str(a.shard_size), "--train-size", str(a.train_size), "--out", a.out]
    for stage, arg in plan:
        cmd = base + ["--stage", stage] + (["--arg", arg] if arg else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{stage} {arg}: failed\n{r.stderr[-3000:]}")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n| index | build s | index MiB | bytes/passage | peak RSS MiB (build) | recall@3 vs Flat | ms/query |")
    print("|---|---|---|---|---|---|---|")
    search = {r["type"]: r for r in results if r["stage"] == "search"}
    for r in (r for r in results if r["stage"] == "build"):
        s = search.get(r["type"], {"recall_at_3_vs_flat": 1.0, "ms_per_query": "-"})
        print(f"| {r['type']} | {r['s']} | {r['index_mib']} | {r['index_mib'] * 2**20 / a.passages:.0f} | "
              f"{r['peak_rss_mib']} | {s['recall_at_3_vs_flat']} | {s['ms_per_query']} |")


if __name__ == "__main__":
    main()
