"""A retrieval server speaking Search-R1's API, so Search-R1 clients and our env both can use it.

    python -m envs.search.retrieval_server --port 8000                 # default synthetic world, BM25
    python -m envs.search.retrieval_server --index DIR --retriever dense --port 8000

`POST /retrieve` with `{"queries": [str], "topk": int | null, "return_scores": bool}` answers
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}` (one list per query,
best first); with `return_scores` false each list holds the documents themselves, as in
Search-R1's server. Queries of concurrent requests are micro-batched into one retrieval call.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

from pydantic import BaseModel

from envs.search.batching import MicroBatcher


class QueryRequest(BaseModel):
    """Search-R1's request body."""

    queries: list[str]
    topk: Optional[int] = None  # noqa: UP045 (pydantic evaluates it at runtime)
    return_scores: bool = False


def create_app(batcher: MicroBatcher, default_topk: int = 3):
    """A FastAPI app serving `POST /retrieve` (and `GET /health`) from `batcher`."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="search_r1 retrieval")

    @app.post("/retrieve")
    async def retrieve(request: QueryRequest):
        topk = request.topk or default_topk
        if topk < 1:
            raise HTTPException(status_code=422, detail=f"topk must be >= 1, got {topk}")
        results = await batcher.search_many(request.queries, topk)
        if not request.return_scores:
            results = [[hit["document"] for hit in hits] for hits in results]
        return {"result": results}

    @app.get("/health")
    async def health():
        return {"status": "ok", "queries": batcher.queries, "calls": batcher.calls}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m envs.search.retrieval_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=None, help="index directory (default: the cached synthetic world)")
    p.add_argument("--retriever", default="bm25", choices=["bm25", "dense"])
    p.add_argument("--encoder", default=None, help="encoder directory overriding the dense index's")
    p.add_argument("--world-passages", type=int, default=20_000, help="size of the default synthetic world")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=3, help="topk when a request gives none")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    args = p.parse_args(argv)

    import uvicorn

    from envs.search.env import SearchR1Config, shared_batcher

    config = SearchR1Config(retriever=args.retriever, index_dir=args.index, encoder=args.encoder,
                            world_passages=args.world_passages, world_seed=args.world_seed,
                            micro_batch=args.max_batch, micro_batch_wait_ms=args.max_wait_ms)
    batcher = shared_batcher(config)
    print(f"retrieval server: {len(batcher.retriever.corpus)} passages ({args.retriever}) on "
          f"http://{args.host}:{args.port}/retrieve", flush=True)
    uvicorn.run(create_app(batcher, args.topk), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
