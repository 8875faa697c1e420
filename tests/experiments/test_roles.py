"""Split roles with real processes on loopback: a learner (`--role=learner`) and 2 actor processes
(`--role=actor`) train the search_r1 `test` variant through the gRPC trajectory queue and weight
stream. An actor SIGKILLed mid-run: the learner trains on the other; restarted, it rejoins at the
current weight version. The learner SIGKILLed: the actors wait; the learner rerun with the same
workdir resumes from its checkpoint, finishes, and the actors stop cleanly."""

import os
import re
import signal
import subprocess
import sys
import time

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = [sys.executable, "experiments/search_r1.py", "--config=experiments/configs/search_r1.py:test",
        "--config.sebulba.mode=async", "--config.eval_every=0", "--config.eval_tasks=0"]


class Proc:
    """A subprocess whose output goes to a file the test reads while it runs."""

    def __init__(self, tmp_path, name, args):
        self.log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
        with open(self.log_path, "w") as log:
            self.p = subprocess.Popen([*BASE, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 240.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.log()))
            if found:
                return found[-1]
            assert self.p.poll() is None, f"exited {self.p.returncode} before {pattern!r}:\n{self.log()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log()[-4000:]}")

    def step(self) -> int:
        steps = re.findall(r"\[train\s+(\d+)/", self.log())
        return int(steps[-1]) if steps else 0

    def wait_for_step(self, n: int, timeout: float = 240.0) -> int:
        self.wait_for(rf"\[train\s+{n}/", timeout)
        return self.step()

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)


@pytest.mark.slow
def test_learner_and_two_actor_processes_survive_kills_and_resume(tmp_path):
    queue_port, weights_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    workdir = tmp_path / "run"
    learner_args = ["--role=learner", f"--workdir={workdir}", f"--config.queue.port={queue_port}",
                    f"--config.remote.weights_port={weights_port}", "--config.checkpoint_every=1"]
    actor_args = ["--role=actor", f"--config.remote.queue=127.0.0.1:{queue_port}",
                  f"--config.remote.weights=127.0.0.1:{weights_port}", "--config.remote.wait_s=120"]
    procs = []
    try:
        learner = Proc(tmp_path, "learner", [*learner_args, "--config.total_steps=1000"])
        actors = [Proc(tmp_path, f"actor{i}", [*actor_args, f"--actor_id={i}"]) for i in range(2)]
        procs += [learner, *actors]
        for a in actors:
            a.wait_for(r"groups pushed")
        learner.wait_for_step(2)

        actors[1].kill()  # the learner keeps training on the other actor
        at_kill = learner.step()
        learner.wait_for_step(at_kill + 2)
        before_rejoin = learner.step()
        actors[1] = Proc(tmp_path, "actor1_again", [*actor_args, "--actor_id=1"])
        procs.append(actors[1])
        joined = int(actors[1].wait_for(r"actor1: weights version (\d+)").group(1))
        assert joined >= before_rejoin  # the learner's current weights, not the initial ones
        actors[1].wait_for(r"groups pushed")

        learner.kill()  # the actors wait for it (config.remote.wait_s)
        killed_at = learner.step()
        time.sleep(3)
        for a in actors:
            assert a.p.poll() is None, a.log()[-3000:]
        learner = Proc(tmp_path, "learner_again", [*learner_args, f"--config.total_steps={killed_at + 2}"])
        procs.append(learner)
        resumed = int(learner.wait_for(r"resumed from checkpoint at step (\d+)").group(1))
        assert 1 <= resumed <= killed_at
        learner.wait_for(r"done: ", timeout=300)
        assert learner.p.wait(timeout=60) == 0
        for a in actors:  # the learner closed its queue: each actor stops by itself, cleanly
            assert a.p.wait(timeout=120) == 0, a.log()[-3000:]
            assert "the learner closed its queue: stopping" in a.log()
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.p.kill()
