"""Builds on-disk retrieval indexes, and caches the default synthetic world's index.

CLI:

    # BM25 (and optionally dense) index of a wiki-18 style corpus
    python -m envs.search.build_index --corpus wiki-18.jsonl --out indexes/wiki18 [--dense [--encoder DIR]]
    # the synthetic world (corpus + train/test tasks + index)
    python -m envs.search.build_index --synthetic 20000 --seed 0 --out indexes/world [--dense]

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


def build_index(corpus: Sequence[dict], out_dir: str, *, bm25: bool = True, dense: bool = False,
                encoder_dir: str | None = None, tasks: dict[str, list] | None = None,
                extra_meta: dict[str, Any] | None = None) -> str:
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
        from envs.search.encoder import TextEncoder, default_encoder_dir

        encoder = TextEncoder(encoder_dir or default_encoder_dir())
        meta["dense"] = DenseRetriever.build(corpus, encoder).save(out_dir)
    for split, rows in (tasks or {}).items():
        write_jsonl(os.path.join(out_dir, f"{split}.jsonl"), rows)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def add_dense_index(index_dir: str, encoder_dir: str | None = None) -> None:
    """Adds a dense index to an existing index directory (in place)."""
    from envs.search.encoder import TextEncoder, default_encoder_dir
    from envs.search.retrieval import read_meta

    meta = read_meta(index_dir)
    corpus = read_jsonl(os.path.join(index_dir, "corpus.jsonl"))
    encoder = TextEncoder(encoder_dir or default_encoder_dir())
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
    args = p.parse_args(argv)
    start = time.time()
    if args.synthetic is not None:
        w = world_lib.build_world(args.synthetic, args.seed)
        corpus, tasks = w.corpus, {"train": w.train_tasks, "test": w.test_tasks}
        extra = {"world": {"num_passages": args.synthetic, "seed": args.seed, "version": world_lib.WORLD_VERSION}}
    else:
        corpus, tasks, extra = read_corpus(args.corpus), None, {"source": os.path.abspath(args.corpus)}
    build_index(corpus, args.out, bm25=not args.no_bm25, dense=args.dense, encoder_dir=args.encoder,
                tasks=tasks, extra_meta=extra)
    print(f"wrote {args.out}: {len(corpus)} passages"
          + (f", {len(tasks['train'])} train / {len(tasks['test'])} test tasks" if tasks else "")
          + f" in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
