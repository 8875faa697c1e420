"""A retrieval server speaking Search-R1's API, so Search-R1 clients and our env both can use it.

    python -m envs.search.retrieval_server --port 8000                 # default synthetic world, BM25
    python -m envs.search.retrieval_server --index DIR --retriever dense --port 8000
    # Search-R1's prebuilt wiki-18 files as they are (retrieval_launch.sh's e5_Flat.index + wiki-18.jsonl):
    python -m envs.search.retrieval_server --faiss e5_Flat.index --corpus wiki-18.jsonl \\
        --encoder E5_DIR --encoder-family e5 --port 8000

`POST /retrieve` with `{"queries": [str], "topk": int | null, "return_scores": bool}` answers
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}` (one list per query,
best first); with `return_scores` false each list holds the documents themselves, as in
Search-R1's server. Queries of concurrent requests are micro-batched into one retrieval call;
each query gets its own request's topk.

Dense retrieval memory-maps the corpus and the faiss index (`corpus_store`, `dense_index`), so
a wiki-18 server holds offsets and pages, not Python objects of 21M passages.

Limits: at most `--max-queries` queries per request and `topk` <= `--max-topk` (a request over
either gets 422 naming it, and nothing else is affected). Auth: with a token (`--token-file`, or
`$AGENTIC_RETRIEVAL_TOKEN`) every `/retrieve` needs `Authorization: Bearer TOKEN`; a non-loopback
`--host` without a token is refused at start. `--ssl-certfile` / `--ssl-keyfile` serve HTTPS.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import Optional

from pydantic import BaseModel

from envs.search.batching import MicroBatcher

TOKEN_ENV = "AGENTIC_RETRIEVAL_TOKEN"
MAX_QUERIES = 1024   # per request: Search-R1's val batch (256) x its topk (3) fits with room
MAX_TOPK = 100


class QueryRequest(BaseModel):
    """Search-R1's request body."""

    queries: list[str]
    topk: Optional[int] = None  # noqa: UP045 (pydantic evaluates it at runtime)
    return_scores: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(batcher: MicroBatcher, default_topk: int = 3, *, token: str | None = None,
               max_queries: int = MAX_QUERIES, max_topk: int = MAX_TOPK):
    """A FastAPI app serving `POST /retrieve` (and `GET /health`) from `batcher`.

    Args:
        token: if set, `/retrieve` needs `Authorization: Bearer <token>` (compared in constant time).
        max_queries / max_topk: per-request caps; a request over them gets 422 and runs nothing.
    """
    from fastapi import FastAPI, Header, HTTPException

    if not 1 <= default_topk <= max_topk:
        raise ValueError(f"default topk {default_topk} must be in [1, max_topk={max_topk}]")
    app = FastAPI(title="search_r1 retrieval")
    expected = f"Bearer {token}".encode() if token else None

    @app.post("/retrieve")
    async def retrieve(request: QueryRequest, authorization: Optional[str] = Header(None)):  # noqa: UP045
        if expected is not None and not hmac.compare_digest((authorization or "").encode(), expected):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        topk = request.topk or default_topk
        if not 1 <= topk <= max_topk:
            raise HTTPException(status_code=422, detail=f"topk must be in [1, {max_topk}], got {topk}")
        if len(request.queries) > max_queries:
            raise HTTPException(status_code=422, detail=f"at most {max_queries} queries per request, "
                                                        f"got {len(request.queries)}")
        results = await batcher.search_many(request.queries, topk)
        if not request.return_scores:
            results = [[hit["document"] for hit in hits] for hits in results]
        return {"result": results}

    @app.get("/health")
    async def health():
        return {"status": "ok", "queries": batcher.queries, "calls": batcher.calls}

    return app


