"""launch_tpu.sh: --dry-run prints the exact gcloud commands; a run with a fake gcloud runs those."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import stat
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_tpu.sh"
FLAGS = ["--name", "rl-test", "--zone", "us-central2-b", "--project", "proj", "--workdir", "gs://bkt/run1",
         "--env-hosts", "2", "--sglang-urls", "http://10.1.0.5:30000,http://10.1.0.6:30000"]  # fmt: skip
EXTRA = ["--", "--config.learner.lr=2e-6", "--config.note=two words"]

# A stand-in for gcloud: logs its argv as one JSON line; describes find nothing except IPs.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if "describe" in args:
    if any("networkIP" in a for a in args):
        print("10.0.0." + args[3].rsplit("-", 1)[1])
        sys.exit(0)
    if any("networkEndpoints" in a for a in args):  # the TPU VM's workers
        print("10.0.1.1;10.0.1.2")
        sys.exit(0)
    sys.exit(1)  # not found: the launcher creates it
"""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "gcloud.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(log), TMPDIR=str(tmp_path))
    return env, log


def launch(env, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def printed_commands(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert all(line.startswith("+ ") for line in lines), stdout
    return [shlex.split(line[2:].removesuffix(" >/dev/null 2>&1")) for line in lines]


def find(commands, *prefix):
    return [c for c in commands if c[: len(prefix)] == list(prefix)]


def option(command, name):
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"{name}="))


def test_dry_run_prints_the_whole_flow_and_runs_nothing(fake_gcloud, tmp_path):
    env, log = fake_gcloud
    result = launch(env, "--dry-run", *FLAGS, *EXTRA)
    assert result.returncode == 0, result.stderr
    commands = printed_commands(result.stdout)
    assert not log.exists(), "a dry run called gcloud"
    assert not list(tmp_path.glob("*.tar.gz")), "a dry run built the tarball"

    (create,) = find(commands, "gcloud", "compute", "tpus", "tpu-vm", "create", "rl-test")
    # the recipe's slice (qwen2_5_7b_tpu: tpu.topology v5p:2x2x4, 16 chips = v5p-32) and its runtime
    assert {"--zone=us-central2-b", "--project=proj", "--accelerator-type=v5p-32",
            "--version=v2-alpha-tpuv5"} <= set(create)  # fmt: skip
    assert "--spot" not in create
    assert find(commands, "gcloud", "compute", "tpus", "tpu-vm", "describe", "rl-test")  # reuse check

    scp, _token_scp = find(commands, "gcloud", "compute", "tpus", "tpu-vm", "scp")
    assert "--worker=all" in scp and scp[6] == "rl-test:/tmp/agentic.tar.gz"
    install, train = find(commands, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "rl-test")
    assert "--worker=all" in install and "--worker=all" in train
    install_cmd = option(install, "--command")
    assert ".venv/bin/pip install -q --no-deps -r requirements.txt" in install_cmd
    assert "pip install -q --no-deps -r requirements-tpu.txt" in install_cmd  # libtpu, pinned

    creates = find(commands, "gcloud", "compute", "instances", "create")
    assert [c[4] for c in creates] == ["rl-test-env-1", "rl-test-env-2"]
    starts = [
        c for c in find(commands, "gcloud", "compute", "ssh") if "agentic.env.host" in option(c, "--command")
    ]
    assert [c[3] for c in starts] == ["rl-test-env-1", "rl-test-env-2"]
    assert "python -m agentic.env.host --port 50051 --envs search_r1 --import envs.search --bind 0.0.0.0 --token-file env_token" in option(
        starts[0], "--command"
    )

    # One token per run: generated locally (mode 600), copied as a file to the TPU workers and to each env
    # host VM before its host starts, handed to the trainer in its environment; the secret is never printed.
    (generate,) = [c for c in commands if c[:2] == ["bash", "-c"] and "/dev/urandom" in c[2]]
    assert "umask 077" in generate[2] and generate[2].endswith(f"> {tmp_path}/agentic-rl-test.env-token")
    copies = [c for c in commands if "scp" in c and f"{tmp_path}/agentic-rl-test.env-token" in c]
    destinations = [a for c in copies for a in c if a.endswith(":agentic/env_token")]
    assert destinations == ["rl-test:agentic/env_token", "rl-test-env-1:agentic/env_token",
                            "rl-test-env-2:agentic/env_token"]  # fmt: skip
    assert "--worker=all" in copies[0] and commands.index(copies[2]) < commands.index(starts[1])

    train_cmd = option(train, "--command")
    prefix = 'cd ~/agentic && AGENTIC_ENV_TOKEN="$(cat env_token)" '
    assert train_cmd.startswith(prefix)
    argv = shlex.split(train_cmd.removeprefix(prefix))
    assert argv == [
        ".venv/bin/python", "experiments/search_r1.py",
        "--config=experiments/configs/search_r1.py:qwen2_5_7b_tpu", "--workdir=gs://bkt/run1",
        "--config.distributed=True", "--role=all",
        "--config.env.hosts=IP-OF-rl-test-env-1:50051,IP-OF-rl-test-env-2:50051",
        "--config.generator.backend=sglang",
        "--config.generator.sglang_urls=http://10.1.0.5:30000,http://10.1.0.6:30000",
        "--config.learner.lr=2e-6", "--config.note=two words",
    ]  # fmt: skip
    assert commands[-1] == train  # training starts last, after the env hosts


