"""Runs untrusted Python inside bubblewrap with resource limits, a wall-clock timeout and pass evidence.

Each run is one `bwrap` sandbox (`apt-get install bubblewrap`) around `python -I -S`:

- an unprivileged user: as root, bwrap itself is started as uid/gid 65534 (nobody), so the
  sandbox's user namespace maps no privileged host id; inside, the code runs as 65534 with every
  capability dropped and `no_new_privs` set (bwrap always sets it);
- new user, pid, ipc, uts, cgroup and network namespaces (`--unshare-all`): no network unless
  `SandboxLimits.network`, no view of host processes (no `/proc/<host pid>/environ`, no signals
  to the env worker); bwrap's pid 1 dies with the run and takes every process of the run with it,
  `setsid()` children included (`--die-with-parent` ties it to the bwrap we kill on timeout);
- a private filesystem: `/usr` (and the interpreter's prefix) read-only, fresh `/proc` and `/dev`,
  no `/etc`, `/home` or repository; the only writable place is the run directory `/sandbox`, a
  tmpfs of `disk_mb`; no inherited file descriptors but the ones listed below;
- an empty environment (`--clearenv`, then PATH, HOME, LANG, PYTHONIOENCODING);
- rlimits set by `harness.py` before the code runs: address space, CPU, file size, open files and
  processes (RLIMIT_NPROC counts per user namespace: each run has its own, so a fork bomb stops at
  `max_processes` for that run only).

Fail closed: if bwrap is missing or cannot set up its namespaces, `run_python` raises
`SandboxUnavailable` saying why; it never runs code unconfined.

Pass evidence: with `tests`, a run passes only if `harness.py` wrote this run's random nonce to the
evidence descriptor, which it does after the code and every test ran without an exception (see its
docstring); the exit status alone proves nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time

_HARNESS = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"), encoding="utf-8").read()
_NOBODY = 65534
# Runs wait in threads (subprocess.Popen closes every inherited descriptor; uvloop's subprocesses do not).
_RUNNERS = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="sandbox")
_WORKDIR = "/sandbox"
_STARTED = b"started\n"  # the harness writes it first: the sandbox was set up and Python runs in it


class SandboxUnavailable(RuntimeError):
    """The sandbox's isolation cannot be set up here; the code was not run."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one run.

    Attributes:
        timeout_s: wall-clock limit; the sandbox (every process in it) is killed past it.
        cpu_s: CPU-seconds limit per process (RLIMIT_CPU; SIGXCPU, then SIGKILL).
        memory_mb: address-space limit per process (RLIMIT_AS); allocations past it raise MemoryError.
        file_size_mb: largest file the code may write (RLIMIT_FSIZE).
        disk_mb: size of the run directory (a tmpfs), all files together.
        max_open_files: RLIMIT_NOFILE.
        max_processes: processes (and threads) the run may have at once (RLIMIT_NPROC in its own
            user namespace), the harness's two threads included.
        max_output_bytes: stdout and stderr are each cut to this many bytes (flagged).
        network: share the host's network (False: an empty network namespace).
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 256
    file_size_mb: int = 8
    disk_mb: int = 16
    max_open_files: int = 64
    max_processes: int = 16
    max_output_bytes: int = 8192
    network: bool = False

    def __post_init__(self):
        if self.timeout_s <= 0 or self.cpu_s < 1:
            raise ValueError(f"timeout_s must be > 0 and cpu_s >= 1, got {self.timeout_s}, {self.cpu_s}")
        if self.memory_mb < 32:
            raise ValueError(f"memory_mb must be >= 32 (the interpreter itself needs ~20 MB), got {self.memory_mb}")
        for name in ("file_size_mb", "disk_mb", "max_open_files", "max_output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_processes < 4:
            raise ValueError(f"max_processes must be >= 4 (bwrap's init, the harness and its thread), "
                             f"got {self.max_processes}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """How one run ended.

    Attributes:
        passed: with tests: the harness's evidence that the code and every test ran (None without tests).
        network_isolated: the run had no network (always True unless `SandboxLimits.network`).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    signal: str | None
    truncated: bool
    network_isolated: bool
    duration_s: float
    passed: bool | None = None

    @property
    def ok(self) -> bool:
        """Tested runs: the evidence; untested: exit status 0 within the time limit."""
        if self.passed is not None:
            return self.passed and not self.timed_out
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
        elif self.passed is False:
            parts.append("[the tests did not all run]")
        if self.truncated:
            parts.append("[output truncated]")
        return "\n".join(parts) if parts else "[no output]"


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _interpreter() -> str:
    """The Python the code runs under: the system's /usr/bin/python3 where there is one (readable by
    the unprivileged sandbox user, unlike e.g. root's pyenv), else this process's base interpreter."""
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return os.path.realpath(sys._base_executable)


def _bwrap_argv(bwrap: str, limits: SandboxLimits, fds: dict[str, int], tested: bool) -> list[str]:
    """The bwrap command line: namespaces, a read-only /usr, a tmpfs run dir, the harness."""
    python = _interpreter()
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY),
            "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    if limits.network:
        argv += ["--share-net"]
        if os.path.exists("/etc/resolv.conf"):
            argv += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    if not python.startswith("/usr/"):  # e.g. a pyenv interpreter in the user's home
        argv += ["--ro-bind", sys.base_prefix, sys.base_prefix]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "0700", "--size", str(limits.disk_mb << 20),
             "--tmpfs", _WORKDIR, "--ro-bind-data", str(fds["main"]), f"{_WORKDIR}/main.py"]
    if tested:
        argv += ["--ro-bind-data", str(fds["tests"]), f"{_WORKDIR}/tests.py"]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", _WORKDIR, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", _WORKDIR,
             "--setenv", "TMPDIR", _WORKDIR, "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONIOENCODING", "utf-8",
             "--", python, "-I", "-S", "-c", _HARNESS, str(limits.memory_mb << 20), str(limits.cpu_s),
             str(limits.file_size_mb << 20), str(limits.max_open_files), str(limits.max_processes),
             str(int(tested)), str(fds["evidence"])]
    return argv


