"""The env host and client against real servers on loopback: faults, garbage, backpressure, load.

Size: past 400 lines because most tests here share one module-scoped host (started once: a
host start costs seconds on 2 cores) and its helpers; a split would start it again per file.
"""

import asyncio
import dataclasses
import json
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from agentic.env.client import SESSION_LOST_METRIC, EnvClient
from agentic.env.errors import (
    EnvDeadlineExceeded,
    EnvResourceExhausted,
    EnvStepError,
    InvalidAction,
    InvalidEnvRequest,
    SessionLost,
    SessionNotFound,
)
from agentic.env.local_hosts import HostProcess
from agentic.env.proto import env_service_pb2 as pb
from agentic.env.proto import env_service_pb2_grpc as pb_grpc

FAULTY = ("--import", "tests.env.faulty_env")


@pytest.fixture(scope="module")
def host():
    with HostProcess(["echo", "faulty", "tiny", "leaky", "sluggish"], "--import", "envs", *FAULTY, "--workers", "faulty=2",
                     "--max-observation-bytes", "4096") as h:
        yield h


def run(coro_fn, address, **client_kw):
    async def main():
        async with EnvClient(address, **client_kw) as client:
            return await coro_fn(client)
    return asyncio.run(main())


def info(address) -> pb.InfoResponse:
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.EnvServiceStub(ch).Info(pb.InfoRequest(), timeout=5)


def restarts(address, env: str) -> int:
    return next(k.worker_restarts for k in info(address).envs if k.name == env)


def wait_restarts(address, env: str, at_least: int, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := restarts(address, env)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def test_echo_episode_and_metrics(host):
    async def body(client):
        session, obs = await client.open("echo", {"prompt": "hi", "turns": 2})
        assert obs.text == "hi"
        first = await client.step(session, "one")
        last = await client.step(session, "two")
        return first, last, await client.close(session), await client.close(session)

    first, last, metrics, again = run(body, host.address)
    assert (first.observation, first.done, last.observation, last.done, last.reward) == ("one", False, "two", True, 1.0)
    assert metrics == {"steps": 2.0} and again == {}


def test_garbage_gets_clear_errors_and_host_keeps_serving(host):
    async def body(client):
        session, _ = await client.open("echo", {"turns": 100})
        errors = {}
        for name, action in [("empty", ""), ("1MB", "x" * (1 << 20)), ("utf8", b"ok\xff\xfe")]:
            with pytest.raises(InvalidAction) as e:
                await client.step(session, action)
            errors[name] = str(e.value)
        wrong = dataclasses.replace(session, session_id="nonsense-id")
        with pytest.raises(SessionNotFound) as e:
            await client.step(wrong, "hello")
        errors["wrong id"] = str(e.value)
        with pytest.raises(InvalidEnvRequest, match="not served by this host|no host serves"):
            await client.open("no_such_env")
        ok = await client.step(session, "still fine")  # the session survived the garbage
        return errors, ok

    errors, ok = run(body, host.address)
    assert "empty" in errors["empty"]
    assert "1048576 bytes, over this host's limit" in errors["1MB"]
    assert "not valid UTF-8: byte 2" in errors["utf8"]
    assert "unknown session id" in errors["wrong id"]
    assert ok.observation == "still fine"
    # Raw gRPC (no client library): the same checks hold, with the error kind in trailing metadata.
    with grpc.insecure_channel(host.address) as ch:
        stub = pb_grpc.EnvServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Open(pb.OpenRequest(env="echo", task_json="{not json"))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_json is not valid JSON" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.Step(pb.StepRequest(session_id="x" * 10_000, action=b"a"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(e.value.trailing_metadata())["agentic-env-error-kind"] == str(pb.SESSION_NOT_FOUND)


def test_long_observation_is_truncated_with_flag(host):
    async def body(client):
        session, _ = await client.open("faulty")
        return await client.step(session, "big:10000"), await client.step(session, "big:10")

    long, short = run(body, host.address)
    assert len(long.observation) == 4096 and long.info["observation_truncated"]["original_bytes"] == 10000
    assert "observation_truncated" not in short.info


def test_env_exception_is_a_typed_error_naming_the_cause(host):
    async def body(client):
        session, _ = await client.open("faulty")
        with pytest.raises(EnvStepError, match="ValueError: step failed on purpose"):
            await client.step(session, "raise")
        with pytest.raises(SessionLost, match="its env failed"):
            await client.step(session, "after")
        with pytest.raises(EnvStepError, match="reset failed on purpose"):
            await client.open("faulty", {"reset": "raise"})

    run(body, host.address)


def test_sigkill_worker_mid_episode(host):
    async def body(client):
        sessions = [await client.open("faulty") for _ in range(6)]
        pids = {s.session_id: int((await client.step(s, "pid")).observation) for s, _ in sessions}
        assert len(set(pids.values())) == 2, "sessions should spread over both workers"
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.3)
        lost, alive = [], []
        for s, _ in sessions:
            try:
                await client.step(s, "after")
                alive.append(s)
            except SessionLost as e:
                lost.append(str(e))
        fresh, _ = await client.open("faulty")
        return pids, victim, lost, alive, await client.step(fresh, "new")

    pids, victim, lost, alive, new = run(body, host.address)
    assert len(lost) == sum(p == victim for p in pids.values()) and alive
    assert all(f"pid {victim}) was killed by signal SIGKILL" in m for m in lost), lost
    assert new.observation == "new"
    assert wait_restarts(host.address, "faulty", 1) >= 1


