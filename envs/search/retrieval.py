"""Retrievers: BM25 (bm25s), dense (faiss + Flax BERT encoder), and any Search-R1 /retrieve server.

All three answer `batch_search(queries, topk) -> [[{"document": {"id", "contents"}, "score"}]]`,
the hit shape of Search-R1's retrieval server, best hit first.

On-disk index directory (written by `envs.search.build_index`):

    corpus.jsonl        wiki-18 rows {"id", "contents": "\\"Title\\"\\ntext"}, row i = document i
    meta.json           {"format": 1, "num_docs": N, "bm25": bool, "dense": {...} | null,
                        "corpus": path (optional: a corpus outside the directory), ...}
    bm25/               bm25s index (English stopwords, no stemming)
    dense/index.faiss   faiss index (IndexFlatIP, or any `dense_index.build_faiss` type) over
                        unit-norm passage embeddings

A dense retriever memory-maps the corpus (`corpus_store.MmapCorpus`) and the faiss index; it
also serves Search-R1's own prebuilt files as they are (`DenseRetriever.from_files`).
    train.jsonl, test.jsonl   tasks (synthetic worlds only)
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.search.batching import Hit
from envs.search.corpus_store import MmapCorpus
from envs.search.data import read_jsonl

INDEX_FORMAT = 1
_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s's token pattern


def read_meta(index_dir: str) -> dict[str, Any]:
    path = os.path.join(index_dir, "meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{index_dir!r} is not an index directory (no meta.json); build one with "
                                "`python -m envs.search.build_index --corpus CORPUS.jsonl --out DIR`")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_dir}: index format {meta.get('format')} != {INDEX_FORMAT}; rebuild it")
    return meta


def _hits(corpus: Sequence[dict], idx: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Hits for the first len(scores) ids (faiss pads missing ones with -1)."""
    return [{"document": corpus[int(i)], "score": float(s)} for i, s in zip(idx, scores) if i >= 0]  # noqa: B905


