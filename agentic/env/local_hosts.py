"""Env hosts as local subprocesses: what the launcher starts when no remote addresses are
configured, and what tests and benchmarks serve envs from. One way to start them, stopped
with no orphans.

    with HostProcess(["echo"], "--import", "envs", "--workers", "2") as host:
        client = EnvClient(host.address)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from agentic.env.workers import REPO_ROOT
from agentic.process import die_with_parent

_READY = re.compile(r"env host (\w+) ready on ([\d.:a-z]+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostProcess:
    """`python -m agentic.env.host --port 0 --envs ...` as a child process.

    The child follows its parent (SIGTERM when the parent dies, even by SIGKILL), runs in its
    own process group (Ctrl-C in a terminal reaches the parent, which then stops the host), and
    is ready when it prints its "ready on" line (the port it bound is read from it).

    Args:
        envs: env kinds to serve.
        *args: more host flags, e.g. "--workers", "2", "--import", "tests.env.faulty_env".
        port: 0 picks a free port.
        startup_timeout_s: how long to wait for the ready line.
        cwd: the host's working directory (a module there can be given to `--import`).
        token: the host requires it; handed over in the environment, not argv, so it stays out
            of the process list. None: the host takes $AGENTIC_ENV_TOKEN, if set.
        echo: also print the host's output lines (the launcher does; tests keep them in `output`).
    """

    def __init__(self, envs, *args: str, port: int = 0, startup_timeout_s: float = 60.0, cwd: str = REPO_ROOT,
                 token: str | None = None, echo: bool = False):
        self.cmd = [sys.executable, "-m", "agentic.env.host", "--envs", ",".join(envs), "--port", str(port),
                    *args]
        self.startup_timeout_s, self.cwd, self.token, self.echo = startup_timeout_s, cwd, token, echo
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.host_id = ""
        self.port = 0
        self.output: list[str] = []

    def start(self) -> HostProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        if self.token:
            env["AGENTIC_ENV_TOKEN"] = self.token
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.cwd, text=True, bufsize=1, start_new_session=True,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + self.startup_timeout_s
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                if self.echo:
                    print(line, end="", flush=True)
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.host_id, self.port = m.group(1), int(m.group(3))
                    self.address = f"127.0.0.1:{self.port}"
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"env host did not start: {' '.join(self.cmd)}\n" + "\n".join(self.output[-30:]))
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain) and wait; then SIGKILL its process group. Returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait() if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> HostProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate(timeout=10)


@contextlib.contextmanager
def local_env_hosts(envs: Sequence[str], count: int = 1, *, workers: int = 1, token: str | None = None,
                    extra_args: Sequence[str] = (), startup_timeout_s: float = 120.0) -> Iterator[list[str]]:
    """Runs `count` env hosts serving `envs` on loopback; yields their addresses.

    `token`: the hosts require it (`EnvClient(token=...)`). None: the hosts take
    $AGENTIC_ENV_TOKEN, if set.
    """
    hosts: list[HostProcess] = []
    try:
        for _ in range(count):
            hosts.append(HostProcess(envs, "--workers", str(workers), *extra_args, token=token, echo=True,
                                     startup_timeout_s=startup_timeout_s).start())
        yield [h.address for h in hosts]
    finally:
        for h in hosts:
            h.terminate(timeout=15)