def test_hung_step_gets_deadline_exceeded_within_deadline(host):
    async def body(client):
        hung, _ = await client.open("faulty")
        neighbour, _ = await client.open("faulty")
        pid_h = (await client.step(hung, "pid")).observation
        # Steer the neighbour onto the same worker: open until one lands there.
        while (await client.step(neighbour, "pid")).observation != pid_h:
            neighbour, _ = await client.open("faulty")
        t0 = time.monotonic()
        with pytest.raises(EnvDeadlineExceeded, match="1s step deadline"):
            await client.step(hung, "sleep:30")  # awaits: cancellable, the worker stays
        async_elapsed = time.monotonic() - t0
        await asyncio.sleep(0.2)
        survived = (await client.step(neighbour, "still here")).observation
        before = restarts(host.address, "faulty")
        t0 = time.monotonic()
        with pytest.raises(EnvDeadlineExceeded):
            await client.step(neighbour, "block:30")  # blocks the worker's loop: it is recycled
        blocking_elapsed = time.monotonic() - t0
        after = wait_restarts(host.address, "faulty", before + 1)
        fresh, _ = await client.open("faulty")
        return async_elapsed, survived, blocking_elapsed, before, after, await client.step(fresh, "ok")

    async_elapsed, survived, blocking_elapsed, before, after, ok = run(body, host.address)
    assert 0.9 < async_elapsed < 2.0 and 0.9 < blocking_elapsed < 2.0  # the deadline is 1 s
    assert survived == "still here"
    assert after == before + 1 and ok.observation == "ok"


def test_max_sessions_answers_resource_exhausted_at_once(host):
    async def body(client):
        held = [await client.open("tiny") for _ in range(2)]
        t0 = time.monotonic()
        with pytest.raises(EnvResourceExhausted, match="max_sessions=2"):
            await client.open("tiny")
        elapsed = time.monotonic() - t0
        await client.close(held[0][0])
        again, _ = await client.open("tiny")  # a freed slot is reusable
        return elapsed, again

    elapsed, _ = run(body, host.address)
    assert elapsed < 1.0


