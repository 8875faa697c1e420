"""The whole Sebulba loop with real processes: the `test` variant of experiments/search_r1.py.

One run is killed with SIGKILL after its first checkpoint; rerunning the same
command resumes from it and finishes. Env hosts must not outlive the trainer.
"""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(workdir, *overrides):
    return [sys.executable, "experiments/search_r1.py", "--config=experiments/configs/search_r1.py:test",
            f"--workdir={workdir}", *overrides]


def env_host_pids(parent: int) -> set[int]:
    """Env hosts started by `parent` (other runs on the machine may have their own)."""
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "agentic.env.host"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


@pytest.mark.slow
def test_killed_run_resumes_and_finishes(tmp_path):
    workdir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("XLA_FLAGS", None)  # the experiment runs on the real single CPU device

    # First run: kill it (SIGKILL: no cleanup at all) once step 1 is checkpointed.
    proc = subprocess.Popen(command(workdir, "--config.total_steps=2"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[train    1/2]"):
                break
            assert time.monotonic() < deadline, "no training step within 240 s:\n" + "".join(lines[-30:])
        else:
            pytest.fail("run ended before step 1:\n" + "".join(lines[-30:]))
        hosts = env_host_pids(proc.pid)
        assert hosts, "the trainer started no env host"
        ckpt = os.path.join(workdir, "checkpoints")
        while not any(d.isdigit() for d in os.listdir(ckpt)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    # The env host subprocess follows its parent (PDEATHSIG), SIGKILL included.
    end = time.monotonic() + 30
    while any(alive(p) for p in hosts) and time.monotonic() < end:
        time.sleep(0.5)
    assert not any(alive(p) for p in hosts), "env host outlived the killed trainer"

    # Second run, same command: resumes from the checkpoint and finishes. Its actors reach the
    # learner's trajectory queue over gRPC (as actors on other hosts would).
    out = subprocess.run(command(workdir, "--config.total_steps=2", "--config.queue.grpc=True"), cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "resumed from checkpoint at step 1" in log
    assert "[train    2/2]" in log and "[train    1/2]" not in log
    done = json.loads(log.split("done: ", 1)[1].splitlines()[0])
    assert done["steps"] == 2 and "eval_em_end" in done

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("reward", "em", "turns", "search_calls", "model_tokens_per_s", "learner_tokens_per_s", "policy_lag", "env_failures", "learner/loss"):
        assert any(key in r for r in train), key
    assert any(r["split"] == "eval" and r["step"] == 2 for r in rows)
    assert os.path.exists(os.path.join(workdir, "curves.png"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())[-1] == 2

    # The eval script reads the checkpoint and reports EM per dataset (here: per hop count).
    out = subprocess.run([sys.executable, "experiments/eval_search_r1.py",
                          "--config=experiments/configs/search_r1.py:test", f"--workdir={workdir}", "--limit=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "synthetic-1hop" in out.stdout and "\nstep 2 " in out.stdout  # the table's header and row
    report = json.load(open(os.path.join(workdir, "eval_step2.json")))
    assert report["datasets"]["synthetic-1hop"]["episodes"] == 2.0
