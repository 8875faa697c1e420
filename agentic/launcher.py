"""The Sebulba launcher: env hosts, generator, actors, trajectory queue and learner.

`train(config, workdir, experiment)` reads top to bottom in stages (env hosts, devices,
model, tasks, generator, cold start, learner, queue, actors, loop). It knows no env: the
experiment (`agentic.core.Experiment`) gives the tasks, the env kwargs, the cold start's
scripted policy and the metrics to show; `config.env` names the env and the modules that
register it. What runs where:

    main thread ── learner: queue.get ─► update ─► weight sync ─► log / checkpoint
    actor thread ── asyncio: Actor ── episodes ──► EnvClient (gRPC) ──► env host subprocesses
                                        └────────► Generator (JaxEngine thread / SGLang HTTP)
                    finished groups ──► TrajectoryQueue (in process, or gRPC)

In "async" mode actors never wait for the learner (bounded by the queue's
capacity and the max policy lag); in "sync" mode they collect exactly one
batch, then pause while the learner trains (verl style), for comparison.
Rerunning with the same workdir resumes from the last checkpoint.

Size: past 400 lines because `train` is meant to be read top to bottom as the loop; the
builders it calls are small functions here, and everything with a job of its own lives
apart (`batch_collector.py`, `tasks.py`, `metrics.py`, `sharding.py`, the actor, the queue).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from agentic import models, sharding
from agentic.async_thread import AsyncThread
from agentic.batch_collector import BatchCollector
from agentic.config import ENGINE_LOOP_FIELDS, LEARNER_LOOP_FIELDS, split
from agentic.core import Experiment, Generator, Task, Trajectory, TrajectoryQueue, WeightPublisher
from agentic.env.local_hosts import local_env_hosts
from agentic.inference.engine import EngineConfig
from agentic.learner.learner import Learner, LearnerConfig
from agentic.metrics import CompileClock, MetricsWriter, StageClocks, mean_metrics
from agentic.paths import as_path
from agentic.rollout.actor import Actor, ActorConfig
from agentic.rollout.episode import EpisodeConfig
from agentic.rollout.remote_env import RemoteEnv
from agentic.tasks import TaskStream
from agentic.transport.queue import InProcessTrajectoryQueue, QueueClosed, QueueConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- env hosts


def env_hosts(config, stack: contextlib.ExitStack) -> list[str]:
    """Addresses of `config.env.hosts`, or of local env host subprocesses (closed with `stack`).

    Call it before JAX starts its threads: forking after that is unsafe.
    """
    if config.env.hosts:
        return [a for a in config.env.hosts.split(",") if a]
    t = time.monotonic()
    imports = [m for m in config.env.imports.split(",") if m]
    addresses = stack.enter_context(local_env_hosts(
        [config.env.name], config.env.num_local_hosts, token=config.env.token or None,
        extra_args=[a for m in imports for a in ("--import", m)]))
    print(f"env hosts started at {addresses} ({time.monotonic() - t:.1f}s)", flush=True)
    return addresses


def actor_thread(addresses: list[str], stack: contextlib.ExitStack, name: str = "actors",
                 token: str | None = None):
    """The actors' event-loop thread and its EnvClient (both closed with `stack`)."""
    from agentic.env.client import EnvClient

    actors = AsyncThread(name)
    stack.callback(actors.close)

    async def _client():
        return EnvClient(addresses, token=token)

    env_client = actors.run(_client())
    stack.callback(lambda: actors.run(env_client.aclose(), timeout=30))
    return actors, env_client


# ----------------------------------------------------------------------------- devices