async def run_python(code: str, limits: SandboxLimits = SandboxLimits(), tests: str | None = None) -> RunResult:
    """Runs `code` (then `tests`, in the same namespace) in the sandbox under `limits`.

    Raises:
        SandboxUnavailable: bubblewrap is missing or its namespaces cannot be set up (nothing ran).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "the code sandbox needs bubblewrap, and `bwrap` is not on PATH; it refuses to run code "
            "unconfined. Install it (Debian/Ubuntu: apt-get install bubblewrap)")
    running: list[subprocess.Popen] = []
    try:
        return await asyncio.get_running_loop().run_in_executor(
            _RUNNERS, _run_blocking, bwrap, code, limits, tests, running)
    except asyncio.CancelledError:
        for proc in running:
            _kill_group(proc)
        raise


def _run_blocking(bwrap: str, code: str, limits: SandboxLimits, tests: str | None,
                  running: list[subprocess.Popen]) -> RunResult:
    tested = tests is not None
    nonce = secrets.token_hex(16).encode()
    fds = {"main": _memfd("main.py", code.encode("utf-8", "surrogatepass")), "evidence": _memfd("evidence")}
    if tested:
        fds["tests"] = _memfd("tests.py", tests.encode("utf-8", "surrogatepass"))
    drop = {"user": _NOBODY, "group": _NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    nonce_r, nonce_w = os.pipe()  # read before the code runs, then replaced by /dev/null
    try:
        os.write(nonce_w, nonce if tested else b"")
        os.close(nonce_w)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                _bwrap_argv(bwrap, limits, fds, tested), stdin=nonce_r, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=tuple(fds.values()), start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, **drop)
        except OSError as e:  # e.g. uid 65534 is not mapped in this user namespace
            raise SandboxUnavailable(f"could not start bubblewrap as an unprivileged user: {e}") from e
        finally:
            os.close(nonce_r)
        running.append(proc)
        try:
            out, err, cut, timed_out = _collect(proc, start + limits.timeout_s, limits.max_output_bytes)
        finally:
            _kill_group(proc)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        duration = time.monotonic() - start
        evidence = os.pread(fds["evidence"], 4096, 0)
    finally:
        for fd in fds.values():
            os.close(fd)
    if not evidence.startswith(_STARTED) and not timed_out and err.startswith(b"bwrap: "):
        raise SandboxUnavailable(
            "bubblewrap could not set up the sandbox (namespaces, mounts or the unprivileged user), so the "
            f"code was not run: {err.decode('utf-8', 'replace').strip()}")
    rc = None if timed_out else proc.returncode
    sig = None
    if rc is not None and rc > 128:  # bwrap's init reports a killed child as 128 + signal
        with contextlib.suppress(ValueError):
            sig = signal.Signals(rc - 128).name
    return RunResult(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                     exit_code=rc, timed_out=timed_out, signal=sig, truncated=cut,
                     network_isolated=not limits.network, duration_s=duration,
                     passed=(evidence == _STARTED + nonce) if tested else None)


def _collect(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Reads stdout and stderr (each cut to `cap` bytes) until the run ends or the deadline passes."""
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    cut = False
    with selectors.DefaultSelector() as sel:
        for fd in kept:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()]), cut, True
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                room = cap - len(kept[key.fd])
                cut |= len(chunk) > room
                kept[key.fd] += chunk[:max(0, room)]
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    return bytes(kept[proc.stdout.fileno()]), bytes(kept[proc.stderr.fileno()]), cut, timed_out


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
