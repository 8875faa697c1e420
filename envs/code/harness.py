"""The program that runs inside the sandbox: sets limits, runs the model's code, then the tests.

It is not imported by the framework: `sandbox.py` passes this file's source to `python -I -S -c`
inside bubblewrap. Arguments: memory, CPU, file-size, open-file and process limits, and a flag
saying whether a test file follows (`tests.py`, read-only next to `main.py`).

Pass evidence (with tests): the sandbox writes a per-run random nonce on stdin; this harness reads
it before any model code runs, replaces stdin with /dev/null and keeps the nonce only in the main
thread's frame. The model's code and then the tests run in a second thread (so no frame the code
can walk up to holds the nonce); only when both finished without an exception does the main thread
write the nonce to fd 3 (a write-only file the sandbox reads afterwards) and `os._exit(0)` (no
atexit handler or excepthook runs). Exiting early (`os._exit`, `sys.exit`, a signal) therefore
writes no nonce. An audit hook, which Python code cannot remove, refuses the ways to read another
frame's locals or raw memory (`gc` object walks, `sys._current_frames`, tracing, ctypes, `/proc`
files, exec'ing a process without the hook).
"""

import os
import sys

_DENIED_EVENTS = frozenset({
    "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "subprocess.Popen", "os.symlink", "os.link", "os.chroot"})


def _audit(event, args):
    """Refuses introspection that could reach the nonce (runs only when tests follow)."""
    if event in _DENIED_EVENTS or event.startswith("ctypes.") or (
            event == "import" and args[0] in ("ctypes", "_ctypes")):
        raise PermissionError(f"the code sandbox does not allow {event} in a tested run")
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if os.path.realpath(path).startswith("/proc"):
            raise PermissionError(f"the code sandbox does not allow reading {path} in a tested run")


def _run_sources(sources, outcome):
    """Runs the model's code, then the tests, in one namespace; records how it ended.

    `finished` is a fast local (a frame's locals can be read, not rewritten, without tracing), and
    `outcome` is written last, so code that raises after editing `outcome` still counts as failed.
    """
    import traceback
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    finished, stage, exit_code = False, "main.py", None
    try:
        for stage, source in sources:
            exec(compile(source, stage, "exec"), namespace)  # noqa: S102 - this IS the sandbox
        finished = True
    except SystemExit as e:
        exit_code = e.code if e.code is not None else 0
    except BaseException:  # noqa: BLE001 - report whatever the code raised
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001,S110 - the code may have closed or replaced it
            pass
    outcome.clear()
    outcome.update(ok=finished, exit=exit_code, stage=stage)


def main():
    import resource
    import threading
    mem, cpu, fsize, nofile, nproc, tested, evidence = (int(a) for a in sys.argv[1:8])
    write, exit_now = os.write, os._exit
    write(evidence, b"started\n")
    if not tested:
        os.close(evidence)
    nonce = b""
    if tested:
        while chunk := os.read(0, 64):
            nonce += chunk
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
                       (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_NPROC, nproc),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    sources = [("main.py", open("main.py", encoding="utf-8").read())]
    if tested:
        sources.append(("tests.py", open("tests.py", encoding="utf-8").read()))
        sys.addaudithook(_audit)
    sys.argv = ["main.py"]
    outcome = {}
    worker = threading.Thread(target=_run_sources, args=(sources, outcome), name="main.py")
    del sources
    worker.start()
    worker.join()
    ok, exit_code = outcome.get("ok") is True, outcome.get("exit")
    if tested and ok:
        write(evidence, nonce)
        exit_now(0)
    if tested and exit_code is not None:
        write(2, f"\n[the program exited (SystemExit({exit_code!r})) in {outcome.get('stage')}: "
                 f"the tests did not all run]\n".encode())
        exit_now(1)
    if ok:
        exit_now(0)
    if isinstance(exit_code, int):
        exit_now(exit_code & 0xFF)
    if exit_code is not None:
        write(2, f"{exit_code}\n".encode())
    exit_now(1)

main()
