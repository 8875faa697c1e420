"""The Learner: trajectories in, one sharded optimizer update out, checkpoints that resume exactly.

    from agentic.learner import Learner, LearnerConfig
    cfg = LearnerConfig(algorithm="grpo", lr=1e-6, micro_batch_size=8, mesh_shape=(-1, 1, 1),
                        checkpoint_dir="runs/x/ckpt")
    learner = Learner(cfg, model_config, params)        # params: pytree, loader(shardings), or None
    # e.g. loader: lambda shardings: models.load_model(name, shardings=shardings)[1]
    metrics = learner.update(trajectories)              # list[Trajectory]; whole GRPO groups
    learner.params, learner.version                     # sharded policy params, policy version
    learner.save(data_state={"batches": 12})            # async orbax save at step = learner.step
    data_state = learner.restore()                      # latest checkpoint (or None if there is none)

`update` does, in order (each stage timed in the metrics under `time/`):
  1. drop whole groups whose policy version lags the learner by more than `max_policy_lag`;
  2. shift trajectories to prediction positions (the logits at t predict token t+1, so
     targets are tokens[1:] and the loss mask is loss_mask[1:]: see batching.py) and pack
     them into a few fixed shapes;
  3. when needed, score them with the params before the update (proximal log-probs for
     decoupled PPO/TIS with several minibatches, old values for GAE, the frozen
     reference's log-probs for KL);
  4. advantages by the registered estimator of `algorithm` (GRPO groups must be whole
     in one update call, and in one process under multi-host);
  5. `num_minibatches` jitted train steps (micro-batch gradient accumulation inside).
`version` counts completed updates (what actors compare `Trajectory.policy_version`
with); `step` counts optimizer steps (equal when num_minibatches == 1).

Multi-host (TPU pod slices): set `distributed=True` (calls `jax.distributed.initialize()`),
build one Learner per process with the same config, and give each process's
`update` its own trajectories: arrays are assembled with
`jax.make_array_from_process_local_data`, and the packed shape is agreed across
processes. `micro_batch_size` is global (rows over all processes).

Size: past 400 lines because `update`'s five stages share the train state, the mesh and
the compiled steps; the pieces that stand alone already live apart (`batching.py` packing
and loss weights, `advantages.py`, `losses.py`, `train_step.py`, `checkpoint.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from agentic import models, sharding
from agentic.core import Trajectory
from agentic.learner import advantages as adv_lib
from agentic.learner import batching, guard, lora, losses, mismatch, optimizer
from agentic.learner.checkpoint import Checkpointer, abstract_like
from agentic.learner.checkpoint import abstract_like as checkpoint_abstract
from agentic.learner.policy import init_value_head, train_flops, value_head_logical_axes
from agentic.learner.train_step import make_score_fn, make_train_step
from agentic.models import ModelConfig

OFF_POLICY_MODES = ("none", "tis", "decoupled")
KL_MODES = ("loss", "reward")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    """Everything the learner needs; checked on construction.

    Attributes:
      algorithm: advantage estimator: "grpo", "dr_grpo", "rloo" or "ppo" (GAE + value head).
      policy_loss: "ppo_clip" (token-level clipped surrogate), "pg" (no clipping) or
        "reinforce" (-A log pi, no ratio); see losses.py.
      lr, warmup_steps, schedule ("constant" | "cosine"), total_steps (cosine length),
        final_lr_ratio, weight_decay, adam_b1, adam_b2, adam_eps, max_grad_norm: AdamW.
      clip_eps_low, clip_eps_high: PPO ratio clip range [1 - low, 1 + high] (DAPO's clip-higher
        when high > low). dual_clip: cap of the loss at -dual_clip * A for A < 0 (None: off).
      kl_coef: weight of KL(pi || pi_ref); 0 creates no reference model.
      kl_estimator: "k1", "k2", "k3" / "low_var_kl", "abs" (verl's |logp - ref|).
      kl_mode: "loss" (a loss term) or "reward" (subtracted from the rewards before advantages).
      entropy_coef: entropy bonus weight.
      loss_agg_mode: see losses.py. loss_agg_norm: the constant of "seq-mean-token-sum-norm"
        (default: the largest sequence bucket).
      grpo_eps: GRPO's std epsilon. gamma, gae_lambda, whiten_advantages, value_coef,
        value_clip: PPO. value_lr: the value head's learning rate (None: lr). The value head
        is a linear layer on the policy's last hidden states (a shared trunk: the value loss
        also trains the transformer, scaled by value_coef).
      off_policy: "none", "tis" or "decoupled" (see train_step.py); tis_cap: TIS truncation.
      max_policy_lag: drop groups older than this many versions (None: keep all).
      micro_batch_size: packed rows per micro-batch (global; multiple of data * fsdp).
      min_micro_batches: pad every update to at least this many micro-batches. Micro-batches
        of padding only are skipped at run time, so this fixes the packed shape (one
        compilation for a whole run whose batches fit) at no compute cost.
      num_minibatches: optimizer steps per update (the batch split by whole groups).
      seq_buckets: allowed packed row lengths (prediction positions); longer trajectories are cut.
      pack: several trajectories per row (else one per row).
      temperature: sampling temperature of the behavior policy; log-probs use logits / temperature.
      logprob_chunk_size: positions per chunk of the vocab projection.
      mesh_shape: (data, fsdp, tensor); one entry may be -1 (all remaining devices).
      remat: rematerialize each transformer block in the backward pass.
      compute_dtype: activations / matmul dtype; param_dtype: master weights ("float32").
      seed: initial RNG (params init when none are given, and the state's rng).
      checkpoint_dir: where orbax checkpoints go (None: no checkpointing).
      keep_checkpoints: how many to keep; checkpoint_every: save every k steps; async_checkpointing.
      distributed: call jax.distributed.initialize() (multi-host).
      mismatch_correction: sequence-level correction of the sampler/learner mismatch:
        "none", "icepop", "seq_mask", "geo_mask" or "seq_is" (see mismatch.py).
      mismatch_low, mismatch_high: the kept range [low, high] of the ratio pi_learner /
        pi_sampler (per token, per sequence or its geometric mean); high truncates seq_is.
      lora_rank: LoRA adapters of this rank on `lora_targets` (0: full fine-tuning); only they
        are trained and checkpointed, `params` is base + adapter merged (see lora.py).
      lora_alpha: the adapters' scale is lora_alpha / lora_rank.
      lora_targets: the adapted projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).
    """

    algorithm: str = "grpo"
    policy_loss: str = "ppo_clip"
    lr: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int | None = None
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    kl_mode: str = "loss"
    entropy_coef: float = 0.0
    loss_agg_mode: str = "token-mean"
    loss_agg_norm: float | None = None
    grpo_eps: float = 1e-6
    gamma: float = 1.0
    gae_lambda: float = 1.0
    whiten_advantages: bool = True
    value_coef: float = 0.5
    value_clip: float | None = 0.2
    value_lr: float | None = None
    off_policy: str = "tis"
    tis_cap: float = 2.0
    max_policy_lag: int | None = None
    micro_batch_size: int = 8
    min_micro_batches: int = 1
    num_minibatches: int = 1
    seq_buckets: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    pack: bool = True
    temperature: float = 1.0
    logprob_chunk_size: int = 512
    mesh_shape: tuple[int, int, int] = (-1, 1, 1)
    remat: bool = False
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    seed: int = 0
    checkpoint_dir: str | None = None
    keep_checkpoints: int | None = 3
    checkpoint_every: int = 1
    async_checkpointing: bool = True
    distributed: bool = False
    mismatch_correction: str = "none"
    mismatch_low: float = 0.5
    mismatch_high: float = 2.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = lora.LORA_TARGETS

    def __post_init__(self):
        object.__setattr__(self, "seq_buckets", tuple(sorted(int(b) for b in self.seq_buckets)))
        object.__setattr__(self, "mesh_shape", tuple(int(s) for s in self.mesh_shape))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

        def check(ok, msg):
            if not ok:
                raise ValueError(f"LearnerConfig: {msg}")

        check(self.algorithm in adv_lib.ESTIMATORS,
              f"algorithm {self.algorithm!r} has no advantage estimator; choose from {adv_lib.ESTIMATORS.names()}")
        check(self.policy_loss in losses.POLICY_LOSSES,
              f"policy_loss {self.policy_loss!r} unknown; choose from {losses.POLICY_LOSSES.names()}")
        check(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        check(self.schedule in optimizer.SCHEDULES, f"schedule {self.schedule!r} unknown; choose from {optimizer.SCHEDULES}")
        check(self.schedule != "cosine" or (self.total_steps or 0) > self.warmup_steps,
              f"a cosine schedule needs total_steps > warmup_steps ({self.warmup_steps}), got {self.total_steps}")
        check(self.clip_eps_low >= 0 and self.clip_eps_high >= 0, "clip_eps_low/high must be >= 0")
        check(self.dual_clip is None or self.dual_clip > 1, f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        check(self.kl_estimator in losses.KL_ESTIMATORS,
              f"kl_estimator {self.kl_estimator!r} unknown; choose from {losses.KL_ESTIMATORS}")
        check(self.kl_mode in KL_MODES, f"kl_mode {self.kl_mode!r} unknown; choose from {KL_MODES}")
        check(self.loss_agg_mode in losses.LOSS_AGG_MODES,
              f"loss_agg_mode {self.loss_agg_mode!r} unknown; choose from {losses.LOSS_AGG_MODES}")
        check(self.off_policy in OFF_POLICY_MODES,
              f"off_policy {self.off_policy!r} unknown; choose from {OFF_POLICY_MODES}")
        check(self.tis_cap > 0, f"tis_cap must be > 0, got {self.tis_cap}")
        check(self.max_policy_lag is None or self.max_policy_lag >= 0, "max_policy_lag must be >= 0 or None")
        check(self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        check(self.min_micro_batches >= 1, f"min_micro_batches must be >= 1, got {self.min_micro_batches}")
        check(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        check(len(self.seq_buckets) > 0 and self.seq_buckets[0] >= 1, "seq_buckets must be positive lengths")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(len(self.mesh_shape) == 3, f"mesh_shape is (data, fsdp, tensor), got {self.mesh_shape}")
        check(self.compute_dtype in DTYPES and self.param_dtype in DTYPES,
              f"compute_dtype/param_dtype must be in {DTYPES}")
        check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        problem = mismatch.check_config(self.mismatch_correction, self.mismatch_low, self.mismatch_high,
                                        self.off_policy)
        check(problem is None, problem)
        problem = lora.check_config(self.lora_rank, self.lora_alpha, self.lora_targets)
        check(problem is None, problem)

    @property
    def uses_values(self) -> bool:
        return self.algorithm in adv_lib.NEEDS_VALUES

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 1.0

    def replace(self, **kw) -> LearnerConfig:
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass
class Prepared:
    """What `Learner.prepare` hands to `Learner.train`.

    Attributes:
      batches: one packed numpy batch (a dict of [num_micro, micro_batch, T] arrays) per
        minibatch, process-local rows.
      lengths: prediction positions of each trajectory, per minibatch (for FLOP counts).
      metrics: batch/* and time/* metrics of the preparation.
    """

    batches: list[dict[str, np.ndarray]]
    lengths: list[np.ndarray]
    metrics: dict[str, float]


def param_shardings(model_config: ModelConfig, mesh) -> Any:
    """NamedShardings of the model's params on `mesh` (pass to `models.load_model(shardings=...)`)."""
    return sharding.tree_shardings(models.param_shapes(model_config), models.param_logical_axes(model_config), mesh)


def _as_dtype(x, dtype):
    """A copy of array `x` in `dtype` (same sharding), or its ShapeDtypeStruct for an abstract one."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype) if x.dtype != dtype else x.copy()


class Learner:
    """Owns the sharded train state; see the module docstring for the API.

    Args:
      config: the LearnerConfig.
      model_config: the policy's ModelConfig (compute dtype and remat are taken from `config`).
      params: the initial policy params: a pytree (placed on the mesh), a callable taking the
        params' shardings and returning params (a loader), or None (random init from config.seed).
      mesh: a (data, fsdp, tensor) Mesh; default: built from config.mesh_shape.
      abstract: build the state as ShapeDtypeStructs with its shardings, allocating nothing (the
        mesh may then be a TPU topology's devices): for `lower_programs` (ahead-of-time compiles).
    """

    def __init__(self, config: LearnerConfig, model_config: ModelConfig,
                 params: Any | Callable[[Any], Any] | None = None, *, mesh=None, abstract: bool = False):
        if config.distributed and not abstract:
            sharding.initialize_distributed()
        self.config = config
        self.abstract = abstract
        self.model_config = model_config.replace(dtype=config.compute_dtype, param_dtype=config.param_dtype,
                                                 remat=config.remat)
        self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh_shape)
        div = sharding.batch_divisor(self.mesh)
        if config.micro_batch_size % div:
            raise ValueError(f"micro_batch_size {config.micro_batch_size} must be a multiple of data * fsdp = {div} "
                             f"(rows are sharded over those mesh axes)")
        nproc = len({d.process_index for d in self.mesh.devices.flat}) if abstract else jax.process_count()
        if config.micro_batch_size % nproc:
            raise ValueError(f"micro_batch_size {config.micro_batch_size} must be a multiple of the process count {nproc}")
        self._local_micro = config.micro_batch_size // nproc
        self._max_len = config.seq_buckets[-1]
        self._agg_norm = config.loss_agg_norm or float(self._max_len)

        policy_sh = param_shardings(self.model_config, self.mesh)
        sharding.check_fsdp_divides(models.param_shapes(self.model_config),
                                    models.param_logical_axes(self.model_config), self.mesh)
        pdt = jnp.dtype(config.param_dtype)
        self._opt = optimizer.make_optimizer(
            config.lr, warmup_steps=config.warmup_steps, schedule=config.schedule, total_steps=config.total_steps,
            final_lr_ratio=config.final_lr_ratio, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
            weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
            value_lr=config.value_lr if config.uses_values else None)
        rep = sharding.replicated(self.mesh)
        self._frozen_sh = None
        if abstract:
            self._state, trainable_sh = self._abstract_state(policy_sh, pdt, rep)
        else:
            self._state, trainable_sh = self._initial_state(params, policy_sh, pdt, rep)
        # The frozen reference exists only when a KL term uses it: a copy of the initial policy, held in
        # the compute dtype (the forward pass casts to it anyway: bf16 compute halves its memory). Under
        # LoRA the frozen base is the reference: `_reference` reads it from the state (which the train
        # step donates), so no second copy and no stale handle.
        ref_dtype = jnp.dtype(config.compute_dtype) if jnp.dtype(config.compute_dtype).itemsize < pdt.itemsize else pdt
        self._ref = (jax.tree.map(lambda p: _as_dtype(p, ref_dtype), self._state["trainable"]["policy"])
                     if config.kl_coef and "frozen" not in self._state else None)
        self._ref_sh = policy_sh if config.kl_coef else None
        self._state_sh = jax.tree.map(lambda x: x.sharding, self._state)
        self._trainable_sh = trainable_sh
        self._rep = rep
        self._batch_sh = sharding.batch_sharding(self.mesh)
        self._train_steps: dict[tuple, Any] = {}
        self._score_fns: dict[tuple, Any] = {}
        self._ckpt = (Checkpointer(config.checkpoint_dir, keep=config.keep_checkpoints,
                                   every=config.checkpoint_every, async_save=config.async_checkpointing)
                      if config.checkpoint_dir and not abstract else None)

    def _initial_state(self, params, policy_sh, pdt, rep) -> tuple[dict, dict]:
        """The train state on the mesh: params placed (or loaded straight) into their shardings."""
        config = self.config
        if params is None:
            params = models.init_params(self.model_config, jax.random.key(config.seed))
        elif callable(params):
            params = params(policy_sh)
        params = jax.device_put(jax.tree.map(lambda p: p if getattr(p, "dtype", None) == pdt else jnp.asarray(p, pdt),
                                             params), policy_sh)
        trainable, trainable_sh = {"policy": params}, {"policy": policy_sh}
        frozen = None
        if config.lora_rank:  # train adapters only; the base params are frozen (lora.py)
            trainable, trainable_sh, frozen, self._frozen_sh = self._lora_split(params, policy_sh)
        if config.uses_values:
            vsh = sharding.tree_shardings(init_value_head(self.model_config), value_head_logical_axes(), self.mesh)
            trainable["value"] = jax.device_put(init_value_head(self.model_config), vsh)
            trainable_sh["value"] = vsh
        # Eager init: moments are zeros_like(params) and keep their shardings; the scalars
        # (step counts) land on one device and are replicated over the mesh here.
        opt_state = jax.tree.map(
            lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding) else jax.device_put(x, rep),
            self._opt.init(trainable))
        state = {
            "trainable": trainable, "opt_state": opt_state,
            "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
            "version": jax.device_put(jnp.zeros((), jnp.int32), rep),
            "rng": jax.device_put(jax.random.key_data(jax.random.key(self.config.seed)), rep),
        }
        if frozen is not None:
            state["frozen"] = frozen
        return state, trainable_sh

    def _abstract_state(self, policy_sh, pdt, rep) -> tuple[dict, dict]:
        """The same train state as `_initial_state`, as ShapeDtypeStructs with the same shardings: nothing is
        allocated, so the mesh may be a TPU topology's devices (ahead-of-time compilation, tools/aot_check.py)."""
        config = self.config

        def sds(tree, shardings):
            return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)

        shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, pdt), models.param_shapes(self.model_config))
        trainable, trainable_sh = {"policy": sds(shapes, policy_sh)}, {"policy": policy_sh}
        frozen = None
        if config.lora_rank:
            adapters = jax.eval_shape(lambda p: lora.init_adapters(p, targets=config.lora_targets, rank=config.lora_rank,
                                                                   key=jax.random.key(0)), trainable["policy"])
            ash = sharding.tree_shardings(adapters, lora.adapter_logical_axes(adapters), self.mesh)
            frozen, self._frozen_sh = trainable, trainable_sh
            trainable, trainable_sh = {"lora": sds(adapters, ash)}, {"lora": ash}
        if config.uses_values:
            value = jax.eval_shape(lambda: init_value_head(self.model_config))
            vsh = sharding.tree_shardings(value, value_head_logical_axes(), self.mesh)
            trainable["value"], trainable_sh["value"] = sds(value, vsh), vsh
        opt_shapes = jax.eval_shape(self._opt.init, trainable)
        opt_sh = sharding.like_params(opt_shapes, trainable, rep)
        key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
        state = {"trainable": trainable, "opt_state": sds(opt_shapes, opt_sh), "step": scalar, "version": scalar,
                 "rng": jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)}
        if frozen is not None:
            state["frozen"] = frozen
        return state, trainable_sh

    def lower_programs(self, *, seq_len: int | None = None, num_micro: int = 1) -> dict[str, Any]:
        """The learner's jitted programs lowered on abstract inputs: {"learner_update": train step,
        "learner_score": the scoring pass (when this config runs it)}, each a `jax.stages.Lowered`
        for a packed batch of `num_micro` micro-batches of rows of `seq_len` (default: the largest
        bucket). Works on a real or an abstract learner (then on a TPU topology's devices)."""
        c = self.config
        T = seq_len or self._max_len
        shape = (num_micro, c.micro_batch_size, T)

        def batch(keys):
            ints = ("inputs", "targets", "positions", "segment_ids")
            return {k: jax.ShapeDtypeStruct(shape, jnp.int32 if k in ints else jnp.float32, sharding=self._batch_sh)
                    for k in keys}

        base = ["inputs", "targets", "positions", "segment_ids"]
        keys = base + ["weights", "mean_weights", "advantages", "behavior_logprobs"]
        need_prox = c.off_policy != "none" and c.num_minibatches > 1
        if need_prox:
            keys.append("proximal_logprobs")
        if c.kl_coef and c.kl_mode == "loss":
            keys.append("ref_logprobs")
        if c.uses_values:
            keys += ["old_values", "returns"]
        keys = tuple(sorted(keys))
        state = checkpoint_abstract(self._state)
        out = {"learner_update": self._train_step(keys).lower(state, batch(keys))}
        if c.uses_values or c.kl_coef > 0 or need_prox:
            score_keys = tuple(sorted(base))
            ref = self._reference()
            ref = None if ref is None else checkpoint_abstract(ref)
            out["learner_score"] = self._score_fn(score_keys).lower(state["trainable"], ref, batch(score_keys),
                                                                    state.get("frozen"))
        return out

    def _lora_split(self, params, policy_sh):
        """(trainable, its shardings, frozen, its shardings) of a LoRA learner."""
        c = self.config
        adapters = lora.init_adapters(params, targets=c.lora_targets, rank=c.lora_rank,
                                      key=jax.random.fold_in(jax.random.key(c.seed), 1))
        ash = sharding.tree_shardings(adapters, lora.adapter_logical_axes(adapters), self.mesh)
        return {"lora": jax.device_put(adapters, ash)}, {"lora": ash}, {"policy": params}, {"policy": policy_sh}

    # ------------------------------------------------------------------ public state

    @property
    def params(self):
        """The policy params (sharded on the mesh); under LoRA, base + adapters merged."""
        if "frozen" in self._state:
            if self.abstract:  # shapes and shardings of the merged params: the base's
                return self._state["frozen"]["policy"]
            if not hasattr(self, "_merge"):
                sh = self._frozen_sh["policy"]
                self._merge = jax.jit(functools.partial(lora.merge, scale=self.config.lora_scale),
                                      out_shardings=sh)
            return self._merge(self._state["frozen"]["policy"], self._state["trainable"]["lora"])
        return self._state["trainable"]["policy"]

    def _reference(self):
        """The frozen KL reference's params (None without a KL term)."""
        if self.config.kl_coef and "frozen" in self._state:
            return self._state["frozen"]["policy"]
        return self._ref

    @property
    def adapters(self):
        """The LoRA adapters (None without LoRA)."""
        return self._state["trainable"].get("lora")

    @property
    def state(self) -> dict:
        return self._state

    @property
    def version(self) -> int:
        """Policy version: completed `update` calls."""
        return int(self._state["version"])

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return int(self._state["step"])

    def compile_count(self) -> int:
        """How many train-step programs have been compiled (one per packed shape)."""
        return sum(f._cache_size() for f in self._train_steps.values())

    # ------------------------------------------------------------------ jitted functions

    def _train_step(self, keys: tuple):
        if keys not in self._train_steps:
            bsh = {k: self._batch_sh for k in keys}
            self._train_steps[keys] = make_train_step(self.config, self.model_config, self._opt, self._state_sh,
                                                      bsh, self._rep)
        return self._train_steps[keys]

    def _score_fn(self, keys: tuple):
        if keys not in self._score_fns:
            bsh = {k: self._batch_sh for k in keys}
            self._score_fns[keys] = make_score_fn(self.config, self.model_config, self._trainable_sh, self._ref_sh,
                                                  bsh, self._batch_sh, self._frozen_sh)
        return self._score_fns[keys]

    @functools.cached_property
    def _estimator(self):
        c = self.config
        fn = adv_lib.ESTIMATORS.get(c.algorithm)
        return jax.jit(functools.partial(fn, eps=c.grpo_eps, gamma=c.gamma, lam=c.gae_lambda,
                                         whiten=c.whiten_advantages))

    # ------------------------------------------------------------------ data movement

    def _to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self._batch_sh, v) for k, v in batch.items()}

    def _to_local(self, x: jax.Array) -> np.ndarray:
        if jax.process_count() == 1:
            return np.asarray(x)
        return np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, self._batch_sh.spec))

    def _plan(self, lengths: np.ndarray) -> batching.PackPlan:
        c = self.config
        plan = batching.plan_packing(lengths, seq_buckets=c.seq_buckets, micro_batch=self._local_micro, pack=c.pack,
                                     min_micro=c.min_micro_batches)
        if jax.process_count() > 1:  # every process must feed the same global shape
            shapes = multihost_utils.process_allgather(np.array([plan.num_micro, plan.seq_len]))
            n, t = shapes.reshape(-1, 2).max(0)
            if (n, t) != (plan.num_micro, plan.seq_len):
                plan = batching.plan_packing(lengths, seq_buckets=c.seq_buckets, micro_batch=self._local_micro,
                                             pack=c.pack, min_micro=int(n), min_seq_len=int(t))
        return plan

    # ------------------------------------------------------------------ update

    def _fresh(self, trajectories: Sequence[Trajectory]) -> tuple[list[Trajectory], int]:
        """Drops whole groups with a trajectory older than max_policy_lag versions."""
        lag_max = self.config.max_policy_lag
        if lag_max is None:
            return list(trajectories), 0
        v = self.version
        stale = {t.group_id for t in trajectories if v - t.oldest_version > lag_max}  # per token when known
        kept = [t for t in trajectories if t.group_id not in stale]
        return kept, len(trajectories) - len(kept)

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """One policy update (num_minibatches optimizer steps) on these trajectories.

        Same as `train(prepare(trajectories))`. Returns scalar metrics: learner/* (loss
        terms, kl, entropy, clip_frac, grad_norm...), batch/* (tokens, rewards,
        advantages, policy lag), perf/* (tokens/s, FLOP/s, compiles) and time/*.
        """
        prepared = self.prepare(trajectories)
        if prepared.batches:
            return self.train(prepared)
        return prepared.metrics | {"learner/skipped": 1.0}

    def prepare(self, trajectories: Sequence[Trajectory]) -> Prepared:
        """Filters, packs, scores and computes advantages: the packed numpy batches to train on."""
        c = self.config
        t_start = time.perf_counter()
        version = self.version
        trajs, dropped = self._fresh(trajectories)
        trajs, nonfinite = guard.drop_nonfinite(trajs)  # issue 31: NaN/inf rewards or log-probs: whole group out
        metrics: dict[str, float] = {"batch/dropped_stale": float(dropped), "batch/dropped_nonfinite": float(nonfinite)}
        if not trajs:
            return Prepared(batches=[], lengths=[], metrics=metrics)

        lengths = np.array([min(len(t) - 1, self._max_len) for t in trajs])
        L = batching.seq_bucket(int(lengths.max()), c.seq_buckets)
        ep = batching.make_episodes(trajs, L)
        N = len(ep)
        minis = batching.split_minibatches(ep, c.num_minibatches)
        plans = [self._plan(ep.lengths[rows]) for rows in minis]
        subs = [ep.select(rows) for rows in minis]
        batches = [{"inputs": plan.pack(sub.inputs), "targets": plan.pack(sub.targets),
                    "positions": plan.positions, "segment_ids": plan.segment_ids}
                   for plan, sub in zip(plans, subs, strict=True)]
        t_pack = time.perf_counter()

        # -- score with the params before the update (when something needs it)
        need_prox = c.off_policy != "none" and c.num_minibatches > 1
        scored: dict[str, np.ndarray] = {}
        if c.uses_values or c.kl_coef > 0 or need_prox:
            for rows, plan, b in zip(minis, plans, batches, strict=True):
                res = self._score_fn(tuple(sorted(b)))(self._state["trainable"], self._reference(), self._to_global(b),
                                                       self._state.get("frozen"))
                for k, v in res.items():
                    full = scored.setdefault(k, np.zeros((N, L), np.float32))
                    full[rows] = plan.unpack(self._to_local(v), (len(rows), L))
        t_score = time.perf_counter()

        # -- advantages (episode layout)
        rewards, token_rewards = ep.rewards, ep.token_rewards
        if c.kl_coef and c.kl_mode == "reward":
            kl = np.asarray(losses.kl_penalty(scored["logprobs"], scored["ref_logprobs"], c.kl_estimator)) * ep.mask
            token_rewards = token_rewards - c.kl_coef * kl
            rewards = rewards - c.kl_coef * kl.sum(-1)
            metrics["learner/kl"] = float(kl.sum() / max(ep.mask.sum(), 1))
        n_pad = batching.next_pow2(N)
        pad = lambda x, fill=0: np.concatenate([x, np.full((n_pad - N, *x.shape[1:]), fill, x.dtype)])  # noqa: E731
        inputs = adv_lib.AdvantageInputs(
            mask=pad(ep.mask), rewards=pad(rewards), group=pad(ep.group), valid=pad(ep.valid, False),
            token_rewards=pad(token_rewards), values=pad(scored["values"]) if "values" in scored else None)
        advantages, returns = self._estimator(inputs)
        advantages = np.asarray(advantages)[:N]
        returns = None if returns is None else np.asarray(returns)[:N]

        for rows, plan, sub, b in zip(minis, plans, subs, batches, strict=True):
            # Normalized over the global mini-batch: every process's tokens and sequences.
            totals = batching.loss_counts(sub)
            if jax.process_count() > 1:
                totals = multihost_utils.process_allgather(totals).reshape(-1, 2).sum(0)
            w, mw = batching.loss_weights(sub, c.loss_agg_mode, self._agg_norm, totals=totals)
            b.update(weights=plan.pack(w), mean_weights=plan.pack(mw), advantages=plan.pack(advantages[rows]),
                     behavior_logprobs=plan.pack(sub.behavior_logprobs))
            if need_prox:
                b["proximal_logprobs"] = plan.pack(scored["logprobs"][rows])
            if c.kl_coef and c.kl_mode == "loss":
                b["ref_logprobs"] = plan.pack(scored["ref_logprobs"][rows])
            if c.uses_values:
                b["old_values"] = plan.pack(scored["values"][rows])
                b["returns"] = plan.pack(returns[rows])
        t_adv = time.perf_counter()

        model_tokens = ep.mask.sum()
        real = float(ep.lengths.sum())
        lags = version - ep.versions
        n_global = float(N) if jax.process_count() == 1 else float(multihost_utils.process_allgather(np.int32(N)).sum())
        metrics |= {
            "batch/trajectories": float(N), "batch/trajectories_global": n_global, "batch/tokens": real, "batch/model_tokens": float(model_tokens),
            # padding inside the micro-batches that run (all-padding ones are skipped)
            "batch/pad_fraction": 1.0 - real / float(sum(p.computed_positions for p in plans)),
            "batch/truncated_tokens": float(ep.truncated_tokens),
            "batch/reward_mean": float(ep.rewards.mean()), "batch/reward_std": float(ep.rewards.std()),
            "batch/advantage_mean": float((advantages * ep.mask).sum() / max(model_tokens, 1)),
            "batch/advantage_abs_mean": float((np.abs(advantages) * ep.mask).sum() / max(model_tokens, 1)),
            "batch/lag_mean": float(lags.mean()), "batch/lag_max": float(lags.max()),
            # model tokens sampled by an older policy than the learner's (per token: mid-episode swaps)
            "batch/stale_token_frac": float(((ep.token_versions >= 0) & (ep.token_versions < version)).sum()
                                            / max(model_tokens, 1)),
            "batch/seq_len": float(plans[0].seq_len), "batch/num_micro": float(plans[0].num_micro),
            "time/pack_s": t_pack - t_start, "time/score_s": t_score - t_pack, "time/advantages_s": t_adv - t_score,
        }
        return Prepared(batches=batches, lengths=[sub.lengths for sub in subs], metrics=metrics)

    def train(self, prepared: Prepared) -> dict[str, float]:
        """The optimizer steps of one update (one per minibatch of `prepared`); bumps the version."""
        c = self.config
        t0 = time.perf_counter()
        metrics = []
        for b in prepared.batches:
            step_fn = self._train_step(tuple(sorted(b)))
            self._state, m = step_fn(self._state, self._to_global(b))
            metrics.append(m)
        metrics = jax.device_get(metrics)  # waits for the steps
        self._state["version"] = jax.device_put(jnp.asarray(self.version + 1, jnp.int32), self._rep)
        train_s = time.perf_counter() - t0

        out = dict(prepared.metrics)
        for k in metrics[0]:
            out[f"learner/{k}"] = float((np.max if k.endswith("_max_abs") else np.mean)([m[k] for m in metrics]))
        out["learner/lr"] = float(optimizer.learning_rate_schedule(
            c.lr, warmup_steps=c.warmup_steps, schedule=c.schedule, total_steps=c.total_steps,
            final_lr_ratio=c.final_lr_ratio)(self.step - 1))
        nproc = jax.process_count()
        real = float(sum(x.sum() for x in prepared.lengths)) * nproc
        update_s = train_s + sum(v for k, v in prepared.metrics.items() if k.startswith("time/"))
        out |= {
            "time/train_s": train_s, "time/update_s": update_s,
            "perf/tokens_per_s": real / update_s,
            "perf/train_tokens_per_s": real / train_s,
            # model FLOPs (6 N per token + causal attention) over the real tokens, per second of train steps
            "perf/train_flops_per_s": train_flops(self.model_config, np.concatenate(prepared.lengths)) * nproc / train_s,
            "perf/compiles": float(self.compile_count()),
        }
        return out

    # ------------------------------------------------------------------ checkpoints

    def _checkpointer(self) -> Checkpointer:
        if self._ckpt is None:
            raise ValueError("this Learner has no checkpoint_dir (LearnerConfig.checkpoint_dir)")
        return self._ckpt

    def save(self, step: int | None = None, *, data_state: dict | None = None, force: bool = False) -> bool:
        """Starts an async save of the train state at `step` (default: optimizer steps taken).

        `data_state` is a JSON-serializable dict that lets the data pipeline resume (e.g. a
        grain iterator's `get_state()`; decode bytes to str first). Returns False when
        checkpoint_every skips this step.
        """
        step = self.step if step is None else step
        guard.check_finite(self._state["trainable"], f"checkpoint step {step}")  # issue 31: never save NaN weights
        cfg = {"learner": dataclasses.asdict(self.config), "model": dataclasses.asdict(self.model_config)}
        saved = {k: v for k, v in self._state.items() if k != "frozen"}  # LoRA: the adapters, not the base
        return self._checkpointer().save(step, saved, data=data_state, config=cfg, force=force)

    def restore(self, step: int | None = None) -> dict | None:
        """Loads the checkpoint at `step` (default latest) into this learner; returns its data state.

        Restores params, optimizer state, step, version and RNG. The frozen KL reference is
        not in checkpoints: it stays the params this Learner was built with (build it from
        the base model, then restore). Returns None (and changes nothing) when the directory
        holds no checkpoint.
        """
        ck = self._checkpointer()
        if step is None and ck.latest_step() is None:
            return None
        frozen = self._state.get("frozen")
        state, data, _ = ck.restore(abstract_like({k: v for k, v in self._state.items() if k != "frozen"}), step)
        self._state = state if frozen is None else dict(state, frozen=frozen)
        return data

    def wait_for_checkpoint(self) -> None:
        if self._ckpt is not None:
            self._ckpt.wait()

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