def test_actor_vms_run_actor_processes_feeding_learners_on_the_tpu_workers(fake_gcloud):
    env, _ = fake_gcloud
    flags = [f for f in FLAGS if not f.startswith("--sglang") and not f.startswith("http")]
    result = launch(env, "--dry-run", *flags, "--actor-vms", "2", "--", "--config.learner.lr=2e-6")
    assert result.returncode == 0, result.stderr
    commands = printed_commands(result.stdout)
    creates = [c[4] for c in find(commands, "gcloud", "compute", "instances", "create")]
    assert creates == ["rl-test-env-1", "rl-test-env-2", "rl-test-actor-0", "rl-test-actor-1"]
    assert find(commands, "gcloud", "compute", "tpus", "tpu-vm", "describe", "rl-test",
                "--zone=us-central2-b", "--project=proj", "--format=value(networkEndpoints[].ipAddress)")
    actors = [c for c in find(commands, "gcloud", "compute", "ssh") if "--role=actor" in option(c, "--command")]
    assert [c[3] for c in actors] == ["rl-test-actor-0", "rl-test-actor-1"]
    for i, c in enumerate(actors):
        argv = shlex.split(option(c, "--command").split(" nohup ", 1)[1].split(" > actor.log")[0])
        assert argv[:4] == [".venv/bin/python", "experiments/search_r1.py",
                            "--config=experiments/configs/search_r1.py:qwen2_5_7b_tpu", "--role=actor"]
        assert f"--actor_id={i}" in argv and "--config.learner.lr=2e-6" in argv
        assert "--config.remote.queue=IP-OF-rl-test-worker-0:50060" in argv
        assert "--config.remote.weights=IP-OF-rl-test-worker-0:50061" in argv
        assert "--config.env.hosts=IP-OF-rl-test-env-1:50051,IP-OF-rl-test-env-2:50051" in argv
    _, train = find(commands, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "rl-test")
    argv = shlex.split(option(train, "--command").split('"$(cat env_token)" ', 1)[1])
    assert argv[4:9] == ["--config.distributed=True", "--role=learner", "--config.remote.bind=0.0.0.0",
                         "--config.queue.port=50060", "--config.remote.weights_port=50061"]
    assert commands.index(actors[-1]) < commands.index(train)  # actors wait for their learner


def test_real_run_executes_exactly_the_printed_commands(fake_gcloud, tmp_path):
    env, log = fake_gcloud
    dry = printed_commands(launch(env, "--dry-run", *FLAGS, *EXTRA).stdout)
    result = launch(env, *FLAGS, *EXTRA)
    assert result.returncode == 0, result.stderr
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    expected = [c[1:] for c in dry if c[0] == "gcloud"]
    expected = [[a.replace("IP-OF-rl-test-env-1", "10.0.0.1").replace("IP-OF-rl-test-env-2", "10.0.0.2")
                 for a in c] for c in expected]  # fmt: skip
    assert ran == expected
    token = (tmp_path / "agentic-rl-test.env-token").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert (tmp_path / "agentic-rl-test.env-token").stat().st_mode & 0o777 == 0o600
    assert token not in result.stdout + result.stderr + log.read_text()
    again = launch(env, *FLAGS, *EXTRA)
    assert again.returncode == 0 and (tmp_path / "agentic-rl-test.env-token").read_text() != token  # per run
    with tarfile.open(tmp_path / "agentic-rl-test.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"launch_tpu.sh", "requirements.txt", "agentic/transport/queue.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) for n in names)


def test_the_recipe_sizes_the_slice_and_the_env_host_pool(fake_gcloud):
    env, _ = fake_gcloud
    result = launch(env, "--dry-run", "--workdir", "gs://b/r", "--name", "rl", "--config", "qwen2_5_3b_tpu", "--spot")
    assert result.returncode == 0, result.stderr
    commands = printed_commands(result.stdout)
    (create,) = find(commands, "gcloud", "compute", "tpus", "tpu-vm", "create", "rl")
    assert {"--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", "--zone=us-east5-a", "--spot"} <= set(create)
    # 4 hosts x 64 concurrent groups x 5 episodes = 1,280 sessions; 1,024 per env host: 2 env VMs
    assert [c[4] for c in find(commands, "gcloud", "compute", "instances", "create")] == ["rl-env-1", "rl-env-2"]
    assert "1280 concurrent episodes" in result.stderr

    queued = printed_commands(launch(env, "--dry-run", "--workdir", "gs://b/r", "--name", "rl", "--queued").stdout)
    (request,) = find(queued, "gcloud", "compute", "tpus", "queued-resources", "create", "rl")
    assert {"--node-id=rl", "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5"} <= set(request)
    assert not find(queued, "gcloud", "compute", "tpus", "tpu-vm", "create")


