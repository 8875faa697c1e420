"""The ecosystem adapters through a real env host subprocess, with the real packages: reasoning-gym,
GEM, gymnasium, TextArena (one player; two with a fixed opponent; self-play), OpenEnv in process and an
OpenEnv server process on loopback. Each kind also runs a third-party env that raises: the session
fails with EnvStepError naming the exception, and the host serves the next episode."""

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request

import pytest

from agentic.env.errors import EnvStepError
from agentic.env.local_hosts import HostProcess, free_port
from agentic.env.workers import REPO_ROOT
from agentic.process import die_with_parent
from tests.env_client import run_with_client as run

ADAPTERS = ("reasoning_gym", "gym", "textarena", "openenv")
KINDS = ["reasoning_gym", "gem", "gymnasium", "textarena", "openenv", "openenv_remote"]


@pytest.fixture(scope="module")
def openenv_server():
    """A real OpenEnv server process (OpenEnv's FastAPI app under uvicorn), as OpenEnv deploys one."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "envs.ecosystem.examples:openenv_app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO_ROOT,
                            preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the OpenEnv server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    proc.kill()


@pytest.fixture(scope="module")
def host():
    imports = [arg for a in ADAPTERS for arg in ("--import", f"envs.ecosystem.{a}")]
    with HostProcess(KINDS, *imports, startup_timeout_s=120) as h:
        yield h


async def play(client, env, task, kwargs, actions):
    session, obs = await client.open(env, task, kwargs)
    steps = []
    for action in actions:
        steps.append(await client.step(session, action))
        if steps[-1].done:
            break
    metrics = await client.close(session)
    return obs, steps, metrics


async def raises(client, env, task, kwargs, action):
    session, _ = await client.open(env, task, kwargs)
    with pytest.raises(EnvStepError) as e:
        await client.step(session, action)
    return str(e.value)


def test_reasoning_gym_datasets_score_through_the_host(host):
    async def body(client):
        import reasoning_gym

        entries = reasoning_gym.create_dataset("basic_arithmetic", seed=1, size=8)
        results = await asyncio.gather(*(
            play(client, "reasoning_gym", {"dataset": "basic_arithmetic", "seed": 1, "size": 8, "index": i}, {},
                 [f"<answer>{entries[i]['answer'] if i % 2 == 0 else 'no idea'}</answer>"]) for i in range(8)))
        error = await raises(client, "reasoning_gym", {"dataset": "raising_division", "index": 1},
                             {"imports": ["tests.envs.ecosystem.rg_raising"]}, "<answer>1</answer>")
        after = await play(client, "reasoning_gym", {"dataset": "basic_arithmetic", "seed": 1, "size": 8, "index": 0},
                           {}, [f"<answer>{entries[0]['answer']}</answer>"])
        return entries, results, error, after

    entries, results, error, after = run(host.address, body)
    for i, (obs, steps, metrics) in enumerate(results):
        assert obs.text.startswith(entries[i]["question"]) and "<answer>" in obs.text
        assert steps[-1].done and steps[-1].reward == (1.0 if i % 2 == 0 else 0.0)
        assert metrics["score"] == steps[-1].reward
    assert "ZeroDivisionError" in error and "reasoning_gym" in error
    assert after[1][-1].reward == 1.0  # the host lives on


def test_gem_and_gymnasium_text_envs_through_the_host(host):
    async def body(client):
        session, obs = await client.open("gem", {"seed": 7}, {"env_id": "game:GuessTheNumber-v0-easy"})
        low, high, steps = 1, 10, []
        while True:  # binary search, reading GEM's own hints
            guess = (low + high) // 2
            step = await client.step(session, f"\\boxed{{{guess}}}")
            steps.append(step)
            if step.done:
                break
            if "higher" in step.observation:
                low = guess + 1
            else:
                high = guess - 1
        gem_metrics = await client.close(session)
        countdown = await play(client, "gymnasium", {"seed": 3}, {"env_id": "envs.ecosystem.examples:CountdownText"},
                               [str(n) for n in range(9, -1, -1)])
        start = countdown[0].info["env_info"]["start"]
        countdown = await play(client, "gymnasium", {"seed": 3}, {"env_id": "envs.ecosystem.examples:CountdownText"},
                               [str(n) for n in range(start - 1, -1, -1)])
        error = await raises(client, "gymnasium", {}, {"env_id": "tests.envs.ecosystem.gym_raising:RaisingText"},
                             "raise")
        return obs, steps, gem_metrics, countdown, error

    obs, steps, gem_metrics, (cd_obs, cd_steps, cd_metrics), error = run(host.address, body)
    assert "Guess The Number" in obs.text
    assert steps[-1].done and steps[-1].reward > 0 and len(steps) <= 4
    assert gem_metrics["turns"] == len(steps)
    assert [s.reward for s in cd_steps] == [1.0] * len(cd_steps) and cd_steps[-1].done
    assert cd_metrics["return"] == len(cd_steps) == cd_obs.info["env_info"]["start"]
    assert "KeyError" in error and "RaisingText was told to raise" in error


def test_textarena_fixed_opponent_self_play_and_a_raising_game(host):
    moves = [f"[{i}]" for i in (4, 0, 2, 6, 8, 1, 3, 5, 7)]

    async def body(client):
        fixed = await asyncio.gather(*(play(client, "textarena", {"seed": s},
                                            {"env_id": "TicTacToe-v0-raw", "num_players": 2}, moves)
                                       for s in range(4)))
        replay = await play(client, "textarena", {"seed": 0}, {"env_id": "TicTacToe-v0-raw", "num_players": 2}, moves)
        session, first = await client.open("textarena", {"seed": 1},
                                           {"env_id": "TicTacToe-v0-raw", "num_players": 2, "opponent": "self"})
        second = await client.step(session, "[4]")
        third = await client.step(session, "[0]")
        await client.close(session)
        error = await raises(client, "textarena", {}, {"env_id": "tests.envs.ecosystem.ta_raising:RaisingGame"},
                             "raise")
        single = await play(client, "textarena", {}, {"env_id": "tests.envs.ecosystem.ta_raising:RaisingGame"},
                            ["hello"])
        return fixed, replay, (first, second, third), error, single

    fixed, replay, (first, second, third), error, single = run(host.address, body)
    for obs, steps, metrics in fixed:
        assert "Tic Tac Toe" in obs.text and "You are Player 0" in obs.text
        last = steps[-1]
        assert last.done and last.reward in (-1.0, 0.0, 1.0) and set(last.info["rewards"]) == {"0", "1"}
        assert last.reward == last.info["rewards"]["0"] and metrics["moves"] == len(steps)
        assert "[Player 1]" in steps[0].observation  # the fixed opponent moved between the policy's turns
    assert [s.observation for s in replay[1]] == [s.observation for s in fixed[0][1]]  # seeded: deterministic
    assert first.text.startswith("[You are Player 0]")
    assert second.observation.startswith("[You are Player 1]") and "[Player 0] [4]" in second.observation
    assert third.observation.startswith("[You are Player 0]") and "[Player 1] [0]" in third.observation
    assert "IndexError" in error and "RaisingGame was told to raise" in error
    assert single[1][0].observation == "[Player 0] hello"


def test_openenv_in_process_and_a_remote_server(host, openenv_server):
    words = {f"Reverse: {w}": w[::-1] for w in ("alpha", "bravo", "delta", "kilo", "lima", "oscar", "tango", "zulu")}

    async def solve(client, env, kwargs, seed):
        session, obs = await client.open(env, {"seed": seed}, kwargs)
        steps, text = [], obs.text
        while not steps or not steps[-1].done:
            steps.append(await client.step(session, words[text]))
            text = steps[-1].observation
        return obs, steps, await client.close(session)

    local = {"environment": "envs.ecosystem.examples:ReverseEnvironment", "env_kwargs": {"rounds": 3}}
    remote = {"base_url": openenv_server}

    async def body(client):
        results = await asyncio.gather(*(solve(client, env, kw, seed) for env, kw in
                                         [("openenv", local), ("openenv_remote", remote)] for seed in range(3)))
        errors = [await raises(client, env, {"seed": 1}, kw, "raise")
                  for env, kw in [("openenv", local), ("openenv_remote", remote)]]
        after = await solve(client, "openenv_remote", remote, 5)
        session, _ = await client.open("openenv_remote", {"seed": 1}, remote)
        wrong = await client.step(session, "not the word")
        with pytest.raises(EnvStepError) as dead:
            await client.open("openenv_remote", {}, {"base_url": f"http://127.0.0.1:{free_port()}"})
        return results, errors, after, wrong, str(dead.value)

    results, errors, after, wrong, dead = run(host.address, body)
    for i, (obs, steps, metrics) in enumerate(results):
        assert obs.text.startswith("Reverse: ")
        assert [s.reward for s in steps] == [1.0] * (3 if i < 3 else 2) and steps[-1].done
        assert metrics["return"] == len(steps)
    assert [o.text for o, _, _ in results[:3]] == [o.text for o, _, _ in results[3:]]  # same env, same seeds
    assert all("told to raise" in e for e in errors), errors
    assert after[2]["return"] == 2.0 and wrong.reward == 0.0 and wrong.info["env_info"] == {"right": False}
    assert "openenv_remote" in dead and ("Connect" in dead or "refused" in dead.lower())


@pytest.mark.parametrize("kind", ["reasoning_gym", "gem", "gymnasium", "textarena", "openenv"])
def test_adapters_pass_the_conformance_suite(kind):
    """Garbage actions get observations, episodes end on their own, metrics are numbers
    (`agentic.env.conformance`, on each kind's example task)."""
    import importlib

    from agentic.env.conformance import check_env
    from agentic.env.registry import get_spec

    for adapter in ADAPTERS:
        importlib.import_module(f"envs.ecosystem.{adapter}")
    assert asyncio.run(check_env(get_spec(kind))) == []
