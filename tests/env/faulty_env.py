"""A test-only env whose actions misbehave on command; hosts load it with `--import tests.env.faulty_env`.

Actions: "sleep:S" (await S seconds), "block:S" (block the worker's event loop S seconds, like a
CPU-bound hang), "raise" (the env raises), "exit" (the worker process exits), "tear" (the worker
writes half a frame to the host and SIGKILLs itself), "big:N" (an N-byte observation), "pid" (the
worker's pid); anything else is echoed.
"""

import asyncio
import os
import signal
import struct
import time

from agentic.core import Env, Observation, Step, Task
from agentic.env.registry import EnvSpec, register


class FaultyEnv(Env):
    async def reset(self, task: Task) -> Observation:
        if task.get("reset") == "raise":
            raise RuntimeError("reset failed on purpose")
        return Observation(text="ready", info={"pid": os.getpid()})

    async def step(self, action: str) -> Step:
        cmd, _, arg = action.partition(":")
        if cmd == "sleep":
            await asyncio.sleep(float(arg))
        elif cmd == "block":
            time.sleep(float(arg))
        elif cmd == "raise":
            raise ValueError("step failed on purpose")
        elif cmd == "exit":
            os._exit(3)
        elif cmd == "tear":
            _write_to_host(struct.pack(">I", 1000) + b'[{"id": 1, "ok"')
            os.kill(os.getpid(), signal.SIGKILL)
        elif cmd == "big":
            return Step(observation="x" * int(arg))
        elif cmd == "pid":
            return Step(observation=str(os.getpid()))
        return Step(observation=action)


def _write_to_host(data: bytes) -> None:
    """Writes raw bytes on the worker's frame pipe to the host (the transport of `worker._serve`)."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:  # follow the await chain
            if coro.cr_frame.f_code.co_name == "_serve":
                coro.cr_frame.f_locals["transport"].write(data)
                return
            coro = coro.cr_await
    raise RuntimeError("not running in an env worker")


register(EnvSpec(name="faulty", factory=FaultyEnv, max_sessions=50, step_deadline_s=1.0,
                 description="test-only env that hangs, raises or exits on command"))
register(EnvSpec(name="tiny", factory=FaultyEnv, max_sessions=2, step_deadline_s=1.0,
                 description="FaultyEnv with max_sessions=2 (backpressure tests)"))

_HOARD = []


class LeakyEnv(FaultyEnv):
    """"leak:MB" holds on to MB more megabytes of memory in the worker."""

    async def step(self, action: str) -> Step:
        if action.startswith("leak:"):
            _HOARD.append(bytearray(int(action[5:]) << 20))
            return Step(observation="leaked")
        return await super().step(action)


register(EnvSpec(name="leaky", factory=LeakyEnv, max_sessions=10, step_deadline_s=2.0, memory_mb=150,
                 description="FaultyEnv that leaks memory on command"))
register(EnvSpec(name="sluggish", factory=FaultyEnv, max_sessions=50, step_deadline_s=10.0,
                 description="FaultyEnv with a 10 s deadline (slow but legal steps)"))
