"""Builds on-disk retrieval indexes, and caches the default synthetic world's index.

CLI:

    # BM25 (and optionally dense) index of a wiki-18 style corpus
    python -m envs.search.build_index --corpus wiki-18.jsonl --out indexes/wiki18 [--dense [--encoder DIR]]
    # the synthetic world (corpus + train/test tasks + index)
    python -m envs.search.build_index --synthetic 20000 --seed 0 --out indexes/world [--dense]
    # wiki-18 scale: streaming, resumable, sharded (envs/search/dense_index.py); rerun to resume
    python -m envs.search.build_index --scale --corpus wiki-18.jsonl --out indexes/wiki18_ivfpq \
        --encoder E5_DIR --encoder-family e5 --faiss-type IVF4096,PQ64 [--worker I --num-workers N --stage encode]

The directory layout is described in `envs.search.retrieval`. `cached_world()` builds the
synthetic world's BM25 index once under the cache directory (`$AGENTIC_CACHE_DIR`, default
`~/.cache/agentic`) and reuses it afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from envs.search import world as world_lib
from envs.search.data import read_corpus, read_jsonl, write_jsonl
from envs.search.retrieval import INDEX_FORMAT, BM25Retriever, DenseRetriever


def _encoder(encoder_dir: str | None, encoder_family: str | None):
    from envs.search.encoder import TextEncoder, default_encoder_dir, family_settings

    return TextEncoder(encoder_dir or default_encoder_dir(), **family_settings(encoder_family))


def build_index(corpus: Sequence[dict], out_dir: str, *, bm25: bool = True, dense: bool = False,
                encoder_dir: str | None = None, encoder_family: str | None = None,
                tasks: dict[str, list] | None = None, extra_meta: dict[str, Any] | None = None) -> str:
    """Writes `corpus` and its index(es) to `out_dir` (created; must not hold another index)."""
    if not bm25 and not dense:
        raise ValueError("build at least one of bm25 / dense")
    corpus = list(corpus)
    if not corpus:
        raise ValueError("corpus is empty")
    os.makedirs(out_dir, exist_ok=True)
    write_jsonl(os.path.join(out_dir, "corpus.jsonl"), corpus)
    meta: dict[str, Any] = {"format": INDEX_FORMAT, "num_docs": len(corpus), "bm25": False, "dense": None,
                            **(extra_meta or {})}
    if bm25:
        BM25Retriever.build(corpus).save(out_dir)
        meta["bm25"] = True
    if dense:
        meta["dense"] = DenseRetriever.build(corpus, _encoder(encoder_dir, encoder_family)).save(out_dir)
    for split, rows in (tasks or {}).items():
        write_jsonl(os.path.join(out_dir, f"{split}.jsonl"), rows)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def add_dense_index(index_dir: str, encoder_dir: str | None = None, encoder_family: str | None = None) -> None:
    """Adds a dense index to an existing index directory (in place)."""
    from envs.search.retrieval import read_meta

    meta = read_meta(index_dir)
    corpus = read_jsonl(os.path.join(index_dir, "corpus.jsonl"))
    encoder = _encoder(encoder_dir, encoder_family)
    meta["dense"] = DenseRetriever.build(corpus, encoder).save(index_dir)
    tmp = os.path.join(index_dir, "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(index_dir, "meta.json"))


def cache_dir(override: str | None = None) -> str:
    return override or os.environ.get("AGENTIC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                              "agentic")


@dataclasses.dataclass(frozen=True)
class CachedWorld:
    """A synthetic world on disk. `index_dir` is a BM25 index directory holding the corpus."""

    index_dir: str
    train_tasks: list[dict[str, Any]]
    test_tasks: list[dict[str, Any]]


def cached_world_dir(num_passages: int = 20_000, seed: int = 0, cache: str | None = None) -> str:
    """Path of the synthetic world's index, building it on first use (atomic, safe across processes)."""
    path = os.path.join(cache_dir(cache), "search_r1",
                        f"world-v{world_lib.WORLD_VERSION}-n{num_passages}-s{seed}")
    if os.path.exists(os.path.join(path, "meta.json")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(path))
    try:
        w = world_lib.build_world(num_passages, seed)
        build_index(w.corpus, tmp, tasks={"train": w.train_tasks, "test": w.test_tasks},
                    extra_meta={"world": {"num_passages": num_passages, "seed": seed,
                                          "version": world_lib.WORLD_VERSION}})
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first; theirs is identical
            if not os.path.exists(os.path.join(path, "meta.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def cached_world(num_passages: int = 20_000, seed: int = 0, cache: str | None = None) -> CachedWorld:
    """The default synthetic world: index directory plus its train/test tasks."""
    path = cached_world_dir(num_passages, seed, cache)
    return CachedWorld(index_dir=path, train_tasks=read_jsonl(os.path.join(path, "train.jsonl")),
                       test_tasks=read_jsonl(os.path.join(path, "test.jsonl")))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m envs.search.build_index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="wiki-18 style corpus (.jsonl or .parquet)")
    src.add_argument("--synthetic", type=int, metavar="NUM_PASSAGES", help="generate the synthetic world")
    p.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--dense", action="store_true", help="also build a dense (faiss) index")
    p.add_argument("--no-bm25", action="store_true", help="skip the BM25 index")
    p.add_argument("--encoder", default=None, help="HF BERT/e5 directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--encoder-family", default=None, choices=["e5", "bge", "contriever", "plain"],
                   help="prefixes and pooling of the encoder (e5: 'query: ' / 'passage: ', mean); never "
                        "guessed from the directory name")
    p.add_argument("--max-length", type=int, default=180, help="passage tokens (Search-R1's index_builder: 180)")
    s = p.add_argument_group("wiki-18 scale (--scale): streaming, resumable, sharded dense index")
    s.add_argument("--scale", action="store_true", help="read --corpus in place (JSONL) and build a dense "
                   "index shard by shard; rerun to resume")
    s.add_argument("--faiss-type", default="Flat", help="faiss index_factory string: Flat, SQfp16, "
                   "IVF4096,PQ64, HNSW32, HNSW32,SQfp16 ... (inner product)")
    s.add_argument("--shard-size", type=int, default=1_000_000)
    s.add_argument("--batch-size", type=int, default=512)
    s.add_argument("--storage", default="float16", choices=["float16", "bfloat16"], help="embedding shards' dtype")
    s.add_argument("--worker", type=int, default=0, help="this worker's id (shards worker, worker+N, ...)")
    s.add_argument("--num-workers", type=int, default=1)
    s.add_argument("--stage", default="all", choices=["encode", "index", "all"],
                   help="encode: this worker's shards only; index: build from all shards")
    s.add_argument("--train-size", type=int, default=200_000, help="vectors IVF/PQ trains on")
    s.add_argument("--synthetic-embeddings", type=int, default=0, metavar="DIM",
                   help="no encoder: clustered synthetic embeddings of this dimension (scale tests only)")
    args = p.parse_args(argv)
    start = time.time()
    if args.scale:
        _main_scale(args)
        return
    if args.synthetic is not None:
        w = world_lib.build_world(args.synthetic, args.seed)
        corpus, tasks = w.corpus, {"train": w.train_tasks, "test": w.test_tasks}
        extra = {"world": {"num_passages": args.synthetic, "seed": args.seed, "version": world_lib.WORLD_VERSION}}
    else:
        corpus, tasks, extra = read_corpus(args.corpus), None, {"source": os.path.abspath(args.corpus)}
    build_index(corpus, args.out, bm25=not args.no_bm25, dense=args.dense, encoder_dir=args.encoder,
                encoder_family=args.encoder_family, tasks=tasks, extra_meta=extra)
    print(f"wrote {args.out}: {len(corpus)} passages"
          + (f", {len(tasks['train'])} train / {len(tasks['test'])} test tasks" if tasks else "")
          + f" in {time.time() - start:.1f} s")


def _main_scale(args) -> None:
    from envs.search import dense_index
    from envs.search.corpus_store import MmapCorpus

    if not args.corpus:
        raise SystemExit("--scale needs --corpus (a JSONL corpus, read in place)")
    corpus = MmapCorpus(args.corpus)
    os.makedirs(args.out, exist_ok=True)
    if args.synthetic_embeddings:
        dim, embed = args.synthetic_embeddings, dense_index.synthetic_embed(args.synthetic_embeddings)
        settings = {"encoder": None, "pooling": "mean", "max_length": args.max_length, "query_prefix": "",
                    "passage_prefix": "", "synthetic": True}
    else:
        from envs.search.encoder import TextEncoder, default_encoder_dir, family_settings

        encoder = TextEncoder(args.encoder or default_encoder_dir(), max_length=args.max_length,
                              batch_size=args.batch_size, **family_settings(args.encoder_family))
        dim = encoder.dim

        def embed(rows):
            return encoder.encode([r["contents"] for r in rows], is_query=False)

        settings = {"encoder": os.path.abspath(encoder.model_dir), "pooling": encoder.pooling,
                    "max_length": encoder.max_length, "query_prefix": encoder.query_prefix,
                    "passage_prefix": encoder.passage_prefix}
    if args.stage in ("encode", "all"):
        done = dense_index.encode_shards(corpus, args.out, embed, dim=dim, shard_size=args.shard_size,
                                         batch_size=args.batch_size, dtype=args.storage, worker=args.worker,
                                         num_workers=args.num_workers)
        print(f"worker {args.worker}/{args.num_workers}: encoded shards {done}", flush=True)
    if args.stage in ("index", "all"):
        dense_index.build_faiss(args.out, args.faiss_type, num_docs=len(corpus), shard_size=args.shard_size,
                                dtype=args.storage, train_size=args.train_size)
        dense_index.write_meta(args.out, num_docs=len(corpus), corpus_path=args.corpus,
                               dense={**settings, "dim": dim, "faiss_type": args.faiss_type,
                                      "index": os.path.join("dense", "index.faiss")})
        print(f"wrote {args.out}: {len(corpus)} passages, {args.faiss_type}", flush=True)


if __name__ == "__main__":
    main()