def split_devices(devices, actor_count: int, learner_count: int):
    """Sebulba's split of local devices into actor (engine) and learner sets.

    actor_count 0 shares the learner's first device with the engine (one-device
    hosts, CPU); learner_count 0 gives the learner every device not used by actors.
    """
    devices = list(devices)
    if actor_count < 0 or learner_count < 0:
        raise ValueError("sebulba.actor_devices and sebulba.learner_devices must be >= 0")
    if actor_count == 0:
        learner = devices[: learner_count or len(devices)]
        return learner[:1], learner
    if actor_count >= len(devices):
        raise ValueError(f"sebulba.actor_devices={actor_count} leaves no learner device out of {len(devices)}")
    actors, rest = devices[:actor_count], devices[actor_count:]
    learner = rest[: learner_count or len(rest)]
    if len(learner) < (learner_count or 1):
        raise ValueError(f"sebulba.learner_devices={learner_count}: only {len(rest)} devices left after actors")
    return actors, learner


def placement(config, devices) -> tuple[list[list[Any]], list[Any]]:
    """Where the run puts things, from every device of the job (real or a TPU topology's): each
    process's engine devices (`split_devices` of its own devices), indexed by process, and the
    learner's devices of every process in process order (one mesh over all of them)."""
    by_process: dict[int, list[Any]] = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    engine, learner = [], []
    for p in sorted(by_process):
        a, b = split_devices(sorted(by_process[p], key=lambda d: d.id), config.sebulba.actor_devices,
                             config.sebulba.learner_devices)
        engine.append(a)
        learner.extend(b)
    return engine, learner


def learner_mesh(config, learner_devices):
    """The learner's (data, fsdp, tensor) mesh over its devices (in the topology's physical order)."""
    return sharding.make_mesh(config.learner.mesh_shape, devices=learner_devices)


def max_micro_batches(config) -> int:
    """Micro-batches of the largest packed update the config can produce (a trajectory a row): the
    shape the AOT check compiles."""
    trajs = config.learner.batch_groups * config.actor.group_size / config.learner.get("num_minibatches", 1)
    return max(1, math.ceil(trajs / config.learner.micro_batch_size))


# ----------------------------------------------------------------------------- model


def model_config(config) -> models.ModelConfig:
    """The policy's ModelConfig without reading weights (registry names need no files)."""
    name, dtype = config.model.name, config.model.dtype
    if name.startswith("tiny"):  # as build_model: the registry's shapes with SmolLM2's vocabulary
        vocab = models.load_tokenizer("smollm2-135m-instruct").vocab_size
        return models.get_config(name).replace(vocab_size=vocab, dtype=dtype)
    try:
        return models.load_config(name, dtype=dtype)
    except (FileNotFoundError, ValueError, KeyError):
        return models.get_config(name).replace(dtype=dtype, param_dtype=dtype)


def build_model(name: str, dtype: str):
    """(model config, params, tokenizer). "tiny*" names are random-init with SmolLM2's tokenizer."""
    if name.startswith("tiny"):
        tokenizer = models.load_tokenizer("smollm2-135m-instruct")
        cfg = models.get_config(name).replace(vocab_size=tokenizer.vocab_size, dtype=dtype)
        return cfg, models.init_params(cfg, jax.random.key(0)), tokenizer
    return models.load_model(name, dtype=dtype)


# ----------------------------------------------------------------------------- configs


def learner_config(config: ml_collections.ConfigDict, workdir: str) -> LearnerConfig:
    """config.learner (every LearnerConfig field but the loop's own, `agentic.config`) plus the
    fields the loop owns. `config.total_steps` counts learner updates; the learner's schedule
    counts optimizer steps, `num_minibatches` per update."""
    takes = tuple(f.name for f in dataclasses.fields(LearnerConfig) if f.name not in LEARNER_LOOP_FIELDS)
    lc, _ = split(config.learner.to_dict(), takes, ("batch_groups",))
    return LearnerConfig(
        **lc, total_steps=config.total_steps * lc.get("num_minibatches", 1), temperature=config.actor.temperature,
        seed=config.seed, checkpoint_dir=os.fspath(as_path(workdir) / "checkpoints"),
        keep_checkpoints=config.keep_checkpoints, checkpoint_every=1, distributed=False,
        max_policy_lag=config.queue.max_lag)