def test_env_hosts_zero_creates_no_cpu_vms(fake_gcloud):
    env, _ = fake_gcloud
    result = launch(env, "--dry-run", "--workdir", "gs://b/r", "--env-hosts=0", "--config", "qwen2_5_3b_tpu")
    commands = printed_commands(result.stdout)
    assert not find(commands, "gcloud", "compute", "instances", "create")
    train = option(commands[-1], "--command")
    assert "--config=experiments/configs/search_r1.py:qwen2_5_3b_tpu" in train
    assert "env.hosts" not in train and "sglang" not in train
    assert "env_token" not in result.stdout and "AGENTIC_ENV_TOKEN" not in result.stdout  # local hosts: loopback


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir", "gs://b/r", "--accelerator", "v4-8"], "unknown flag '--accelerator' (see --help)"),
        (["--workdir", "gs://b/r", "extra"], "unknown flag 'extra'"),
        (["--env-hosts", "2"], "--workdir is required"),
        (["--workdir", "gs://b/r", "--env-hosts", "two"], "--env-hosts 'two' must be a non-negative integer"),
        (["--workdir", "gs://b/r", "--sglang-urls", "10.0.0.1:30000"], "is not an http(s)://HOST:PORT URL"),
        (["--workdir"], "--workdir needs a value"),
    ],
)
def test_bad_flags_are_rejected_with_a_clear_message(fake_gcloud, args, message):
    env, log = fake_gcloud
    result = launch(env, "--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == "" and not log.exists()


def test_help(fake_gcloud):
    result = launch(fake_gcloud[0], "-h")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: ./launch_tpu.sh") and "--dry-run" in result.stdout


def test_actor_vms_get_a_transport_token_and_a_firewall_for_the_run(fake_gcloud, tmp_path):
    """Issue 31: the queue and weight stream listen on 0.0.0.0 for actor VMs, so they get a per-run token
    (a file read remotely into $AGENTIC_TRANSPORT_TOKEN, never printed) and ports open to the run's VMs only."""
    env, log = fake_gcloud
    flags = [f for f in FLAGS if not f.startswith("--sglang") and not f.startswith("http")]
    result = launch(env, *flags, "--actor-vms", "1", "--", "--config.learner.lr=2e-6")
    assert result.returncode == 0, result.stderr
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    token = (tmp_path / "agentic-rl-test.transport-token").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token) and token not in result.stdout + result.stderr + log.read_text()
    assert (tmp_path / "agentic-rl-test.transport-token").stat().st_mode & 0o777 == 0o600
    copies = [a for c in ran if "scp" in c and str(tmp_path / "agentic-rl-test.transport-token") in c for a in c
              if a.endswith(":agentic/transport_token")]
    assert copies == ["rl-test:agentic/transport_token", "rl-test-actor-0:agentic/transport_token"]
    dry = printed_commands(launch(env, "--dry-run", *flags, "--actor-vms", "1").stdout)
    starts = [c for c in dry if "ssh" in c and any("search_r1.py" in a for a in c)]
    assert len(starts) == 2 and all(
        any(a.startswith('--command=cd ~/agentic && AGENTIC_TRANSPORT_TOKEN="$(chmod 600 transport_token && cat '
                         'transport_token)" ') for a in c) for c in starts)
    rules = [c for c in ran if c[:3] == ["compute", "firewall-rules", "create"]]
    assert [c[3] for c in rules] == ["agentic-rl-test-allow", "agentic-rl-test-deny"]
    assert "--source-tags=agentic-rl-test" in rules[0] and "--source-ranges=0.0.0.0/0" in rules[1]
    assert all("--target-tags=agentic-rl-test" in c and "--rules=tcp:50051,tcp:50060,tcp:50061" in c for c in rules)
    tagged = [c[3] for c in ran if c[:3] == ["compute", "instances", "add-tags"]]
    assert tagged == ["rl-test-env-1", "rl-test-env-2", "rl-test-actor-0"]
    assert ["compute", "tpus", "tpu-vm", "update", "rl-test", "--add-tags=agentic-rl-test"] == \
        next(c for c in ran if c[:4] == ["compute", "tpus", "tpu-vm", "update"])[:6]