def test_batched_steps_report_errors_in_place(host):
    async def body(client):
        a, _ = await client.open("echo", {"turns": 5})
        b, _ = await client.open("echo", {"turns": 5})
        return await client.step_many([(a, "x"), (b, ""), (dataclasses.replace(a, session_id="bogus"), "y")])

    results = run(body, host.address)
    assert results[0].observation == "x"
    assert isinstance(results[1], InvalidAction) and isinstance(results[2], SessionNotFound)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_health_and_reflection(host, version):
    with grpc.insecure_channel(host.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="agentic.env.v1.EnvService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        # The v1 and v1alpha messages are identical on the wire: only the method path differs.
        info_rpc = ch.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="agentic.env.v1.EnvService"),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol=f"grpc.reflection.{version}.ServerReflection")]
        listed, env_file, reflection_file = list(info_rpc(iter(requests), timeout=10))
        services = {s.name for s in listed.list_services_response.service}
        assert {"agentic.env.v1.EnvService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        assert env_file.file_descriptor_response.file_descriptor_proto
        assert reflection_file.file_descriptor_response.file_descriptor_proto, reflection_file


def test_thousand_concurrent_echo_episodes_none_lost(host):
    async def episode(client, i):
        session, _ = await client.open("echo", {"turns": 3})
        for t in range(3):
            step = await client.step(session, f"{i}:{t}")
            assert step.observation == f"{i}:{t}"
        await client.close(session)
        return step.done

    async def body(client):
        t0 = time.monotonic()
        done = await asyncio.gather(*(episode(client, i) for i in range(1000)), return_exceptions=True)
        return done, time.monotonic() - t0, dict(client.stats)

    done, elapsed, stats = run(body, host.address)
    assert done == [True] * 1000, [d for d in done if d is not True][:3]
    assert stats["opened"] == stats["closed"] == 1000 and stats["steps"] == 3000
    assert elapsed < 20, elapsed


def test_host_restart_reports_lost_sessions_and_places_new_ones():
    first = HostProcess(["echo"], "--import", "envs").start()
    port = first.port
    second = None
    try:
        async def body(client):
            nonlocal second
            sessions = [await client.open("echo", {"turns": 10}) for _ in range(3)]
            first.kill()
            with pytest.raises(SessionLost):
                await client.step(sessions[0][0], "a")
            second = HostProcess(["echo"], "--import", "envs", port=port).start()
            await client.refresh()
            errors = []
            for s, _ in sessions[1:]:
                with pytest.raises(SessionLost) as e:
                    await client.step(s, "b")
                errors.append(str(e.value))
            new, _ = await client.open("echo", {"turns": 10})
            return errors, new, await client.step(new, "c"), dict(client.stats)

        errors, new, step, stats = run(body, first.address)
        assert all("host restarted" in e for e in errors), errors
        assert new.host_id == second.host_id != first.host_id and step.observation == "c"
        assert stats["SessionLost"] == 3
    finally:
        first.kill()
        if second:
            second.kill()


def test_sigterm_drains_in_flight_steps_and_reaps_idle_sessions():
    h = HostProcess(["faulty"], *FAULTY, "--idle-timeout-s", "0.5").start()
    try:
        async def body(client):
            idle, _ = await client.open("faulty")
            await asyncio.sleep(1.5)
            with pytest.raises(SessionLost, match="reaped after 0.5s"):
                await client.step(idle, "late")
            busy, _ = await client.open("faulty")
            in_flight = asyncio.ensure_future(client.step(busy, "sleep:0.6"))
            await asyncio.sleep(0.2)
            h.proc.send_signal(signal.SIGTERM)
            step = await in_flight
            await asyncio.sleep(0.1)
            with pytest.raises(Exception) as e:
                await client.open("faulty")
            return step, e.value

        step, refused = run(body, h.address)
        assert step.observation == "sleep:0.6"
        assert type(refused).__name__ in ("HostDraining", "EnvHostUnavailable"), refused
        assert h.proc.wait(10) == 0
        assert any("draining" in line for line in h.output)
    finally:
        h.kill()


def test_leaking_worker_is_recycled_at_its_memory_limit(host):
    async def body(client):
        session, _ = await client.open("leaky")
        for action in ["leak:200"] + ["hi"] * 60:  # 200 MB: over the kind's memory_mb=150
            try:
                await client.step(session, action)
                await asyncio.sleep(0.1)
            except SessionLost as e:
                fresh, _ = await client.open("leaky")
                return str(e), await client.step(fresh, "ok")
        raise AssertionError("the leaking worker was not recycled")

    cause, ok = run(body, host.address)
    assert "exceeded the 150 MB limit of env 'leaky'" in cause and ok.observation == "ok"


def test_close_during_a_step_answers_the_step_at_once(host):
    async def body(client):
        session, _ = await client.open("sluggish")
        t0 = time.monotonic()
        step = asyncio.ensure_future(client.step(session, "sleep:5"))
        await asyncio.sleep(0.1)
        await client.close(session)
        with pytest.raises(SessionLost, match="closed while a step was running"):
            await step
        return time.monotonic() - t0

    assert run(body, host.address) < 2.0  # not the 5 s the step would have taken


def test_slow_steps_do_not_hold_back_other_sessions(host):
    async def body(client):
        slow = [(await client.open("sluggish"))[0] for _ in range(4)]
        fast, _ = await client.open("echo", {"turns": 100})
        pending = []
        for s in slow:  # one batch each: every batch of the client holds a slow step
            pending.append(asyncio.ensure_future(client.step(s, "sleep:2")))
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        for i in range(10):
            await client.step(fast, str(i))
        elapsed = time.monotonic() - t0
        await asyncio.gather(*pending)
        return elapsed

    assert run(body, host.address) < 1.2  # 10 quick steps while 4 slow (2 s) ones are in flight


def test_worker_dying_mid_frame_loses_its_sessions_and_is_restarted():
    async def body(client):
        before = next(k for k in info(host.address).envs if k.name == "faulty")
        session, _ = await client.open("faulty")
        pid = int((await client.step(session, "pid")).observation)
        t0 = time.monotonic()
        with pytest.raises(SessionLost) as e:
            await client.step(session, "tear")  # half a frame, then SIGKILL
        elapsed = time.monotonic() - t0
        await client.close(session)
        assert wait_restarts(host.address, "faulty", before.worker_restarts + 1) == before.worker_restarts + 1
        fresh, _ = await client.open("faulty")
        ok = await client.step(fresh, "new")
        await client.close(fresh)
        return before, pid, str(e.value), elapsed, ok, info(host.address)

    with HostProcess(["faulty"], *FAULTY, "--workers", "2") as host:
        before, pid, message, elapsed, ok, after = run(body, host.address)
    assert elapsed < 2.0, elapsed
    assert f"pid {pid}) wrote a corrupt frame" in message and "SIGKILL" in message, message
    assert ok.observation == "new"
    kind = next(k for k in after.envs if k.name == "faulty")
    assert pid not in kind.worker_pids and len(kind.worker_pids) == 2
    assert kind.open_sessions == before.open_sessions == 0


def test_huge_client_strings_get_the_right_code_and_a_bounded_message(host):
    big = "x" * 100_000  # 100 kB: echoed whole, it would overflow gRPC's status metadata
    with grpc.insecure_channel(host.address) as ch:
        stub = pb_grpc.EnvServiceStub(ch)
        session = stub.Open(pb.OpenRequest(env="echo", task_json='{"turns": 100}'), timeout=10).session_id
        other_instance = "0badcafe-" + "1" * 100_000
        code = grpc.StatusCode
        cases = [
            ("Open", pb.OpenRequest(env=big), code.INVALID_ARGUMENT),
            ("Open", pb.OpenRequest(env="echo", task_json=big), code.INVALID_ARGUMENT),
            ("Open", pb.OpenRequest(env="echo", env_kwargs_json=json.dumps({big: 1})), code.INVALID_ARGUMENT),
            ("Step", pb.StepRequest(session_id=big, action=b"a"), code.NOT_FOUND),
            ("Step", pb.StepRequest(session_id=other_instance, action=big.encode()), code.NOT_FOUND),
            ("Step", pb.StepRequest(session_id=big, action=b""), code.INVALID_ARGUMENT),
            ("Step", pb.StepRequest(session_id=session, action=b"\xff" * 100_000), code.INVALID_ARGUMENT),
            ("Step", pb.StepRequest(session_id=session, action=b"x" * 300_000), code.INVALID_ARGUMENT),
        ]
        for method, request, expected in cases:
            with pytest.raises(grpc.RpcError) as e:
                getattr(stub, method)(request, timeout=10)
            details = e.value.details() or ""
            assert e.value.code() == expected, (method, e.value.code(), details[:300])
            assert len(details.encode()) <= 1024 and "x" * 201 not in details and "1" * 201 not in details
            assert "agentic-env-error-kind" in dict(e.value.trailing_metadata())
        assert stub.Close(pb.CloseRequest(session_id=big), timeout=10) == pb.CloseResponse()
        ops = [pb.Op(open=r) for _, r, _ in cases[:3]] + [pb.Op(step=r) for _, r, _ in cases[3:]]
        results = [r for resp in stub.Batch(pb.BatchRequest(ops=ops), timeout=10) for r in resp.results]
        assert sorted(r.index for r in results) == list(range(len(ops)))
        for r in results:
            assert r.HasField("error") and len(r.error.message) <= 4000 and "x" * 201 not in r.error.message
        assert stub.Step(pb.StepRequest(session_id=session, action=b"fine"), timeout=10).observation == "fine"


def test_close_says_when_the_worker_died_after_the_last_step(host):
    async def body(client):
        session, _ = await client.open("faulty")
        pid = int((await client.step(session, "pid")).observation)
        os.kill(pid, signal.SIGKILL)  # after the episode's last step, before its close
        await asyncio.sleep(0.3)
        with grpc.insecure_channel(host.address) as ch:  # raw: the host says why in CloseResponse.lost
            raw = pb_grpc.EnvServiceStub(ch).Close(pb.CloseRequest(session_id=session.session_id), timeout=5)
        lost = await client.close(session)
        normal, _ = await client.open("echo", {"turns": 1})
        await client.step(normal, "a")
        return raw, lost, await client.close(normal), await client.close(normal)

    raw, lost, metrics, again = run(body, host.address)
    assert "was killed by signal SIGKILL" in raw.lost, raw
    assert lost == {SESSION_LOST_METRIC: 1.0}
    assert metrics == {"steps": 1.0} and again == {}  # closing twice is not a loss
