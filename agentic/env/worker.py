"""An env worker: one subprocess that runs many sessions of one env kind concurrently.

The env host starts it as

    python -m agentic.env.worker --env NAME [--import MODULE ...] [--max-observation-bytes N]

and speaks length-prefixed JSON frames with it over stdin/stdout (`agentic.env.wire`).
Env code runs only here, so a crash, leak or hang in it never takes the host down.
The worker moves its frame pipes off fds 0/1 at start, so env code that prints or
reads stdin cannot corrupt the stream (prints go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import traceback
from typing import Any

from agentic.core import Env, Observation, Step
from agentic.env.errors import EnvError, clip
from agentic.env.proto import env_service_pb2 as pb
from agentic.env.registry import get_spec
from agentic.env.replay import reply_digest
from agentic.env.wire import FrameWriter, read_frame, run_event_loop
from agentic.process import die_with_parent, tune_gc

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
CLOSE_TIMEOUT_S = 5.0


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, bool, int]:
    """Returns (text cut to at most `max_bytes` UTF-8 bytes on a character boundary, cut?, original bytes).

    Lone surrogates (which protobuf strings cannot carry) become '?'.
    """
    if len(text) * 4 <= max_bytes:  # fast path: cannot be over the limit
        try:
            text.encode("utf-8")
            return text, False, -1
        except UnicodeEncodeError:
            pass
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8"), False, len(data)
    return data[:max_bytes].decode("utf-8", "ignore"), True, len(data)


def _json_or_error(value: Any, what: str) -> str:
    try:
        return _dumps(dict(value) if value else {})
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serializable: {e}") from None


class Worker:
    def __init__(self, env_name: str, max_observation_bytes: int, writer: FrameWriter):
        self.spec = get_spec(env_name)
        self.max_observation_bytes = max_observation_bytes
        self.writer = writer
        self.envs: dict[str, Env] = {}
        self.running: dict[str, tuple[asyncio.Task, int]] = {}  # sid -> (open/step task, message id)

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ping":
            self.writer.send({"id": msg["id"], "ok": {"sessions": len(self.envs)}})
        elif op == "cancel":
            self._interrupt(msg["sid"], "its step was cancelled")
            env = self.envs.pop(msg["sid"], None)
            if env is not None:
                asyncio.ensure_future(self._close_quietly(env))
        elif op in ("open", "step", "close", "replay"):
            task = asyncio.ensure_future(getattr(self, "_" + op)(msg))
            if op != "close":
                self.running[msg["sid"]] = (task, msg["id"])
                task.add_done_callback(lambda t, sid=msg["sid"]: self._done(sid, t))
        else:
            self.writer.send({"id": msg.get("id", -1), "err": {"kind": pb.INVALID_ARGUMENT,
                                                                "message": f"unknown worker op {op!r}"}})

    def _done(self, sid: str, task: asyncio.Task) -> None:
        if self.running.get(sid, (None,))[0] is task:
            del self.running[sid]

    def _interrupt(self, sid: str, why: str) -> None:
        """Cancels the session's running open/step and answers it (the host may still be waiting)."""
        running = self.running.pop(sid, None)
        if running is not None:
            task, msg_id = running
            task.cancel()
            self.writer.send({"id": msg_id, "err": {"kind": pb.SESSION_LOST, "message": f"session ended: {why}"}})

    def _observation(self, text: Any) -> tuple[str, bool, dict]:
        if not isinstance(text, str):
            raise TypeError(f"observation must be str, got {type(text).__name__}")
        text, cut, original = truncate_utf8(text, self.max_observation_bytes)
        extra = {"observation_truncated": {"original_bytes": original, "kept_bytes": len(text.encode())}} if cut else {}
        return text, cut, extra

    def _build(self, msg: dict[str, Any]) -> Env:
        try:
            return self.spec.factory(**msg.get("kwargs", {}))
        except Exception as e:
            raise _Invalid(f"env {self.spec.name!r} rejected its env_kwargs: {type(e).__name__}: "
                           f"{clip(str(e))}") from None

    async def _reset_reply(self, env: Env, task: dict[str, Any]) -> dict[str, Any]:
        obs = await env.reset(task)
        if not isinstance(obs, Observation):
            raise TypeError(f"{type(env).__name__}.reset returned {type(obs).__name__}, expected Observation")
        text, cut, extra = self._observation(obs.text)
        info = {**obs.info, **extra} if extra else obs.info
        return {"observation": text, "info": _json_or_error(info, "Observation.info"), "cut": cut}

    async def _step_reply(self, env: Env, action: str) -> dict[str, Any]:
        step = await env.step(action)
        if not isinstance(step, Step):
            raise TypeError(f"{type(env).__name__}.step returned {type(step).__name__}, expected Step")
        text, cut, extra = self._observation(step.observation)
        info = {**step.info, **extra} if extra else step.info
        return {"observation": text, "reward": float(step.reward), "done": bool(step.done),
                "truncated": bool(step.truncated), "info": _json_or_error(info, "Step.info"), "cut": cut}

    async def _open(self, msg: dict[str, Any]) -> None:
        sid, env = msg["sid"], None
        try:
            env = self._build(msg)
            reply = await self._reset_reply(env, msg.get("task", {}))
        except asyncio.CancelledError:
            if env is not None:
                await self._close_quietly(env)
            raise
        except Exception as e:
            if env is not None:
                await self._close_quietly(env)
            self._fail(msg["id"], e, "reset")
            return
        self.envs[sid] = env
        self.writer.send({"id": msg["id"], "ok": reply})

    async def _step(self, msg: dict[str, Any]) -> None:
        sid = msg["sid"]
        env = self.envs.get(sid)
        if env is None:
            self.writer.send({"id": msg["id"], "err": {"kind": pb.SESSION_LOST,
                                                       "message": "the worker has no such session"}})
            return
        try:
            reply = await self._step_reply(env, msg["action"])
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.envs.pop(sid, None)
            await self._close_quietly(env)
            self._fail(msg["id"], e, "step")
            return
        self.writer.send({"id": msg["id"], "ok": reply})

    async def _replay(self, msg: dict[str, Any]) -> None:
        """Rebuilds a session of a deterministic env in one op (the host's `replay.py`): reset with the
        task, then the logged actions; answers the digest of every reply, or the error and where."""
        sid, env, digests = msg["sid"], None, []
        try:
            env = self._build(msg)
            digests.append(reply_digest({"ok": await self._reset_reply(env, msg.get("task", {}))}))
            for action in msg.get("actions", ()):
                digests.append(reply_digest({"ok": await self._step_reply(env, action)}))
        except asyncio.CancelledError:
            if env is not None:
                await self._close_quietly(env)
            raise
        except Exception as e:
            if env is not None:
                await self._close_quietly(env)
            self._fail(msg["id"], e, f"replay (after {max(0, len(digests) - 1)} of its steps)")
            return
        self.envs[sid] = env
        self.writer.send({"id": msg["id"], "ok": {"digests": digests}})

    async def _close(self, msg: dict[str, Any]) -> None:
        env = self.envs.pop(msg["sid"], None)
        self._interrupt(msg["sid"], "it was closed while a step was running")
        metrics = "{}"
        if env is not None:
            try:
                metrics = _json_or_error(env.metrics(), "Env.metrics()")
            except Exception as e:
                print(f"[env worker {self.spec.name}] metrics() raised {e!r}", file=sys.stderr)
            await self._close_quietly(env)
        self.writer.send({"id": msg["id"], "ok": {"metrics": metrics}})

    async def _close_quietly(self, env: Env) -> None:
        try:
            await asyncio.wait_for(env.close(), CLOSE_TIMEOUT_S)
        except Exception as e:
            print(f"[env worker {self.spec.name}] close() raised {e!r}", file=sys.stderr)

    def _fail(self, msg_id: int, e: Exception, where: str) -> None:
        if isinstance(e, _Invalid):
            kind, text = pb.INVALID_ARGUMENT, str(e)
        elif isinstance(e, EnvError) and e.kind:
            kind, text = e.kind, str(e)
        else:
            tb = traceback.extract_tb(e.__traceback__)[-1:]
            at = f" at {tb[0].filename}:{tb[0].lineno}" if tb else ""
            kind, text = pb.ENV_ERROR, f"env {self.spec.name!r} raised in {where}: {type(e).__name__}: {e}{at}"
        self.writer.send({"id": msg_id, "err": {"kind": kind, "message": text[:4000]}})

    async def shutdown(self) -> None:
        for sid in list(self.running):
            self._interrupt(sid, "the worker is shutting down")
        envs, self.envs = list(self.envs.values()), {}
        await asyncio.gather(*(self._close_quietly(env) for env in envs))


class _Invalid(Exception):
    """The open request itself is bad (env kwargs the factory rejects)."""


async def _serve(args: argparse.Namespace, in_fd: int, out_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0))
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", 0))
    writer = FrameWriter(transport.write)
    worker = Worker(args.env, args.max_observation_bytes, writer)
    tune_gc()
    writer.send({"op": "ready", "pid": os.getpid()})
    while True:
        messages = await read_frame(reader)
        if messages is None:  # the host closed our stdin: it is gone or wants us gone
            break
        for msg in messages:
            if msg.get("op") == "shutdown":
                await worker.shutdown()
                writer.send({"id": msg.get("id", -1), "ok": {}})
                await asyncio.sleep(0)
                transport.close()
                return
            worker.handle(msg)
    await worker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="registered env name")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="module that registers the env (e.g. envs.search); repeatable")
    parser.add_argument("--max-observation-bytes", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)  # no worker outlives its host
    # Keep the frame pipes away from env code: fd 1 becomes stderr, fd 0 /dev/null.
    in_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for module in args.imports:
        importlib.import_module(module)
    run_event_loop(_serve(args, in_fd, out_fd))


if __name__ == "__main__":
    main()