def actor_config(config: ml_collections.ConfigDict, *, eval_mode: bool = False) -> ActorConfig:
    """config.actor (every ActorConfig and EpisodeConfig field); eval mode: greedy, one episode
    per task, as many episodes in flight as training runs."""
    actor, episode = split(config.actor.to_dict(), ActorConfig, EpisodeConfig)
    if eval_mode:
        episode.update(temperature=0.0, top_p=1.0, top_k=-1)
        actor.update(group_size=1, concurrent_groups=actor["concurrent_groups"] * actor["group_size"])
    episode["stop"] = tuple(episode.get("stop", ()))
    return ActorConfig(**actor, episode=EpisodeConfig(**episode))


# ----------------------------------------------------------------------------- generator


BACKEND_KEYS = ("backend", "sglang_urls", "weights_dir")  # config.generator's keys besides EngineConfig's


def engine_config(config: ml_collections.ConfigDict) -> EngineConfig:
    """config.generator's EngineConfig fields (every one but `seed`, the run's)."""
    takes = tuple(f.name for f in dataclasses.fields(EngineConfig) if f.name not in ENGINE_LOOP_FIELDS)
    engine, _ = split(config.generator.to_dict(), takes, BACKEND_KEYS)
    return EngineConfig(**engine, seed=config.seed)


def queue_config(config: ml_collections.ConfigDict) -> QueueConfig:
    """config.queue's QueueConfig fields (the rest say where actors reach the queue)."""
    queue, _ = split(config.queue.to_dict(), QueueConfig, ("grpc", "port"))
    return QueueConfig(**queue)


def build_generator(config, model_cfg, params, tokenizer, actor_devices, version: int = 0):
    """The embedded engine (`engine_config`) or a client of SGLang servers."""
    g = config.generator
    if g.backend == "engine":
        from agentic.inference.replicas import build_engine

        return build_engine(model_cfg, params, tokenizer, engine_config(config), devices=list(actor_devices),
                            weight_version=version)
    if g.backend == "sglang":
        from agentic.inference.sglang_client import SGLangClient

        urls = [u for u in g.sglang_urls.split(",") if u]
        if not urls:
            raise ValueError("generator.backend='sglang' needs generator.sglang_urls (comma-separated)")
        if not g.weights_dir:
            raise ValueError("generator.backend='sglang' needs generator.weights_dir, a path every server can read")
        # partial rollouts: pause "retract" around an update (SGLang keeps the requests and their
        # tokens, recomputes their KV under the new weights); else no pause: SGLang's update waits
        # for the requests in flight to finish
        return SGLangClient(urls, pause_mode="retract" if config.sebulba.partial_rollouts else None)
    raise ValueError(f"generator.backend must be 'engine' or 'sglang', got {g.backend!r}")


def update_running(config) -> str:
    """What an embedded engine's requests in flight do at a weight update: "keep" with
    `sebulba.partial_rollouts` (they continue on the new weights), else "finish" (the update
    waits for them)."""
    return "keep" if config.sebulba.partial_rollouts else "finish"


def weight_publisher(config, generator: Generator, model_cfg, tokenizer, actors: AsyncThread) -> WeightPublisher:
    """How learner params reach `generator`: a device swap (engine) or export + update (SGLang)."""
    if config.generator.backend == "engine":
        from agentic.inference.engine import EngineWeights

        return EngineWeights(generator, running=update_running(config))
    from agentic.inference.sglang_client import SGLangWeights

    return SGLangWeights(generator, config.generator.weights_dir, model_cfg, tokenizer, actors.run)


# ----------------------------------------------------------------------------- eval


def env_factory(name: str, kwargs: Mapping[str, Any], env_client):
    """Builds one remote episode of env `name` per call (the actor's `make_env`)."""
    kwargs = dict(kwargs)

    async def make_env():
        return RemoteEnv(env_client, name, kwargs)

    return make_env