def read_token(token_file: str | None) -> str | None:
    """The server's token: `token_file`'s content (stripped), else $AGENTIC_RETRIEVAL_TOKEN, else None."""
    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def build_retriever(args: argparse.Namespace):
    """The retriever the command line asks for (Search-R1 files, our index directory, or the world)."""
    if args.index and args.retriever == "dense":  # our index directory; --corpus: where its corpus is here
        from envs.search.corpus_store import MmapCorpus
        from envs.search.retrieval import DenseRetriever

        return DenseRetriever.load(args.index, corpus=MmapCorpus(args.corpus) if args.corpus else None,
                                   encoder_dir=args.encoder, mmap=not args.no_mmap)
    if args.faiss or args.corpus:
        if not (args.faiss and args.corpus and args.encoder):
            raise SystemExit("--faiss, --corpus and --encoder go together (Search-R1's prebuilt files)")
        if args.encoder_family is None and args.query_prefix is None:
            raise SystemExit("say how queries are encoded: --encoder-family e5 (Search-R1's wiki-18 index) "
                             "or --query-prefix ''")
        from envs.search.retrieval import DenseRetriever

        return DenseRetriever.from_files(args.faiss, args.corpus, args.encoder, family=args.encoder_family,
                                         query_prefix=args.query_prefix, pooling=args.pooling,
                                         max_length=args.query_max_length, mmap=not args.no_mmap)
    from envs.search.env import SearchR1Config, shared_batcher

    config = SearchR1Config(retriever=args.retriever, index_dir=args.index, encoder=args.encoder,
                            world_passages=args.world_passages, world_seed=args.world_seed)
    return shared_batcher(config).retriever


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m envs.search.retrieval_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=None, help="index directory (default: the cached synthetic world)")
    p.add_argument("--retriever", default="bm25", choices=["bm25", "dense"])
    p.add_argument("--faiss", default=None, help="a faiss index file (Search-R1's e5_Flat.index), with --corpus")
    p.add_argument("--corpus", default=None, help="JSONL corpus whose line i is the index's row i (wiki-18.jsonl); "
                   "with --index: the dense index's corpus, where it is on this machine")
    p.add_argument("--encoder", default=None, help="encoder directory (overrides a dense index's)")
    p.add_argument("--encoder-family", default=None, choices=["e5", "bge", "contriever", "plain"],
                   help="query prefix and pooling of the encoder (e5: 'query: ', mean), as Search-R1's "
                        "--retriever_name")
    p.add_argument("--query-prefix", default=None, help="overrides the family's query prefix")
    p.add_argument("--pooling", default=None, choices=["mean", "cls"], help="overrides the family's pooling")
    p.add_argument("--query-max-length", type=int, default=256, help="query tokens (Search-R1: 256)")
    p.add_argument("--no-mmap", action="store_true", help="read the faiss index into memory instead of mapping it")
    p.add_argument("--world-passages", type=int, default=20_000, help="size of the default synthetic world")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=3, help="topk when a request gives none")
    p.add_argument("--max-topk", type=int, default=MAX_TOPK, help="largest topk a request may ask")
    p.add_argument("--max-queries", type=int, default=MAX_QUERIES, help="most queries in one request")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help=f"bearer token file (default ${TOKEN_ENV}); required "
                                                      "off loopback")
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    args = p.parse_args(argv)

    token = read_token(args.token_file)
    if token is None and not is_loopback(args.host):
        sys.exit(f"refusing to serve on {args.host} without a token: give --token-file or ${TOKEN_ENV} "
                 "(or bind 127.0.0.1)")
    import uvicorn

    retriever = build_retriever(args)
    batcher = MicroBatcher(retriever, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    app = create_app(batcher, args.topk, token=token, max_queries=args.max_queries, max_topk=args.max_topk)
    scheme = "https" if args.ssl_certfile else "http"
    print(f"retrieval server: {len(retriever.corpus)} passages ({type(retriever).__name__}"
          f"{', token required' if token else ''}) on {scheme}://{args.host}:{args.port}/retrieve", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ssl_certfile=args.ssl_certfile,
                ssl_keyfile=args.ssl_keyfile)


if __name__ == "__main__":
    main()
