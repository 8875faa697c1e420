"""Dense indexes at wiki-18 scale: streaming, resumable, sharded encoding, then a faiss index.

Two stages, each bounded in memory whatever the corpus size:

1. `encode_shards`: the corpus (a JSONL file, read in place through `MmapCorpus`) is cut into
   shards of `shard_size` passages; each shard is encoded in batches and written as
   `emb/shard_NNNNN.npy` (float16 or bfloat16-in-uint16 storage: 1.5 KB a 768-d passage, not 3 KB),
   atomically (a temporary file renamed when complete). A rerun skips finished shards (resume after
   a crash or preemption); `worker` / `num_workers` split the shards across hosts or devices
   (worker w encodes shards w, w + n, ...) writing into one shared directory.
2. `build_faiss`: a faiss index of any `index_factory` string with inner-product metric, as
   Search-R1's `index_builder.py` builds it (`faiss.index_factory(dim, faiss_type,
   METRIC_INNER_PRODUCT)`): "Flat" (exact, Search-R1's `e5_Flat.index`), "SQfp16" (exact search
   over float16 codes, half of Flat's memory), "IVF4096,PQ64" (inverted file + product codes,
   ~1/40 of Flat), "HNSW32" / "HNSW32,SQfp16" (graph; Flat's memory plus the graph). Training
   (IVF/PQ) uses a seeded sample of at most `train_size` vectors; vectors are added shard by
   shard, converted to float32 one `add_batch` at a time.

`open_index` reads an index memory-mapped (`IO_FLAG_MMAP_IFC`): the server's resident memory is
the pages searches touch, shared with the page cache, not a private copy.

Index directory written (`build_index.py --dense-scale`; `retrieval.read_meta` reads it):

    meta.json             {"format", "num_docs", "corpus": path, "dense": {encoder settings,
                          "faiss_type", "index": "dense/index.faiss", "dim"}}
    emb/shard_NNNNN.npy   passage embeddings (deletable once the index is built)
    dense/index.faiss
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from envs.search.corpus_store import MmapCorpus

Embed = Callable[[Sequence[dict]], np.ndarray]  # rows {"id", "contents"} -> float32 [n, dim], unit norm
STORAGE = ("float16", "bfloat16")


def shard_path(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, "emb", f"shard_{shard:05d}.npy")


def num_shards(num_docs: int, shard_size: int) -> int:
    return -(-num_docs // shard_size)


def _to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return x.astype(np.float16)
    # bfloat16: the high 16 bits of float32, rounded to nearest even
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 copy of stored embeddings."""
    if dtype == "float16":
        return np.asarray(x, np.float32)
    return (np.asarray(x, np.uint32) << 16).view(np.float32)


def encode_shards(corpus: MmapCorpus, out_dir: str, embed: Embed, *, dim: int, shard_size: int = 1_000_000,
                  batch_size: int = 512, dtype: str = "float16", worker: int = 0, num_workers: int = 1,
                  log: Callable[[str], None] = print) -> list[int]:
    """Encodes this worker's missing shards; returns the shards it wrote (done ones are skipped)."""
    if dtype not in STORAGE:
        raise ValueError(f"embedding storage must be one of {STORAGE}, got {dtype!r}")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
    os.makedirs(os.path.join(out_dir, "emb"), exist_ok=True)
    n = len(corpus)
    written = []
    for s in range(worker, num_shards(n, shard_size), num_workers):
        path = shard_path(out_dir, s)
        if os.path.exists(path):
            continue
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        start = time.time()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".shard_{s:05d}.", suffix=".npy")
        os.close(fd)
        store_dtype = np.float16 if dtype == "float16" else np.uint16
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=store_dtype, shape=(hi - lo, dim))
        try:
            for b in range(lo, hi, batch_size):
                rows = [corpus[i] for i in range(b, min(hi, b + batch_size))]
                v = np.asarray(embed(rows), np.float32)
                if v.shape != (len(rows), dim):
                    raise ValueError(f"embed returned shape {v.shape} for {len(rows)} passages of dim {dim}")
                out[b - lo:b - lo + len(rows)] = _to_storage(v, dtype)
            out.flush()
            out = None  # closes the mapping before the rename
            os.replace(tmp, path)
        except BaseException:
            out = None
            os.unlink(tmp)
            raise
        written.append(s)
        log(f"shard {s}: passages {lo}-{hi} in {time.time() - start:.1f} s")
    return written