def evaluate(tasks: Sequence[Task], *, actor_config: ActorConfig, make_env, generator: Generator, tokenizer,
             actors: AsyncThread, seed: int) -> dict[str, float]:
    """Episodes on held-out tasks (greedy, with `actor_config(config, eval_mode=True)`); returns
    mean metrics (reward, the env's metrics, turns, ...), the episode count and its time."""
    results: list[list[Trajectory]] = []
    t = time.monotonic()

    async def sink(group):
        results.append(group)

    actor = Actor(config=actor_config, generator=generator, tokenizer=tokenizer, make_env=make_env,
                  tasks=iter(tasks), sink=sink, seed=seed, name="eval")
    actors.run(actor.run())
    out = mean_metrics(results)
    out["episodes"] = float(len(results))
    out.update({k: v for k, v in actor.stats().items() if k.startswith("failures/") or k == "env_failures"})
    out["time_s"] = time.monotonic() - t
    return out


# ----------------------------------------------------------------------------- warm start


def has_checkpoint(workdir: str) -> bool:
    ckpt = as_path(workdir) / "checkpoints"
    return ckpt.is_dir() and any(d.name.isdigit() for d in ckpt.iterdir())


def warm_start(config, workdir, experiment: Experiment, model_cfg, params, tokenizer, make_env, actors, mesh,
               writer):
    """Cold-start SFT on the experiment's scripted demonstrations (collected through the env hosts,
    kept by `experiment.keep_demo`); returns new params."""
    from agentic.rollout.scripted import ScriptedGenerator

    ws = config.warm_start
    t = time.monotonic()
    groups: list[list[Trajectory]] = []

    async def sink(group):
        groups.append(group)

    demo_config = actor_config(config, eval_mode=True)
    # A scripted action is as long as it is (the policy, not the token cap, ends its turn).
    demo_config = dataclasses.replace(demo_config, episode=dataclasses.replace(
        demo_config.episode, max_new_tokens_per_turn=max(demo_config.episode.max_new_tokens_per_turn, 256)))
    actor = Actor(config=demo_config, make_env=make_env, sink=sink,
                  generator=ScriptedGenerator(tokenizer, experiment.demo_policy), tokenizer=tokenizer,
                  tasks=TaskStream(experiment.train_tasks, config.seed + 1), name="demos")
    actors.run(actor.run(max_groups=ws.demos))
    demos = [tr for g in groups for tr in g if experiment.keep_demo(tr)]
    print(f"warm start: kept {len(demos)} demonstrations of {ws.demos} ({time.monotonic() - t:.1f}s, "
          f"failures {dict(actor.failures)})", flush=True)
    if not demos:
        raise RuntimeError("warm start: no demonstration kept; check the env, the experiment's demo policy "
                           "and config.warm_start")
    lc = learner_config(config, workdir).replace(
        policy_loss="nll", off_policy="none", kl_coef=0.0, lr=ws.lr, warmup_steps=0, schedule="constant",
        total_steps=ws.steps, checkpoint_dir=None, max_policy_lag=None)
    sft = Learner(lc, model_cfg, params, mesh=mesh)
    for step in range(ws.steps):
        batch = [demos[(step * ws.batch + i) % len(demos)] for i in range(ws.batch)]
        m = sft.update(batch)
        writer.write(step + 1, {"loss": m["learner/loss"], "learner_tokens_per_s": m.get("perf/tokens_per_s", 0.0)},
                     prefix="warm_start", total=ws.steps)
    params = jax.tree.map(lambda x: x.copy(), sft.params)
    sft.close()
    return params


# ----------------------------------------------------------------------------- train: its stages


ROLES = ("all", "learner", "actor")


