"""Hostile programs against the code sandbox, through the code env's public API (issue 31).

Each test is a finding from the issue: what model-written code could do to the env worker, the
host or the reward before the sandbox was bubblewrap; each fails on the rlimits-only sandbox.
These need bubblewrap (`apt-get install bubblewrap`; CI's `.ci/run` installs it as root).
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from agentic.env.client import EnvClient
from agentic.env.local_hosts import HostProcess
from envs.code.env import CodeEnv, PythonTool
from envs.code.sandbox import SandboxLimits, SandboxUnavailable, run_python

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None and os.geteuid() != 0,
                                reason="bubblewrap is not installed (CI installs it as root)")


def python(code: str, **limits) -> str:
    return asyncio.run(PythonTool(**limits)({"code": textwrap.dedent(code)}))


def attempt(code: str, tests: str = "assert f(2) == 4", **limits) -> float:
    """The reward CodeEnv gives one attempt of `code`."""
    async def episode():
        env = CodeEnv(max_turns=1, **limits)
        await env.reset({"prompt": "Define f(x) = 2x.", "tests": tests})
        return (await env.step(f"```python\n{textwrap.dedent(code)}\n```\n")).reward
    return asyncio.run(episode())


def test_the_program_sees_no_host_files_environment_or_processes(monkeypatch):
    monkeypatch.setenv("AGENTIC_ENV_TOKEN", "host-secret-4f1c")
    out = python("""
        import os
        for path in ("/etc/passwd", os.path.expanduser("~root"), "/work", "/root", "/home"):
            print(path, os.path.exists(path))
        leaked = [p for p in os.listdir("/proc") if p.isdigit()
                  and b"host-secret" in open(f"/proc/{p}/environ", "rb").read()]
        print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), "leaked", leaked)
        print("env", sorted(os.environ), "uid", os.getuid())
        print("nnp", [l for l in open("/proc/self/status") if l.startswith("NoNewPrivs")])
        print("fds", sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
    """)
    assert "/etc/passwd False" in out and "/work False" in out and "/root False" in out, out
    assert "leaked []" in out and "host-secret" not in out, out
    assert "pids [1, 2]" in out, out  # bwrap's init and the program: no host process visible
    assert "uid 65534" in out and "NoNewPrivs:\\t1" in out, out
    assert "env ['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONIOENCODING', 'TMPDIR']" in out, out
    assert "fds [0, 1, 2, 3]" in out, out  # stdio and the listing's own fd: nothing inherited


def test_writes_outside_the_run_directory_fail_and_the_run_directory_is_capped():
    out = python("""
        for path in ("/tmp/x", "/usr/x", "/x", "/dev/shm/x"):
            try:
                open(path, "w").write("x"); print("wrote", path)
            except OSError as e:
                print("refused", path, type(e).__name__)
        written = 0
        try:
            for i in range(64):
                open(f"f{i}", "wb").write(b"0" * (4 << 20)); written += 4
        except OSError as e:
            print("stopped", type(e).__name__)
        print("MB", written)
    """)
    assert "wrote" not in out and out.count("refused") == 4, out
    assert "stopped" in out and int(out.split("MB ")[1].split()[0]) <= SandboxLimits().disk_mb, out


def test_a_fork_bomb_stops_at_the_process_limit_and_setsid_children_die_with_the_run():
    out = python("""
        import os, time
        forked = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                forked += 1
        except OSError as e:
            print("refused", type(e).__name__)
        print("forked", forked)
    """, timeout_s=5)
    assert "refused BlockingIOError" in out and int(out.split("forked ")[1].split()[0]) < 16, out
    marker = "4711.25"
    python(f"""
        import subprocess
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        print("started")
    """)
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).endswith(f"sleep\0{marker}\0")]
    assert not survivors, "a setsid() child outlived its run"


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def test_the_program_cannot_kill_or_write_to_its_env_worker():
    """Through a real env host: kill(getppid()) and writes to every fd; the next episode still runs."""
    async def episodes(address):
        async with EnvClient(address) as client:
            session, _ = await client.open("code", {"prompt": "p", "tests": "assert f(2) == 4"})
            hostile = textwrap.dedent("""
                import os, signal
                for fd in range(3, 64):
                    try:
                        os.write(fd, b"\\x00\\x00\\x00\\x04junk")
                    except OSError:
                        pass
                os.kill(os.getppid(), signal.SIGKILL)
                def f(x):
                    return 0
            """)
            first = await client.step(session, f"```python\n{hostile}\n```\n")
            await client.close(session) if not first.done else None
            session, _ = await client.open("code", {"prompt": "p", "tests": "assert f(2) == 4"})
            second = await client.step(session, "```python\ndef f(x):\n    return 2 * x\n```\n")
            return first, second

    with HostProcess(["code"], "--import", "envs", "--workers", "code=1") as host:
        first, second = asyncio.run(episodes(host.address))
    assert first.reward == 0.0 and second.reward == 1.0 and second.done


@pytest.mark.parametrize("cheat", [
    "import os\nos._exit(0)",
    "import sys\nsys.exit(0)",
    "import atexit, os\natexit.register(lambda: os._exit(0))",
    "import sys, os\nsys.excepthook = lambda *a: os._exit(0)",
    "import os, threading\nthreading.Timer(0.05, lambda: os._exit(0)).start()\nimport time\ntime.sleep(1)",
    # looking for the evidence in memory or in the harness's frames
    "import sys\nf = sys._getframe()\nwhile f:\n    print([v for v in f.f_locals.values() if isinstance(v, bytes)])\n"
    "    f = f.f_back\nimport os\nos._exit(0)",
    "import gc\nprint([o for o in gc.get_objects() if isinstance(o, bytes)])",
    "print(open('/proc/self/mem', 'rb'))",
    "import ctypes\nprint(ctypes.string_at(1, 1))",
    "import os\nprint(os.read(0, 100))\nos._exit(0)",
])
def test_exiting_early_or_hunting_for_the_evidence_earns_nothing(cheat):
    assert attempt("def f(x):\n    return 0\n" + cheat) == 0.0


def test_a_correct_program_still_passes_and_stdin_holds_nothing():
    assert attempt("import sys\nassert sys.stdin.read() == ''\ndef f(x):\n    return 2 * x") == 1.0


def test_limits_come_from_the_host_not_the_client():
    for kwargs in ({"memory_mb": 4096}, {"cpu_s": 600}, {"timeout_s": 1e9}, {"network": True},
                   {"max_processes": 10_000}, {"disk_mb": 1 << 20}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            CodeEnv(**kwargs)
    assert CodeEnv(memory_mb=64, timeout_s=2).limits.memory_mb == 64  # tightening is fine


def test_network_is_off_by_default_and_on_only_when_the_host_allows_it():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
            "except OSError as e:\n    print('blocked', e)")
    off = asyncio.run(run_python(code))
    on = asyncio.run(run_python(code, SandboxLimits(network=True)))
    server.close()
    assert "blocked" in off.stdout and off.network_isolated
    assert on.stdout.strip() == "connected" and not on.network_isolated, on


def test_refuses_to_run_without_bubblewrap_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        asyncio.run(run_python("print('ran unconfined')"))


def test_refuses_to_run_when_a_namespace_cannot_be_created():
    """Inside an outer bwrap with --disable-userns, the sandbox's own clone(CLONE_NEWUSER) fails (ENOSPC)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    probe = "import asyncio\nfrom envs.code.sandbox import run_python\nprint(asyncio.run(run_python('print(1)')))"
    done = subprocess.run(
        ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-user", "--uid", "1000",
         "--gid", "1000", "--disable-userns", "--chdir", repo, "--", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "SandboxUnavailable" in done.stderr, done.stderr[-2000:]
    assert "Creating new namespace failed" in done.stderr and "ran" not in done.stdout, done.stderr[-2000:]