def build_faiss(out_dir: str, faiss_type: str, *, num_docs: int, shard_size: int, dtype: str = "float16",
                train_size: int = 200_000, add_batch: int = 65_536, seed: int = 0, hnsw_ef_search: int = 128,
                ivf_nprobe: int = 64, log: Callable[[str], None] = print) -> str:
    """Builds `out_dir/dense/index.faiss` from every shard (all must be encoded); returns its path."""
    import faiss

    shards = [shard_path(out_dir, s) for s in range(num_shards(num_docs, shard_size))]
    missing = [p for p in shards if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} embedding shards not encoded yet, e.g. "
                                f"{missing[0]}: run encode_shards on every worker first")
    # shapes from the headers; each shard is mapped only while it is read (its pages then leave RSS)
    shapes = [np.load(p, mmap_mode="r").shape for p in shards]
    if sum(n for n, _ in shapes) != num_docs:
        raise ValueError(f"shards hold {sum(n for n, _ in shapes)} vectors, the corpus {num_docs} passages")
    dim = shapes[0][1]
    index = faiss.index_factory(dim, faiss_type, faiss.METRIC_INNER_PRODUCT)
    start = time.time()
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(num_docs, size=min(train_size, num_docs), replace=False))
        bounds = np.cumsum([0] + [n for n, _ in shapes])
        sample = np.concatenate([from_storage(np.load(p, mmap_mode="r")[take[(take >= lo) & (take < hi)] - lo], dtype)
                                 for p, lo, hi in zip(shards, bounds[:-1], bounds[1:], strict=True)])
        index.train(sample)
        del sample
        log(f"trained {faiss_type} on {len(take)} vectors in {time.time() - start:.1f} s")
    for p in shards:
        a = np.load(p, mmap_mode="r")
        for b in range(0, len(a), add_batch):
            index.add(from_storage(a[b:b + add_batch], dtype))
        del a
    set_search_params(index, hnsw_ef_search=hnsw_ef_search, ivf_nprobe=ivf_nprobe)
    path = os.path.join(out_dir, "dense", "index.faiss")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, path)
    log(f"{faiss_type}: {index.ntotal} vectors in {time.time() - start:.1f} s, {os.path.getsize(path) / 2**20:.0f} MiB")
    return path


def set_search_params(index, *, hnsw_ef_search: int = 128, ivf_nprobe: int = 64) -> None:
    """Search-time knobs stored with the index: HNSW's efSearch, IVF's nprobe (no-ops for Flat)."""
    import faiss

    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = hnsw_ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = ivf_nprobe


def open_index(path: str, *, mmap: bool = True):
    """Reads a faiss index, memory-mapped (read-only) unless `mmap` is False."""
    import faiss

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no faiss index file {path!r}")
    return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mmap else faiss.read_index(path)


def write_meta(out_dir: str, *, num_docs: int, corpus_path: str, dense: dict) -> None:
    from envs.search.retrieval import INDEX_FORMAT

    meta = {"format": INDEX_FORMAT, "num_docs": num_docs, "bm25": False,
            "corpus": os.path.abspath(corpus_path), "dense": dense}
    tmp = os.path.join(out_dir, "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "meta.json"))


def synthetic_embed(dim: int, *, topics: int = 4096, noise: float = 0.5, seed: int = 0) -> Embed:
    """Embeddings with cluster structure, a function of each passage's id only (for scale tests of
    build and serving, where encoding millions of passages with a real encoder is not possible):
    passage i is its topic's centre (topic = hash of i) plus Gaussian noise, unit norm."""
    centres = np.random.default_rng(seed).standard_normal((topics, dim)).astype(np.float32)

    def embed(rows: Sequence[dict]) -> np.ndarray:
        ids = np.asarray([int(r["id"]) for r in rows], np.int64)
        return synthetic_vectors(ids, centres, noise=noise, seed=seed)

    return embed


def synthetic_vectors(ids: np.ndarray, centres: np.ndarray, *, noise: float, seed: int, salt: int = 0) -> np.ndarray:
    out = np.empty((len(ids), centres.shape[1]), np.float32)
    for k, i in enumerate(ids):
        rng = np.random.default_rng([seed, salt, int(i)])
        out[k] = centres[rng.integers(len(centres))] + noise * rng.standard_normal(centres.shape[1], np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)