def start_run(config, workdir: str, role: str) -> bool:
    """Checks the role and mode, joins the other processes, writes config.json (process 0); returns
    whether this process is the run's one writer."""
    if role not in ("all", "learner"):
        raise ValueError(f"train() runs role 'all' or 'learner', got {role!r} (role 'actor': agentic.remote_actor)")
    if config.sebulba.mode not in ("async", "sync"):
        raise ValueError(f"sebulba.mode must be 'async' or 'sync', got {config.sebulba.mode!r}")
    if role == "learner" and config.sebulba.mode != "async":
        raise ValueError("role 'learner' needs sebulba.mode='async': remote actors never pause for the learner")
    if config.distributed:
        sharding.initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    primary = sharding.is_primary(config.distributed)  # the one writer of config.json, metrics and plots
    if primary:
        as_path(workdir).mkdir(parents=True, exist_ok=True)
        (as_path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    return primary


def load_policy(config, mesh):
    """(model config, params, tokenizer): the weights read straight into the learner's shardings on
    `mesh` (each host puts only its devices' shards; no chip ever holds a whole copy it does not keep),
    in the learner's master dtype; the model config's compute dtype is `config.model.dtype`."""
    t = time.monotonic()
    model_cfg = model_config(config)
    dtype = config.learner.param_dtype
    from agentic.learner.learner import param_shardings

    shardings = param_shardings(model_cfg, mesh)
    if config.model.name.startswith("tiny"):
        tokenizer = models.load_tokenizer("smollm2-135m-instruct")
        init = jax.jit(lambda: models.init_params(model_cfg.replace(param_dtype=dtype), jax.random.key(0)),
                       out_shardings=shardings)
        params = init()
    else:
        _, params, tokenizer = models.load_model(config.model.name, dtype=dtype, shardings=shardings)
    print(f"model {config.model.name}: {sum(np.size(x) for x in jax.tree.leaves(params)) / 1e6:.1f}M params "
          f"({time.monotonic() - t:.1f}s)", flush=True)
    return model_cfg, params, tokenizer


def engine_weights(params, model_cfg, learner_devices, engine_shardings):
    """The learner's params as this process's engine takes them, on device: cast to the engine's dtype
    on the learner's devices and laid out there as the engine slices them (`sharding.engine_copy`);
    the engine's `jax.device_put` then copies whole shards device to device, no host round trip."""
    dtype = jax.numpy.dtype(model_cfg.dtype)
    cast = jax.jit(lambda t: jax.tree.map(lambda x: x.astype(dtype), t))(params)
    return sharding.engine_copy(cast, learner_devices, engine_shardings)


def engine_param_shardings(config, model_cfg, engine_devices):
    """The embedded engine's param shardings on `engine_devices` (its (data, model) mesh, tp_size
    devices per model replica), as `agentic.inference.engine.EngineCore` builds them; with several
    engine replicas (`replica_plan`), the first one's (the others reshard device to device)."""
    from agentic.inference.engine_step import engine_mesh, param_shardings
    from agentic.inference.replicas import replica_plan

    ec, groups = replica_plan(engine_config(config), engine_devices)
    mesh = engine_mesh(groups[0], ec.tp_size)
    return param_shardings(model_cfg, models.param_shapes(model_cfg), mesh)


def learner_share(config) -> int:
    """This process's part of `learner.batch_groups`, the global batch: every process collects as
    many groups (the global batch must split evenly)."""
    n = jax.process_count()
    if config.learner.batch_groups % n:
        raise ValueError(f"learner.batch_groups={config.learner.batch_groups} (the global batch) must be a multiple "
                         f"of the process count {n}: each process collects an equal share")
    return config.learner.batch_groups // n


def serve_queue(config, role, learner, stack):
    """The learner's trajectory queue (in process; served over gRPC for actor processes, or to test
    the wire) and the queue this process's actor puts into."""
    queue: TrajectoryQueue = InProcessTrajectoryQueue(queue_config(config))
    queue.set_learner_version(learner.version)
    actor_queue: TrajectoryQueue = queue
    if config.queue.grpc or role == "learner":
        from agentic.transport.grpc_queue import GrpcTrajectoryQueue, TrajectoryQueueServer

        server = TrajectoryQueueServer(queue, host=config.remote.bind, port=config.queue.port,
                                       vocab_size=learner.model_config.vocab_size).start()
        stack.callback(server.stop)
        print(f"trajectory queue at {server.address}", flush=True)
        if role == "all":  # this process's actor goes through the wire too
            actor_queue = GrpcTrajectoryQueue(server.address)
    stack.callback(queue.close)
    return queue, actor_queue


def serve_weights(config, publisher, stack) -> WeightPublisher:
    """Role learner: a weight stream actor processes follow, beside the local engine's publisher."""
    from agentic.transport.weight_stream import WeightStreamPublisher, WeightStreamServer

    weights = WeightStreamServer(host=config.remote.bind, port=config.remote.weights_port).start()
    stack.callback(weights.stop)
    print(f"weight stream at {weights.address}", flush=True)
    return PublishAll(publisher, WeightStreamPublisher(weights))


def local_actor(config, generator, tokenizer, make_env, tasks, actor_queue, start_step) -> Actor:
    """The actor of role "all": its finished groups go into the queue (until the queue closes)."""
    async def sink(group):
        try:
            while not await actor_queue.aput(group, timeout=5.0):
                pass
        except QueueClosed:  # shutting down: the learner takes no more groups
            pass

    return Actor(config=actor_config(config), generator=generator, tokenizer=tokenizer, make_env=make_env,
                 tasks=tasks, sink=sink, seed=config.seed + start_step)


def step_row(groups, trajs, m, learner, actor, queue, batches, clocks, lag, wait_s, train_s, sync_s) -> dict:
    """The metrics row of one RL step (its progress line and metrics.jsonl)."""
    actor_stats = actor.stats() if actor is not None else {}
    row = {**mean_metrics(groups), **m, **{f"actor/{k}": v for k, v in actor_stats.items()},
           **{f"queue/{k}": v for k, v in queue.stats().items()}, **batches.stats()}
    row.update(policy_lag=lag, env_failures=actor_stats.get("env_failures", 0.0),
               wait_s=wait_s, train_s=train_s, sync_s=sync_s, **clocks.step_times(),
               model_tokens_per_s=sum(float(tr.loss_mask.sum()) for tr in trajs) / max(clocks.step_s, 1e-9),
               learner_tokens_per_s=m.get("perf/tokens_per_s", 0.0))
    return row


def over_budget(config, start: float, clocks: StageClocks, stats: dict, n_eval: int, step: int) -> bool:
    """Whether RL stops now for `config.time_budget_s` (the whole run's): when the final eval (timed like
    the last full eval, or the last quick eval scaled to the full set) and one more step would not fit.
    Process 0's decision, taken by every process."""
    reserve = clocks.step_s + 1.2 * final_eval_estimate(stats, n_eval)
    if sharding.agree(config.time_budget_s and time.monotonic() - start + reserve > config.time_budget_s):
        print(f"time budget of {config.time_budget_s:.0f}s: stopping at step {step} to leave "
              f"{reserve:.0f}s for one more step and the final eval", flush=True)
        return True
    return False


def run_summary(step, start_step, start, times, clocks, actor, compile_clock, batches, interrupted) -> dict:
    """The run's summary numbers: steps, where the time went, idle fractions, groups' fates."""
    train_start, first_step_done, train_end = times
    train_s = train_end - train_start
    return dict(steps=step, start_step=start_step, train_s=train_s, total_s=time.monotonic() - start,
                steady_s=(train_end - first_step_done) if first_step_done is not None else 0.0,
                steady_steps=max(step - start_step - 1, 0),
                learner_idle_frac=clocks.wait_total / max(train_s, 1e-9),
                actor_idle_frac=(1.0 - min(actor.busy.total / max(train_s, 1e-9), 1.0)) if actor else 0.0,
                compile_s=compile_clock.seconds, interrupted=interrupted, **batches.stats())


# ----------------------------------------------------------------------------- train


def train(config: ml_collections.ConfigDict, workdir: str, experiment: Experiment, role: str = "all"
          ) -> dict[str, Any]:
    """Runs the experiment; returns final metrics (evals at the start, after the cold start,
    during RL and at the end, and where the time went).

    role "all": everything in this process (and with `config.distributed`, in each of the
    processes, their learner devices forming one mesh). "learner": no actor here; the trajectory
    queue and the weight stream are served for actor processes (`agentic.remote_actor`, role
    "actor") to join and leave while training runs.
    """
    start = time.monotonic()
    compile_clock = CompileClock()
    primary = start_run(config, workdir, role)
    stats: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(compile_clock.close)
        # ---- env hosts (first: forking after JAX has started its threads is unsafe)
        addresses = env_hosts(config, stack)

        # ---- devices: this process's engine devices; the learner's, of every process (one mesh)
        engine_devs, learner_devs = placement(config, jax.devices())
        actor_devs = engine_devs[jax.process_index()]
        mesh = learner_mesh(config, learner_devs)
        print(f"devices: actors {actor_devs}, learner {len(learner_devs)} devices over "
              f"{jax.process_count()} process(es)", flush=True)

        # ---- model: straight into the learner's shardings
        model_cfg, params, tokenizer = load_policy(config, mesh)

        # ---- tasks
        train_tasks, eval_tasks = list(experiment.train_tasks), list(experiment.eval_tasks)
        eval_tasks = eval_tasks[: config.eval_tasks]
        quick_tasks = eval_tasks[: config.eval_quick_tasks]
        print(f"tasks: {len(train_tasks)} train, {len(eval_tasks)} held-out for eval "
              f"({len(quick_tasks)} in the quick evals at the start and during RL)", flush=True)
        if not primary:  # evals are process 0's (the others wait for it at the next collective step)
            eval_tasks, quick_tasks = [], []

        # ---- actors' event loop, env client, metrics
        actors, env_client = actor_thread(addresses, stack, token=config.env.token or None)
        make_env = env_factory(config.env.name, {**config.env.kwargs.to_dict(), **experiment.env_kwargs}, env_client)
        writer = MetricsWriter(workdir, total_steps=config.total_steps, progress_metrics=experiment.progress_metrics,
                               primary=primary)
        stack.callback(writer.close)
        fresh = not has_checkpoint(workdir)

        # ---- generator: its weights from the learner's, on device (synced after a cold start or a resume)
        engine_sh = engine_param_shardings(config, model_cfg, actor_devs)
        generator = build_generator(config, model_cfg, engine_weights(params, model_cfg, learner_devs, engine_sh),
                                    tokenizer, actor_devs)
        stack.callback(lambda: actors.run(generator.close(), timeout=60))
        publisher = weight_publisher(config, generator, model_cfg, tokenizer, actors)

        def publish(params, version: int) -> None:
            publisher.publish(engine_weights(params, model_cfg, learner_devs, engine_sh), version)

        def run_eval(step: int, tasks: list[dict], split: str) -> dict[str, float]:
            ev = evaluate(tasks, actor_config=actor_config(config, eval_mode=True), make_env=make_env,
                          generator=generator, tokenizer=tokenizer, actors=actors, seed=config.seed + 7)
            writer.write(step, ev, prefix=split)
            return ev

        # ---- eval at the start (the model as given), on the quick set
        if fresh and quick_tasks:
            stats["eval_start"] = run_eval(0, quick_tasks, "eval_start")

        # ---- warm start (cold-start SFT on demonstrations), only for a fresh run
        if fresh and config.warm_start.demos and config.warm_start.steps:
            if experiment.demo_policy is None:
                raise ValueError("config.warm_start asks for demonstrations but the experiment has no demo_policy")
            params = warm_start(config, workdir, experiment, model_cfg, params, tokenizer, make_env, actors,
                                mesh, writer)
            publish(params, 0)
            if eval_tasks:
                stats["eval_warm_start"] = run_eval(0, eval_tasks, "eval_warm_start")

        # ---- learner (resumes from the workdir's last checkpoint)
        learner = Learner(learner_config(config, workdir), model_cfg, params, mesh=mesh)
        stack.callback(learner.close)
        del params
        data_state = learner.restore()
        start_step = learner.version
        if data_state is not None:
            print(f"resumed from checkpoint at step {start_step} ({workdir})", flush=True)
            publish(learner.params, learner.version)
        tasks = TaskStream(train_tasks, config.seed, (data_state or {}).get("tasks"))

        # ---- queue, weight stream (role learner) or this process's actor
        queue, actor_queue = serve_queue(config, role, learner, stack)
        actor = None
        if role == "learner":  # actor processes get the weights from a weight stream
            publisher = serve_weights(config, publisher, stack)
            publish(learner.params, learner.version)
        else:
            actor = local_actor(config, generator, tokenizer, make_env, tasks, actor_queue, start_step)
        batches = BatchCollector(config, queue, actor, actors, batch_groups=learner_share(config))
        stack.callback(batches.close)

        # ---- loop: collect a batch, update, publish weights, log, checkpoint, eval
        stopping = stack.enter_context(_StopFlag())
        step = saved = start_step
        clocks = StageClocks(actor, compile_clock)
        train_start, first_step_done = time.monotonic(), None
        while step < config.total_steps and not stopping.set:
            if over_budget(config, start, clocks, stats, len(eval_tasks), step):
                break
            clocks.start_step()
            groups = batches.next(lambda: stopping.set)
            if groups is None:
                break
            wait_s = clocks.lap()
            trajs = [tr for g in groups for tr in g]
            lag = float(np.mean([learner.version - tr.policy_version for tr in trajs]))
            m = learner.update(trajs)
            train_s = clocks.lap()
            publish(learner.params, learner.version)
            sync_s = clocks.lap()
            queue.set_learner_version(learner.version)
            batches.record(m)
            step = learner.version
            first_step_done = first_step_done or time.monotonic()  # the first step compiles: timed apart
            if step % config.log_every == 0:
                writer.write(step, step_row(groups, trajs, m, learner, actor, queue, batches, clocks, lag, wait_s,
                                            train_s, sync_s))
            if step % config.checkpoint_every == 0:
                learner.save(step, data_state={"tasks": tasks.state()}, force=True)
                saved = step
            if config.eval_every and step % config.eval_every == 0 and step < config.total_steps and quick_tasks:
                stats.setdefault("eval_rl", []).append({"step": step, **run_eval(step, quick_tasks, "eval_rl")})
        if saved != step:
            learner.save(step, data_state={"tasks": tasks.state()}, force=True)
        learner.wait_for_checkpoint()
        train_end = time.monotonic()
        batches.close()
        if role == "learner":
            time.sleep(3.0)  # actor processes poll the queue's state every second: let them see it closed

        # ---- eval at the end, and the run's summary
        if eval_tasks and not stopping.set:
            stats["eval_end"] = run_eval(step, eval_tasks, "eval")
        stats.update(run_summary(step, start_step, start, (train_start, first_step_done, train_end), clocks, actor,
                                 compile_clock, batches, stopping.set))
        writer.write(step, {k: v for k, v in stats.items() if isinstance(v, (int, float))}, prefix="summary",
                     quiet=True)
    return stats


class PublishAll(WeightPublisher):
    """Publishes to each of `publishers` in turn (the learner role: its own engine, for evals, and
    the weight stream actor processes follow)."""

    def __init__(self, *publishers: WeightPublisher):
        self.publishers = publishers

    def publish(self, params: Any, version: int) -> None:
        for p in self.publishers:
            p.publish(params, version)


def final_eval_estimate(stats: dict[str, Any], n: int) -> float:
    """Seconds the final eval of n tasks should take: the latest eval of at least n tasks (same
    batching), else the latest eval's time per episode x n (a small eval's episodes run in fewer
    concurrent slots, so this overestimates)."""
    evals = [stats[k] for k in ("eval_start", "eval_warm_start") if k in stats] + stats.get("eval_rl", [])
    if not evals or not n:
        return 0.0
    full = [e for e in evals if e["episodes"] >= n]
    if full:
        return full[-1]["time_s"] * n / full[-1]["episodes"]
    last = evals[-1]
    return last["time_s"] / max(last["episodes"], 1.0) * n


class _StopFlag:
    """SIGTERM / Ctrl-C: finish the current step, checkpoint, and shut everything down."""

    def __init__(self):
        self.set = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.set:  # second signal: stop now
            raise KeyboardInterrupt
        print(f"signal {signum}: stopping after this step (again to abort)", flush=True)
        self.set = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
