"""Helpers for tests and benchmarks: run a real env host in a subprocess on loopback.

    with HostProcess(["echo", "game"], "--workers", "2") as host:
        client = EnvClient(host.address)
        ...
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from agentic.env.host import REPO_ROOT

_READY = re.compile(r"env host (\w+) ready on ([\d.:a-z]+):(\d+)")


class HostProcess:
    """`python -m agentic.env.host --port 0 --envs ...` as a child process.

    Args:
        envs: env kinds to serve.
        *args: more host flags, e.g. "--workers", "2", "--import", "tests.env.testing_envs".
        port: 0 picks a free port (read back from the host's ready line).
        startup_timeout_s: how long to wait for the ready line.
    """

    def __init__(self, envs, *args: str, port: int = 0, startup_timeout_s: float = 60.0):
        self.cmd = [sys.executable, "-m", "agentic.env.host", "--envs", ",".join(envs), "--port", str(port),
                    *args]
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.host_id = ""
        self.port = 0
        self.output: list[str] = []

    def start(self) -> HostProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO_ROOT, text=True, bufsize=1)
        deadline = time.monotonic() + self.startup_timeout_s
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
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
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait() if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> HostProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate(timeout=10)
