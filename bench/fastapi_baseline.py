"""The baseline env server, written the way peers do it: FastAPI + uvicorn, one HTTP request per step,
envs in the server process. Used only by bench/env_service.py.

    python bench/fastapi_baseline.py --port 8000 --envs echo,game
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvicorn  # noqa: E402
from fastapi import FastAPI, HTTPException  # noqa: E402
from pydantic import BaseModel  # noqa: E402

import envs as _bundled_envs  # noqa: E402, F401  (registers the bundled envs, as the env host's `--import envs` does)
from agentic.env import make  # noqa: E402


class OpenRequest(BaseModel):
    env: str
    task: dict = {}
    env_kwargs: dict = {}


class StepRequest(BaseModel):
    session_id: str
    action: str


class CloseRequest(BaseModel):
    session_id: str


def build_app(envs: list[str]) -> FastAPI:
    app = FastAPI()
    sessions: dict = {}
    ids = itertools.count()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/open")
    async def open_(req: OpenRequest):
        if req.env not in envs:
            raise HTTPException(400, f"env {req.env!r} not served")
        env = make(req.env, **req.env_kwargs)
        obs = await env.reset(req.task)
        sid = str(next(ids))
        sessions[sid] = env
        return {"session_id": sid, "observation": obs.text, "info": dict(obs.info)}

    @app.post("/step")
    async def step(req: StepRequest):
        env = sessions.get(req.session_id)
        if env is None:
            raise HTTPException(404, "unknown session")
        s = await env.step(req.action)
        return {"observation": s.observation, "reward": s.reward, "done": s.done, "truncated": s.truncated,
                "info": dict(s.info)}

    @app.post("/close")
    async def close(req: CloseRequest):
        env = sessions.pop(req.session_id, None)
        if env is None:
            return {"metrics": {}}
        metrics = env.metrics()
        await env.close()
        return {"metrics": metrics}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--envs", default="echo,game")
    a = p.parse_args()
    uvicorn.run(build_app(a.envs.split(",")), host="127.0.0.1", port=a.port, log_level="warning",
                backlog=8192, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