class BM25Retriever:
    """Lucene BM25 (k1=1.5, b=0.75) over a bm25s index.

    bm25s builds and stores the index (per token, the BM25 weight of every document holding it);
    queries are scored here with numpy (one bincount over the postings of the query's words, top-k
    by argmax passes), which costs less per query than `bm25s.BM25.retrieve` and gives the same
    scores. Query words are tokenized as bm25s does at index time (lowercase, `\\w\\w+`, English
    stopwords); words outside the vocabulary are dropped; documents matching no word are never
    returned, so a query may get fewer than `topk` hits.
    """

    def __init__(self, corpus: list[dict], model):
        from bm25s.stopwords import STOPWORDS_EN

        self.corpus = corpus
        self.model = model
        self._vocab = model.vocab_dict
        self._stop = set(STOPWORDS_EN)
        self._data = np.asarray(model.scores["data"], np.float32)
        self._indices = np.asarray(model.scores["indices"], np.int64)
        self._indptr = np.asarray(model.scores["indptr"], np.int64)
        self._num_docs = int(model.scores["num_docs"])
        if self._num_docs != len(corpus):
            raise ValueError(f"bm25 index has {self._num_docs} documents but the corpus {len(corpus)}")

    @classmethod
    def build(cls, corpus: list[dict]) -> BM25Retriever:
        import bm25s

        model = bm25s.BM25()
        model.index(bm25s.tokenize([r["contents"] for r in corpus], stopwords="en", show_progress=False),
                    show_progress=False)
        return cls(corpus, model)

    @classmethod
    def load(cls, index_dir: str, corpus: list[dict] | None = None) -> BM25Retriever:
        import bm25s

        read_meta(index_dir)
        model = bm25s.BM25.load(os.path.join(index_dir, "bm25"), show_progress=False, verbosity=0)
        return cls(corpus if corpus is not None else read_jsonl(os.path.join(index_dir, "corpus.jsonl")), model)

    def save(self, index_dir: str) -> None:
        self.model.save(os.path.join(index_dir, "bm25"), show_progress=False)

    def token_ids(self, query: str) -> list[int]:
        return [self._vocab[w] for w in _WORD.findall(query.lower()) if w not in self._stop and w in self._vocab]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query`, float64 [num_docs]."""
        tok = np.asarray(self.token_ids(query), np.int64)
        start, count = self._indptr[tok], self._indptr[tok + 1] - self._indptr[tok]
        # positions of the postings of every query token, in one flat array
        pos = np.arange(count.sum()) + np.repeat(start - (np.cumsum(count) - count), count)
        return np.bincount(self._indices[pos], weights=self._data[pos], minlength=self._num_docs)

    def search(self, query: str, topk: int) -> list[Hit]:
        scores = self.scores(query)
        k = min(topk, self._num_docs)
        if k <= 16:  # k argmax passes beat an argpartition for Search-R1's small k
            hits = []
            for _ in range(k):
                i = int(scores.argmax())
                if scores[i] <= 0:  # documents matching no query word are not hits
                    break
                hits.append((i, float(scores[i])))
                scores[i] = -np.inf
        else:
            part = np.argpartition(-scores, k - 1)[:k]
            hits = [(int(i), float(scores[i])) for i in part[np.argsort(-scores[part], kind="stable")]
                    if scores[i] > 0]
        return [{"document": self.corpus[i], "score": v} for i, v in hits]

    def batch_search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        # One query at a time: a query's score vector stays in cache; a [batch, num_docs] matrix
        # does not, and made batches slower per query than single queries.
        return [self.search(q, topk) for q in queries]


class DenseRetriever:
    """Exact inner-product search (faiss IndexFlatIP) over unit-norm embeddings of a TextEncoder."""

    def __init__(self, corpus: Sequence[dict], index, encoder):
        self.corpus = corpus
        self.index = index
        self.encoder = encoder

    @classmethod
    def build(cls, corpus: list[dict], encoder) -> DenseRetriever:
        import faiss

        emb = encoder.encode([r["contents"] for r in corpus], is_query=False)
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        return cls(corpus, index, encoder)

    @classmethod
    def load(cls, index_dir: str, corpus: Sequence[dict] | None = None, encoder_dir: str | None = None,
             mmap: bool = True) -> DenseRetriever:
        """Our index directory (meta.json): the corpus memory-mapped, the faiss index too (`mmap`)."""
        from envs.search.dense_index import open_index
        from envs.search.encoder import TextEncoder

        meta = read_meta(index_dir)
        dense = meta.get("dense")
        if not dense:
            raise FileNotFoundError(f"{index_dir} has no dense index; build it with "
                                    f"`python -m envs.search.build_index --dense ...`")
        encoder = TextEncoder(encoder_dir or dense["encoder"], pooling=dense["pooling"],
                              max_length=dense["max_length"], query_prefix=dense["query_prefix"],
                              passage_prefix=dense["passage_prefix"])
        index = open_index(os.path.join(index_dir, dense.get("index", os.path.join("dense", "index.faiss"))),
                           mmap=mmap)
        if corpus is None:
            corpus = MmapCorpus(os.path.join(index_dir, meta.get("corpus", "corpus.jsonl")))
        return cls(corpus, index, encoder)

    @classmethod
    def from_files(cls, index_path: str, corpus_path: str, encoder_dir: str, *, family: str | None = None,
                   query_prefix: str | None = None, pooling: str | None = None, max_length: int = 256,
                   mmap: bool = True) -> DenseRetriever:
        """Search-R1's prebuilt files as they are: a faiss index (`e5_Flat.index`, row i = line i)
        and the JSONL corpus (`wiki-18.jsonl`), with the encoder settings given here (Search-R1's
        server: `--retriever_name e5` -> "query: " prefix, mean pooling, queries cut at 256 tokens)."""
        from envs.search.dense_index import open_index
        from envs.search.encoder import TextEncoder, family_settings

        settings = family_settings(family, query_prefix=query_prefix, pooling=pooling)
        index = open_index(index_path, mmap=mmap)
        corpus = MmapCorpus(corpus_path)
        if index.ntotal != len(corpus):
            raise ValueError(f"{index_path} holds {index.ntotal} vectors but {corpus_path} {len(corpus)} passages")
        encoder = TextEncoder(encoder_dir, pooling=settings["pooling"], max_length=max_length,
                              query_prefix=settings["query_prefix"], passage_prefix=settings["passage_prefix"])
        if index.d != encoder.dim:
            raise ValueError(f"{index_path} has dimension {index.d}, the encoder {encoder_dir} {encoder.dim}")
        return cls(corpus, index, encoder)

    def save(self, index_dir: str) -> dict[str, Any]:
        import faiss

        os.makedirs(os.path.join(index_dir, "dense"), exist_ok=True)
        faiss.write_index(self.index, os.path.join(index_dir, "dense", "index.faiss"))
        e = self.encoder
        return {"encoder": os.path.abspath(e.model_dir), "pooling": e.pooling, "max_length": e.max_length,
                "query_prefix": e.query_prefix, "passage_prefix": e.passage_prefix, "dim": e.dim}

    def batch_search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        if not queries:
            return []
        scores, idx = self.index.search(self.encoder.encode(list(queries)), min(topk, len(self.corpus)))
        return [_hits(self.corpus, i, s) for i, s in zip(idx, scores, strict=True)]


class HttpRetriever:
    """Client of a Search-R1 compatible `POST /retrieve` server (ours or Search-R1's own)."""

    def __init__(self, url: str, timeout_s: float = 60.0, token: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retrieval url must start with http:// or https://, got {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        # the server's bearer token: given, or $AGENTIC_RETRIEVAL_TOKEN (never in a config file)
        token = token or os.environ.get("AGENTIC_RETRIEVAL_TOKEN")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()  # one keep-alive session per calling thread

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def batch_search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        import requests

        if not queries:
            return []
        payload = {"queries": list(queries), "topk": int(topk), "return_scores": True}
        try:
            resp = self._session().post(self.url, json=payload, timeout=self.timeout_s, headers=self._headers)
        except requests.RequestException as e:
            raise ConnectionError(f"retrieval server {self.url} unreachable: {e}") from e
        if resp.status_code != 200:
            raise RuntimeError(f"retrieval server {self.url} answered {resp.status_code}: {resp.text[:300]}")
        result = resp.json().get("result")
        if not isinstance(result, list) or len(result) != len(queries):
            raise RuntimeError(f"retrieval server {self.url}: expected 'result' with {len(queries)} lists, "
                               f"got {str(result)[:200]}")
        return result


def load_retriever(kind: str, *, index_dir: str | None = None, url: str | None = None,
                   encoder_dir: str | None = None):
    """Builds a retriever: kind "bm25" / "dense" read `index_dir`, kind "http" talks to `url`."""
    if kind == "http":
        if not url:
            raise ValueError("retriever 'http' needs retrieval_url, e.g. http://127.0.0.1:8000/retrieve")
        return HttpRetriever(url)
    if kind not in ("bm25", "dense"):
        raise ValueError(f"retriever must be 'bm25', 'dense' or 'http', got {kind!r}")
    if not index_dir:
        raise ValueError(f"retriever {kind!r} needs an index directory")
    if kind == "bm25":
        return BM25Retriever.load(index_dir)
    return DenseRetriever.load(index_dir, encoder_dir=encoder_dir)
