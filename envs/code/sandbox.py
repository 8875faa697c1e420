"""Runs untrusted Python in a subprocess with CPU, memory, file-size limits and a wall-clock timeout.

The child is `python -I -S` started in a fresh temporary directory with an empty environment, in
its own process group (so a timeout kills everything it spawned). Before the code runs, a small
boot script sets RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_CORE and, where
the OS allows (root, or unprivileged user namespaces), moves into a new network namespace with no
interfaces: no network. `RunResult.network_isolated` says whether that worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time

_BOOT = r"""
import ctypes, resource, sys
mem, cpu, fsize, nofile, net = (int(a) for a in sys.argv[1:6])
isolated = 0
if not net:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) == 0 or libc.unshare(0x10000000 | 0x40000000) == 0:
            isolated = 1  # CLONE_NEWNET (as root), else CLONE_NEWUSER|CLONE_NEWNET
    except Exception:
        pass
with open(".net_isolated", "w") as f:
    f.write(str(isolated))
for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile),
                   (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (value, value))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
del ctypes, resource, libc, mem, cpu, fsize, nofile, net, isolated, f, res, value
sys.argv = ["main.py"]
with open("main.py", encoding="utf-8") as f:
    source = f.read()
del f
exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one run.

    Attributes:
        timeout_s: wall-clock limit; the whole process group is killed past it.
        cpu_s: CPU-seconds limit (RLIMIT_CPU; SIGXCPU, then SIGKILL).
        memory_mb: address-space limit (RLIMIT_AS); allocations past it raise MemoryError.
        file_size_mb: largest file the code may write (RLIMIT_FSIZE).
        max_open_files: RLIMIT_NOFILE.
        max_output_bytes: stdout and stderr are each cut to this many bytes (flagged).
        network: allow network access (False = new empty network namespace where possible).
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 256
    file_size_mb: int = 8
    max_open_files: int = 64
    max_output_bytes: int = 8192
    network: bool = False

    def __post_init__(self):
        if self.timeout_s <= 0 or self.cpu_s < 1:
            raise ValueError(f"timeout_s must be > 0 and cpu_s >= 1, got {self.timeout_s}, {self.cpu_s}")
        if self.memory_mb < 32:
            raise ValueError(f"memory_mb must be >= 32 (the interpreter itself needs ~20 MB), got {self.memory_mb}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    signal: str | None
    truncated: bool
    network_isolated: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def render(self) -> str:
        """A compact text report for the model."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append(f"[killed: wall-clock timeout after {self.duration_s:.1f}s]")
        elif self.signal:
            parts.append(f"[killed by {self.signal}]")
        elif self.exit_code:
            parts.append(f"[exit code {self.exit_code}]")
        if self.truncated:
            parts.append("[output truncated]")
        return "\n".join(parts) if parts else "[no output]"


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    kept, cut = bytearray(), False
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if len(chunk) > room:
            cut = True
        kept += chunk[:max(0, room)]
    return bytes(kept), cut


async def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> RunResult:
    """Runs `code` as a script under `limits` and returns what it printed and how it ended."""
    with tempfile.TemporaryDirectory(prefix="sandbox-") as workdir:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        args = [str(limits.memory_mb << 20), str(limits.cpu_s), str(limits.file_size_mb << 20),
                str(limits.max_open_files), str(int(limits.network))]
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", _BOOT, *args, cwd=workdir, start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
        readers = asyncio.gather(_read_capped(proc.stdout, limits.max_output_bytes),
                                 _read_capped(proc.stderr, limits.max_output_bytes))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), limits.timeout_s)
        except TimeoutError:
            timed_out = True
        except asyncio.CancelledError:
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)  # also reaps anything the code left running in its group
        await proc.wait()
        try:
            (out, cut_out), (err, cut_err) = await asyncio.wait_for(readers, 2.0)
        except TimeoutError:  # a grandchild escaped the group and holds the pipes open
            (out, cut_out), (err, cut_err) = (b"", True), (b"", True)
        duration = time.monotonic() - start
        try:
            with open(os.path.join(workdir, ".net_isolated")) as f:
                isolated = f.read().strip() == "1"
        except OSError:
            isolated = False
    rc = proc.returncode
    sig = None
    if rc is not None and rc < 0:
        with contextlib.suppress(ValueError):
            sig = signal.Signals(-rc).name
    return RunResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                     exit_code=rc, timed_out=timed_out, signal=None if timed_out else sig,
                     truncated=cut_out or cut_err, network_isolated=isolated, duration_s=duration)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
