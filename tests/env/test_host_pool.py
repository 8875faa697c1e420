"""Several hosts behind one client (placement, failover), token auth and TLS, on loopback."""

import asyncio
import collections
import os
import shutil
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentic.env.client import EnvClient
from agentic.env.errors import EnvAuthError, EnvHostUnavailable, SessionLost
from agentic.env.host_config import HostConfig
from agentic.env.local_hosts import HostProcess, local_env_hosts


def test_placement_spreads_sessions_and_fails_over_to_healthy_hosts():
    a, b = HostProcess(["echo"], "--import", "envs").start(), HostProcess(["echo"], "--import", "envs").start()
    try:
        async def body():
            async with EnvClient([a.address, b.address]) as client:
                sessions = [(await client.open("echo", {"turns": 50}))[0] for _ in range(20)]
                spread = collections.Counter(s.host for s in sessions)
                a.kill()
                lost = 0
                for s in sessions:
                    try:
                        await client.step(s, "x")
                    except SessionLost:
                        lost += 1
                placed = [(await client.open("echo", {"turns": 2}))[0] for _ in range(10)]
                steps = [await client.step(s, "y") for s in placed]
                return spread, lost, collections.Counter(s.host for s in placed), steps, client.hosts()

        spread, lost, placed, steps, hosts = asyncio.run(body())
        assert spread[a.address] == spread[b.address] == 10  # least-loaded placement alternates
        assert lost == 10
        assert placed == {b.address: 10} and all(s.observation == "y" for s in steps)
        assert [h["healthy"] for h in hosts] == [False, True]
    finally:
        a.kill()
        b.kill()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate")
def test_token_auth_over_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    root = cert.read_bytes()
    with HostProcess(["echo"], "--import", "envs", "--token", "s3cret", "--tls-cert", str(cert), "--tls-key", str(key)) as host:
        async def attempt(**kw):
            async with EnvClient(host.address, connect_timeout_s=2, **kw) as client:
                session, _ = await client.open("echo")
                return (await client.step(session, "secure")).observation

        assert asyncio.run(attempt(token="s3cret", tls_root_cert=root)) == "secure"
        with pytest.raises(EnvAuthError, match="rejected this client's token"):
            asyncio.run(attempt(token="wrong", tls_root_cert=root))
        with pytest.raises(EnvHostUnavailable):
            asyncio.run(attempt(token="s3cret"))  # plaintext to a TLS port
        with grpc.secure_channel(host.address, grpc.ssl_channel_credentials(root)) as ch:  # health needs no token
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_frozen_host_gives_a_deadline_error_not_a_hang():
    import os
    import signal
    import time

    from agentic.env.errors import EnvDeadlineExceeded

    h = HostProcess(["faulty"], "--import", "tests.env.faulty_env").start()
    try:
        async def body():
            async with EnvClient(h.address, deadline_margin_s=0.5, connect_timeout_s=1.0) as client:
                session, _ = await client.open("faulty")
                os.kill(h.proc.pid, signal.SIGSTOP)  # the host process stops answering (its workers run on)
                t0 = time.monotonic()
                try:
                    with pytest.raises(EnvDeadlineExceeded, match="no answer from the host"):
                        await client.step(session, "hello")
                finally:
                    os.kill(h.proc.pid, signal.SIGCONT)
                return time.monotonic() - t0

        assert asyncio.run(body()) < 3.0  # the faulty env's 1 s deadline + 0.5 s margin
    finally:
        h.kill()


def test_no_reachable_host_is_a_typed_error():
    async def body():
        async with EnvClient("127.0.0.1:1", connect_timeout_s=0.3) as client:
            await client.open("echo")

    with pytest.raises(EnvHostUnavailable, match="no reachable host serves env 'echo'"):
        asyncio.run(body())


def test_hosts_refuse_a_network_address_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "AGENTIC_ENV_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "agentic.env.host", "--envs", "echo", "--bind", "0.0.0.0",
                             "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr
    for bind in ("0.0.0.0", "::", "10.1.2.3", "env-host.internal"):
        with pytest.raises(ValueError, match="--insecure"):
            HostConfig(envs=("echo",), bind=bind)
        HostConfig(envs=("echo",), bind=bind, token="t")
        HostConfig(envs=("echo",), bind=bind, insecure=True)
    for bind in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        HostConfig(envs=("echo",), bind=bind)


async def _step_once(address, **kw):
    async with EnvClient(address, connect_timeout_s=2, **kw) as client:
        session, _ = await client.open("echo")
        return (await client.step(session, "hi")).observation


def test_token_file_guards_a_host_on_every_interface(tmp_path):
    token = tmp_path / "env_token"
    token.write_text("per-run-secret\n")
    with HostProcess(["echo"], "--import", "envs", "--bind", "0.0.0.0", "--token-file", str(token)) as host:
        assert asyncio.run(_step_once(host.address, token="per-run-secret")) == "hi"
        with pytest.raises(EnvAuthError):
            asyncio.run(_step_once(host.address, token="guess"))
        assert "per-run-secret" not in " ".join(host.cmd)


def test_local_env_hosts_take_the_token_as_an_argument():
    with local_env_hosts(["echo"], token="launcher-secret", extra_args=["--import", "envs"]) as (address,):
        assert asyncio.run(_step_once(address, token="launcher-secret")) == "hi"
        with pytest.raises(EnvAuthError):
            asyncio.run(_step_once(address, token="other"))
