"""The embedded JAX generation engine: KV slots, continuous batching, prefix reuse.

Design (one scheduler step = admit, prefill, one decode step):

* **KV slots.** One cache {"k", "v": [L, num_slots, max_len, KVH, Dh]} lives on
  the engine's devices. A running request owns one slot; its tokens sit
  contiguously from index 0.
* **Continuous batching.** Between decode steps, waiting requests take free
  slots (the lowest free one) and are prefilled (several at once, padded to a
  few bucketed shapes); then one jitted decode step advances every running
  request: it runs the fewest first slots (8, 16, 32, ... num_slots) that hold
  them all (idle slots among them write nothing). Finished requests leave at
  once; nobody waits for a batch to drain.
* **Fixed shapes.** Prefill runs at (rows, tokens) buckets (powers of
  `bucket_growth`, capped by `max_prefill_batch` / `prefill_chunk`; longer
  prompts are prefilled in chunks), decode at a row bucket with an attention
  window of 64, 128, ... max_len cache rows (`decode_model`). After
  every bucket has been seen once nothing recompiles; `compile_counts` counts
  traces.
* **Sampling on device** (`agentic.inference.sampling`): per-request
  temperature, top-k, top-p and seed; log-probs per the protocol definition.
* **Prefix reuse.** When a request ends, its slot keeps the KV of
  prompt + output[:-1], tagged with its `session_id`. A later request whose
  prompt extends that sequence (the next turn of the episode) reuses the slot
  and prefills only the tokens after the longest common prefix
  (`Completion.cached_tokens` reports how many were reused). With prefix sharing
  off, idle slots without a session are matched by content; slots are evicted
  least recently used.
* **Prefix sharing across sessions.** A request whose prompt shares at least
  `share_prefix_min` leading tokens with what another slot holds (any session,
  running or idle), or with the prompt of a request admitted in the same step
  (the samples of a GRPO group, the common instruction of every task), gets
  those KV rows copied slot to slot on device and prefills only the rest: a
  shared prefix is prefilled once, not once per episode.
* **Weight swap.** `update_params(params, version)` places the new params on
  the engine's devices with the same shardings and dtypes (so nothing
  recompiles) and swaps them in between two decode steps.
* **Devices.** `devices` (default: the first local device) form a mesh
  ("data", "model"); with `tp_size > 1` the params' heads / kv_heads / mlp /
  vocab axes are split over "model", and slots are split over "data".

`EngineCore` is the synchronous scheduler (tests drive it step by step);
`JaxEngine` runs it on a background thread behind the async `Generator` API.

Size: one file past 400 lines because the scheduler's parts (slots, admission, prefix
reuse and sharing, prefill waves, decode, weight swap) all read and write the same slot
table and cache between two steps; split, each piece would need the others' invariants.
The model math is in `decode_model.py`, sampling in `sampling.py`, stops in `stops.py`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agentic import models, sharding
from agentic.core import Completion, GenerateRequest, Generator, GeneratorError, WeightPublisher
from agentic.inference.decode_model import cached_forward
from agentic.inference.sampling import sample
from agentic.inference.stops import Finish, StopChecker, completion_text

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Capacity and shapes of the engine.

    Attributes:
      num_slots: KV slots = most requests decoding at once (SGLang's
        --max-running-requests). Idle slots also hold cached prefixes.
      max_len: tokens per slot, prompt + output (SGLang's --context-length).
      prefill_chunk: most new tokens prefilled for one request in one call.
      max_prefill_batch: most requests prefilled in one call.
      min_prefill_bucket: smallest prefill token bucket.
      bucket_growth: ratio between consecutive row buckets, and token buckets unless
        `token_bucket_growth` is set (fewer buckets = fewer compilations, more padding).
      token_bucket_growth: ratio between consecutive prefill token buckets (None:
        bucket_growth). A request is prefilled in chunks of the largest bucket it fills.
      min_decode_kv: smallest decode attention window; a decode step attends
        the first 64, 128, 256, ... cache rows (doubling up to max_len), the
        smallest window holding every running sequence.
      min_decode_rows: smallest decode batch; a decode step runs the first 8, 16,
        32, ... slots (doubling up to num_slots), the fewest holding every running
        request (new requests take the lowest free slot).
      cache_dtype: KV cache dtype; None = the model's compute dtype.
      tp_size: devices per model replica ("model" mesh axis); the rest of
        `devices` split the slots ("data" axis).
      seed: draws the seeds of requests that do not set one.
      share_prefix_min: shortest common prefix worth copying from another slot
        (a copy of KV rows instead of prefilling them); 0 disables sharing.
    """

    num_slots: int = 16
    max_len: int = 2048
    prefill_chunk: int = 512
    max_prefill_batch: int = 8
    min_prefill_bucket: int = 16
    bucket_growth: int = 4
    token_bucket_growth: int | None = None
    min_decode_kv: int = 64
    cache_dtype: str | None = None
    min_decode_rows: int = 8
    tp_size: int = 1
    seed: int = 0
    share_prefix_min: int = 16

    def __post_init__(self):
        if self.share_prefix_min < 0:
            raise ValueError(f"share_prefix_min must be >= 0, got {self.share_prefix_min}")
        for f in ("num_slots", "max_len", "prefill_chunk", "max_prefill_batch", "min_prefill_bucket",
                  "min_decode_kv", "min_decode_rows", "tp_size"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.bucket_growth < 2 or (self.token_bucket_growth is not None and self.token_bucket_growth < 2):
            raise ValueError(f"bucket_growth and token_bucket_growth must be >= 2, got {self.bucket_growth}, "
                             f"{self.token_bucket_growth}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")


def _buckets(lo: int, hi: int, growth: int) -> tuple[int, ...]:
    out, b = [], max(1, lo)
    while b < hi:
        out.append(b)
        b *= growth
    out.append(hi)
    return tuple(sorted(set(out)))


def _fit(buckets: Sequence[int], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    neq = np.nonzero(a[:m] != b[:m])[0]
    return int(neq[0]) if len(neq) else m


def param_shardings(config: models.ModelConfig, params: Any, mesh: Mesh) -> Any:
    """NamedShardings for params: heads, MLP and vocab split over "model" where divisible."""
    return sharding.tree_shardings(params, models.param_logical_axes(config), mesh, sharding.ENGINE_RULES)


# ----------------------------------------------------------------------------- request state


@dataclasses.dataclass(eq=False)
class _Request:
    req: GenerateRequest
    callback: Callable[[Completion], None]
    prompt: np.ndarray
    seed: int
    stopper: StopChecker
    submitted: float
    slot: int = -1
    cached: int = 0
    todo: np.ndarray | None = None  # prompt tokens still to prefill
    pos: int = 0  # next cache index to write
    pending: int = -1  # sampled token not yet in the cache
    share_from: tuple[int, int] | None = None  # (source slot, rows) to copy before prefilling
    share_after: _Request | None = None  # the source is this request's prompt, prefilled this step
    out: list = dataclasses.field(default_factory=list)
    lps: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _Slot:
    tokens: np.ndarray  # tokens whose KV is valid, from index 0
    session: str | None = None
    running: _Request | None = None
    last_used: int = 0


class EngineCore:
    """The synchronous scheduler; not thread-safe except `submit` / `release` / `update_params`.

    Args:
      config: the model's ModelConfig.
      params: its params (any devices; placed on `devices`).
      tokenizer: needed for stop strings and EOS (optional for token-only use).
      engine_config: capacity and shapes.
      devices: devices to run on (default: the first local device).
      eos_token_ids: override the tokenizer's EOS id(s).
    """

    def __init__(self, config: models.ModelConfig, params: Any, tokenizer: Any = None,
                 engine_config: EngineConfig = EngineConfig(), *, devices: Sequence[Any] | None = None,
                 eos_token_ids: Sequence[int] | None = None, weight_version: int = 0, abstract: bool = False):
        self.config = config
        self.abstract = abstract
        self.ec = ec = engine_config
        self.tokenizer = tokenizer
        devices = list(devices) if devices is not None else [jax.local_devices()[0]]
        if len(devices) % ec.tp_size:
            raise ValueError(f"tp_size {ec.tp_size} does not divide the {len(devices)} devices")
        n_data = len(devices) // ec.tp_size
        self.mesh = Mesh(np.array(devices).reshape(n_data, ec.tp_size), ("data", "model"))
        self.devices = devices
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
            eos_token_ids = () if eos is None else (eos if isinstance(eos, (list, tuple)) else (eos,))
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)

        self.param_shardings = param_shardings(config, params, self.mesh)
        if abstract:  # shapes and shardings only (ahead-of-time compiles for a TPU topology)
            self.params = jax.tree.map(lambda p, sh: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=sh), params,
                                       self.param_shardings)
        else:
            self.params = jax.device_put(params, self.param_shardings)
        self.weight_version = int(weight_version)
        kvh = config.num_kv_heads
        cache_spec = P(None, "data" if ec.num_slots % n_data == 0 else None, None,
                       "model" if kvh % ec.tp_size == 0 else None, None)
        self.cache_sharding = NamedSharding(self.mesh, cache_spec)
        self.replicated = NamedSharding(self.mesh, P())
        cache_dtype = ec.cache_dtype or config.dtype
        make_cache = jax.jit(lambda: models.init_cache(config, ec.num_slots, ec.max_len, cache_dtype),
                             out_shardings={"k": self.cache_sharding, "v": self.cache_sharding})
        if abstract:
            self.cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.cache_sharding),
                                      jax.eval_shape(make_cache))
        else:
            self.cache = make_cache()

        self.row_buckets = _buckets(1, min(ec.max_prefill_batch, ec.num_slots), ec.bucket_growth)
        self.len_buckets = _buckets(ec.min_prefill_bucket, min(ec.prefill_chunk, ec.max_len),
                                    ec.token_bucket_growth or ec.bucket_growth)
        self.kv_buckets = _buckets(min(ec.min_decode_kv, ec.max_len), ec.max_len, 2)
        # a decode step runs the first slots, the fewest (a bucket) holding every running request;
        # with the slots split over devices ("data" axis) it always runs them all
        self.decode_row_buckets = (_buckets(min(ec.min_decode_rows, ec.num_slots), ec.num_slots, 2)
                                   if n_data == 1 else (ec.num_slots,))
        self.compile_counts: collections.Counter = collections.Counter()
        self.stats = collections.Counter()  # token / call counts, and *_s wall seconds
        self._build_fns()

        self.slots = [_Slot(tokens=np.zeros(0, np.int32)) for _ in range(ec.num_slots)]
        self._clock = 0
        self._waiting: collections.deque[_Request] = collections.deque()
        self._inbox: collections.deque = collections.deque()  # thread-safe appends
        self._lock = threading.Lock()
        self._pending_params: tuple[Any, int, bool, threading.Event] | None = None
        self._rng = np.random.default_rng(ec.seed)

    # ------------------------------------------------------------------ jitted functions

    def _build_fns(self):
        config = self.config
        counts = self.compile_counts
        rep = self.replicated
        cs = {"k": self.cache_sharding, "v": self.cache_sharding}
        reduce_attention = all(d.platform == "cpu" for d in self.devices)
        max_len = self.ec.max_len

        def prefill(params, cache, slots, tokens, positions, last, temp, top_k, top_p, seeds, steps):
            counts[f"prefill[{tokens.shape[0]}x{tokens.shape[1]}]"] += 1
            logits, cache = cached_forward(config, params, cache, tokens, positions, max_len, slots=slots, last=last)
            tok, lp = sample(logits, temp, top_k, top_p, seeds, steps)
            return cache, tok, lp

        def decode(params, cache, tokens, positions, temp, top_k, top_p, seeds, steps, kv_len):
            counts[f"decode[{tokens.shape[0]}xkv{kv_len}]"] += 1
            logits, cache = cached_forward(config, params, cache, tokens[:, None], positions[:, None], kv_len,
                                           reduce_attention=reduce_attention)
            tok, lp = sample(logits, temp, top_k, top_p, seeds, steps)
            return cache, tok, lp

        def copy_slot(cache, src, dst):
            counts["copy_slot"] += 1
            return jax.tree.map(lambda c: c.at[:, dst].set(c[:, src]), cache)

        self._copy_slot = jax.jit(copy_slot, donate_argnums=(0,), out_shardings=cs)
        self._prefill = jax.jit(prefill, donate_argnums=(1,), out_shardings=(cs, rep, rep))
        self._decode = jax.jit(decode, donate_argnums=(1,), out_shardings=(cs, rep, rep),
                               static_argnames=("kv_len",))

    def lower_programs(self) -> dict[str, Any]:
        """Every jitted program of the engine lowered at its largest shapes on abstract inputs (with
        the engine's shardings): {"engine_prefill", "engine_decode", "engine_copy_slot"}. For
        ahead-of-time compiles (tools/aot_check.py); works on an abstract engine."""
        def arr(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=self.replicated)

        cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.cache_sharding),
                             self.cache)
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.params)
        i32, f32 = np.int32, np.float32

        def samp(n):
            return arr((n,), f32), arr((n,), i32), arr((n,), f32), arr((n,), i32), arr((n,), i32)

        rows, T = self.row_buckets[-1], self.len_buckets[-1]
        n = self.decode_row_buckets[-1]
        return {
            "engine_prefill": self._prefill.lower(params, cache, arr((rows,), i32), arr((rows, T), i32),
                                                  arr((rows, T), i32), arr((rows,), i32), *samp(rows)),
            "engine_decode": self._decode.lower(params, cache, arr((n,), i32), arr((n,), i32), *samp(n),
                                                kv_len=self.kv_buckets[-1]),
            "engine_copy_slot": self._copy_slot.lower(cache, arr((), i32), arr((), i32)),
        }

    # ------------------------------------------------------------------ thread-safe entry points

    def submit(self, request: GenerateRequest, callback: Callable[[Completion], None]) -> None:
        """Queues a request; `callback(completion)` runs on the stepping thread when it ends.

        Raises:
          ValueError: the prompt is empty or does not fit the context length.
        """
        prompt = np.asarray(list(request.prompt_ids), np.int32)
        if prompt.ndim != 1 or len(prompt) == 0:
            raise ValueError("prompt_ids must be a non-empty list of token ids")
        if len(prompt) >= self.ec.max_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the context length is {self.ec.max_len}")
        if prompt.min() < 0 or prompt.max() >= self.config.vocab_size:
            raise ValueError(f"prompt_ids must be in [0, {self.config.vocab_size})")
        p = request.params
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else set(self.eos_token_ids))
        stopper = StopChecker(max_new_tokens=p.max_new_tokens, stop=p.stop, stop_token_ids=stop_ids,
                              tokenizer=self.tokenizer)
        seed = p.seed if p.seed is not None else int(self._rng.integers(0, 2**31 - 1))
        r = _Request(req=request, callback=callback, prompt=prompt, seed=int(seed) & 0x7FFFFFFF,
                     stopper=stopper, submitted=time.perf_counter())
        self._inbox.append(("submit", r))

    def release(self, session_id: str) -> None:
        """Forgets an ended episode's cached prefix (its slot becomes free)."""
        self._inbox.append(("release", session_id))

    def warmup(self) -> int:
        """Compiles every bucketed prefill and decode program before serving; returns how many.

        Runs each shape once on rows whose positions are all -1, so nothing is written
        to the KV cache. Call before anything steps the engine (`launch_server --warmup`
        does); like SGLang's startup warmup, it moves compile time out of the first requests.
        """
        before = sum(self.compile_counts.values())
        tok = None
        for rows in self.row_buckets:
            samp = self._sampling_arrays([None] * rows, rows)
            for t in self.len_buckets:
                self.cache, tok, _ = self._prefill(
                    self.params, self.cache, np.arange(rows, dtype=np.int32), np.zeros((rows, t), np.int32),
                    np.full((rows, t), -1, np.int32), np.zeros(rows, np.int32), *samp)
        if self.ec.share_prefix_min:  # slot 0 onto itself: a no-op that compiles the copy
            self.cache = self._copy_slot(self.cache, np.int32(0), np.int32(0))
        for n in self.decode_row_buckets:
            samp = self._sampling_arrays([None] * n, n)
            for kv_len in self.kv_buckets:
                self.cache, tok, _ = self._decode(self.params, self.cache, np.zeros(n, np.int32),
                                                  np.full(n, -1, np.int32), *samp, kv_len=kv_len)
        jax.block_until_ready(tok)
        return sum(self.compile_counts.values()) - before

    def flush_cache(self) -> None:
        """Drops every cached prefix of idle slots (running requests are untouched)."""
        self._inbox.append(("flush", None))

    def update_params(self, params: Any, version: int, *, flush_cache: bool = True,
                      wait: bool = False, timeout: float | None = None) -> threading.Event:
        """Swaps in new weights between two decode steps, without recompiling.

        `params` may live on any devices (e.g. the learner's); it is resharded
        with `jax.device_put` onto this engine's devices and cast to the served
        dtypes. Requests in flight continue on the new weights; their remaining
        tokens (and the Completion's `weight_version`) come from `version`.

        Args:
          params: a pytree with the same structure and shapes as the served params.
          version: the new weight version (reported in every later Completion).
          flush_cache: drop cached prefixes computed with the old weights.
          wait: block until the swap happened (needs the stepping thread running).

        Returns:
          an Event set once the new weights are live.
        """
        flat_new, tree_new = jax.tree.flatten(params)
        flat_old, tree_old = jax.tree.flatten(self.params)
        if tree_new != tree_old:
            raise ValueError(f"update_params: param tree differs from the served one:\n{tree_new}\nvs\n{tree_old}")
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_old, strict=True):
            if tuple(a.shape) != tuple(b.shape):
                raise ValueError(f"update_params: {jax.tree_util.keystr(path)} has shape {tuple(a.shape)}, "
                                 f"served {tuple(b.shape)}")
        placed = jax.tree.map(lambda x, s, old: jax.device_put(x, s).astype(old.dtype),
                              params, self.param_shardings, self.params)
        done = threading.Event()
        with self._lock:
            if self._pending_params is not None:  # superseded before it was applied
                self._pending_params[3].set()
            self._pending_params = (placed, int(version), flush_cache, done)
        if wait:
            done.wait(timeout)
        return done

    # ------------------------------------------------------------------ scheduling

    @property
    def busy(self) -> bool:
        return bool(self._inbox or self._waiting or self._pending_params
                    or any(s.running is not None for s in self.slots))

    @property
    def num_running(self) -> int:
        return sum(s.running is not None for s in self.slots)

    def _drain_inbox(self):
        while self._inbox:
            kind, arg = self._inbox.popleft()
            if kind == "submit":
                self._waiting.append(arg)
            elif kind == "release":
                for s in self.slots:
                    if s.session == arg:
                        s.session = None
                        if s.running is None:
                            s.tokens = np.zeros(0, np.int32)
            elif kind == "flush":
                for s in self.slots:
                    if s.running is None:
                        s.session, s.tokens = None, np.zeros(0, np.int32)

    def _apply_update(self):
        with self._lock:
            upd, self._pending_params = self._pending_params, None
        if upd is None:
            return
        params, version, flush, done = upd
        self.params = params
        self.weight_version = version
        self.stats["weight_updates"] += 1
        if flush:
            for s in self.slots:
                if s.running is None:
                    s.session, s.tokens = None, np.zeros(0, np.int32)
        done.set()

    def _pick_slot(self, r: _Request) -> tuple[int, int] | None:
        """(slot, reusable prefix length) for a waiting request, or None if all slots run."""
        idle = [i for i, s in enumerate(self.slots) if s.running is None]
        if not idle:
            return None
        sid = r.req.session_id
        limit = len(r.prompt) - 1  # at least one token is prefilled (its logits start the output)
        if sid is not None:
            for i in idle:
                if self.slots[i].session == sid:
                    return i, min(_lcp(self.slots[i].tokens, r.prompt), limit)
        free = [i for i in idle if self.slots[i].session is None]
        if free:
            if self.ec.share_prefix_min:
                # the lowest free slot keeps decode steps small (`decode_row_buckets`); a prefix
                # cached in another slot is copied from there (`_plan_share`)
                best = min(free)
            else:
                best = max(free, key=lambda i: (min(_lcp(self.slots[i].tokens, r.prompt), limit),
                                                -self.slots[i].last_used))
            return best, min(_lcp(self.slots[best].tokens, r.prompt), limit)
        lru = min(idle, key=lambda i: self.slots[i].last_used)
        self.stats["evictions"] += 1
        return lru, min(_lcp(self.slots[lru].tokens, r.prompt), limit)

    def _admit(self) -> list[_Request]:
        admitted = []
        while self._waiting:
            r = self._waiting[0]
            pick = self._pick_slot(r)
            if pick is None:
                break
            self._waiting.popleft()
            i, cached = pick
            s = self.slots[i]
            s.running, s.session = r, r.req.session_id
            s.tokens = r.prompt[:cached].copy()
            r.slot, r.cached, r.pos, r.todo = i, cached, cached, r.prompt[cached:]
            self._plan_share(r, admitted)
            admitted.append(r)
        return admitted

    def _plan_share(self, r: _Request, admitted: list[_Request]) -> None:
        """Picks the longest prefix of r's prompt held by another slot or an earlier admission."""
        if not self.ec.share_prefix_min:
            return
        limit = len(r.prompt) - 1
        best, source = r.cached + self.ec.share_prefix_min - 1, None
        for j, s in enumerate(self.slots):
            if j != r.slot and len(s.tokens) > best:
                n = min(_lcp(s.tokens, r.prompt), limit)
                if n > best:
                    best, source = n, (j, n)
        for leader in admitted:
            if len(leader.prompt) > best:
                n = min(_lcp(leader.prompt, r.prompt), limit)
                if n > best:
                    best, source = n, leader
        if isinstance(source, _Request):
            r.share_after = source
        elif source is not None:
            r.share_from = source

    def _copy_shared(self, r: _Request) -> None:
        """Copies r's planned shared prefix into its slot on device (before r is prefilled)."""
        if r.share_after is not None:
            src = r.share_after.slot
            n = min(_lcp(self.slots[src].tokens, r.prompt), len(r.prompt) - 1)
        elif r.share_from is not None:
            src, n = r.share_from
        else:
            return
        r.share_from = r.share_after = None
        if n <= r.cached:
            return
        self.cache = self._copy_slot(self.cache, np.int32(src), np.int32(r.slot))
        self.stats["shared_tokens"] += n - r.cached
        self.stats["shared_copies"] += 1
        self.slots[r.slot].tokens = r.prompt[:n].copy()
        r.cached, r.pos, r.todo = n, n, r.prompt[n:]

    def _sampling_arrays(self, reqs: Sequence[_Request | None], n: int):
        temp = np.zeros(n, np.float32)
        top_k = np.full(n, -1, np.int32)
        top_p = np.ones(n, np.float32)
        seeds = np.zeros(n, np.int32)
        steps = np.zeros(n, np.int32)
        for j, r in enumerate(reqs):
            if r is None:
                continue
            p = r.req.params
            temp[j], top_k[j], top_p[j] = p.temperature, p.top_k, p.top_p
            seeds[j], steps[j] = r.seed, len(r.out)
        return temp, top_k, top_p, seeds, steps

    def _prefill_all(self, admitted: list[_Request]):
        """Copies shared prefixes, then prefills what is left, in waves.

        A request sharing the prompt of another admitted in the same step waits for that
        one's prefill (the next wave); every other copy runs before any prefill writes.
        """
        wave = [r for r in admitted if r.share_after is None]
        later = [r for r in admitted if r.share_after is not None]
        finished: set[int] = set()
        while wave:
            for r in wave:
                self._copy_shared(r)
            for r in wave:
                self.stats["cached_tokens"] += r.cached
            self._prefill_rows(wave)
            finished |= {id(r) for r in wave}
            wave = [r for r in later if id(r.share_after) in finished]
            later = [r for r in later if id(r.share_after) not in finished]
            if later and not wave:  # cannot happen (leaders are admitted first); never strand a request
                for r in later:
                    r.share_after = None
                wave, later = later, []

    def _chunk(self, remaining: int) -> int:
        """Tokens of a request to prefill in its next call: the largest token bucket it fills.

        The rest goes in later calls, so a request pads at most its last, small chunk
        instead of rounding its whole prompt up to the next bucket (e.g. 130 tokens with
        buckets 64 and 256: 64 + 64 + 2, not 256).
        """
        n = min(remaining, self.ec.prefill_chunk)
        fits = [b for b in self.len_buckets if b <= n]
        return fits[-1] if fits else n

    def _prefill_rows(self, admitted: list[_Request]):
        """Prefills the new tokens of admitted requests in bucketed batches (chunked)."""
        todo = [r for r in admitted if len(r.todo)]
        while todo:
            todo.sort(key=lambda r: self._chunk(len(r.todo)))
            # one call per token bucket: take the rows that share the first row's bucket
            t_bucket = _fit(self.len_buckets, self._chunk(len(todo[0].todo)))
            group = [r for r in todo if self._chunk(len(r.todo)) <= t_bucket]
            group = group[: self.row_buckets[-1]]
            rows = _fit(self.row_buckets, len(group))
            used = {r.slot for r in group}
            spare = [i for i in range(self.ec.num_slots) if i not in used][: rows - len(group)]
            slots = np.array([r.slot for r in group] + spare, np.int32)
            tokens = np.zeros((rows, t_bucket), np.int32)
            positions = np.full((rows, t_bucket), -1, np.int32)
            last = np.zeros(rows, np.int32)
            sizes = [self._chunk(len(r.todo)) for r in group]
            for j, (r, n) in enumerate(zip(group, sizes, strict=True)):
                tokens[j, :n] = r.todo[:n]
                positions[j, :n] = np.arange(r.pos, r.pos + n)
                last[j] = n - 1
            samp = self._sampling_arrays(group + [None] * (rows - len(group)), rows)
            t0 = time.perf_counter()
            self.cache, tok, lp = self._prefill(self.params, self.cache, slots, tokens, positions, last,
                                                *samp)
            tok, lp = np.asarray(tok), np.asarray(lp)
            self.stats["prefill_s"] += time.perf_counter() - t0
            self.stats["prefill_calls"] += 1
            self.stats["prefill_padded_tokens"] += rows * t_bucket
            for j, (r, n) in enumerate(zip(group, sizes, strict=True)):
                s = self.slots[r.slot]
                s.tokens = np.concatenate([s.tokens, r.todo[:n]])
                r.pos += n
                r.todo = r.todo[n:]
                self.stats["prefill_tokens"] += n
                if not len(r.todo):
                    self._emit(r, int(tok[j]), float(lp[j]))
            todo = [r for r in todo if len(r.todo)]

    def _emit(self, r: _Request, token: int, logprob: float):
        r.out.append(token)
        r.lps.append(logprob)
        self.stats["generated_tokens"] += 1
        fin = r.stopper.check(r.out)
        if fin is None and r.pos >= self.ec.max_len:  # no room to write this token's KV
            fin = Finish("length", length=len(r.out))
        if fin is None:
            r.pending = token
        else:
            self._finish(r, fin)

    def _finish(self, r: _Request, fin: Finish):
        s = self.slots[r.slot] if r.slot >= 0 else None
        if s is not None:
            s.running = None
            self._clock += 1
            s.last_used = self._clock
        text = None
        if self.tokenizer is not None:
            try:
                text = completion_text(self.tokenizer, r.out, fin)
            except Exception:  # text is a convenience; never fail a completion over it
                text = None
        c = Completion(token_ids=tuple(r.out), logprobs=tuple(r.lps), finish_reason=fin.kind,
                       matched=fin.matched, weight_version=self.weight_version,
                       prompt_tokens=len(r.prompt), cached_tokens=r.cached, text=text)
        self.stats["completed"] += 1
        r.callback(c)

    def _decode_step(self):
        running = [s.running if s.running is not None and s.running.pending >= 0 else None
                   for s in self.slots]
        if not any(r is not None for r in running):
            return
        n = _fit(self.decode_row_buckets, max(i for i, r in enumerate(running) if r is not None) + 1)
        running = running[:n]
        tokens = np.zeros(n, np.int32)
        positions = np.full(n, -1, np.int32)
        for i, r in enumerate(running):
            if r is not None:
                tokens[i], positions[i] = r.pending, r.pos
        samp = self._sampling_arrays(running, n)
        kv_len = _fit(self.kv_buckets, int(positions.max()) + 1)
        t0 = time.perf_counter()
        self.cache, tok, lp = self._decode(self.params, self.cache, tokens, positions, *samp, kv_len=kv_len)
        tok, lp = np.asarray(tok), np.asarray(lp)
        self.stats["decode_s"] += time.perf_counter() - t0
        self.stats["decode_steps"] += 1
        for i, r in enumerate(running):
            if r is None:
                continue
            s = self.slots[i]
            s.tokens = np.append(s.tokens, np.int32(r.pending))
            r.pos += 1
            r.pending = -1
            self._emit(r, int(tok[i]), float(lp[i]))

    def step(self) -> None:
        """One scheduler iteration: weight swap, admissions + prefill, one decode step."""
        self._drain_inbox()
        self._apply_update()
        admitted = self._admit()
        if admitted:
            self._prefill_all(admitted)
        self._decode_step()

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.busy:
                return
            self.step()
        raise RuntimeError("engine did not go idle")

    def abort_all(self, message: str = "engine shut down") -> None:
        self._drain_inbox()
        for r in list(self._waiting) + [s.running for s in self.slots if s.running is not None]:
            self._finish(r, Finish("abort", matched=message))
        self._waiting.clear()

    def generate_sync(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        """Runs requests to completion on the calling thread (no background loop)."""
        out: list[Completion | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            self.submit(req, lambda c, i=i: out.__setitem__(i, c))
        self.run_until_idle()
        return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- async wrapper


class JaxEngine(Generator):
    """The embedded engine behind the async Generator protocol.

    A daemon thread steps `EngineCore` while requests are in flight; asyncio
    callers await futures that the thread resolves. JAX releases the GIL while
    it computes, so the event loop (env calls, HTTP) keeps running.

    Usage:
        engine = JaxEngine(config, params, tokenizer, EngineConfig(num_slots=32, max_len=4096))
        [c] = await engine.generate([GenerateRequest(prompt_ids=ids, params=SamplingParams(...),
                                                     session_id=episode_id)])
        await engine.release(episode_id)          # episode over: free its cached prefix
        engine.update_params(new_params, version) # from any thread; swapped between decode steps
    """

    def __init__(self, config: models.ModelConfig | None = None, params: Any = None, tokenizer: Any = None,
                 engine_config: EngineConfig = EngineConfig(), *, core: EngineCore | None = None, **kw):
        """Builds an EngineCore from (config, params, tokenizer, engine_config, devices=...),
        or steps an existing `core` (then nothing else may step it while this engine is open)."""
        self.core = core if core is not None else EngineCore(config, params, tokenizer, engine_config, **kw)
        self._wake = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="jax-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.core.tokenizer

    @property
    def weight_version(self) -> int:
        return self.core.weight_version

    def _notify(self):
        with self._wake:
            self._wake.notify()

    def _run(self):
        try:
            while True:
                with self._wake:
                    while not self._closed and not self.core.busy:
                        self._wake.wait(0.5)
                if self._closed:
                    break
                self.core.step()
        except BaseException as e:  # surface engine crashes to every waiter
            log.exception("engine loop crashed")
            self._error = e
        finally:
            self.core.abort_all("engine shut down" if self._error is None else f"engine error: {self._error}")

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        if self._closed or self._error is not None:
            raise GeneratorError(f"engine is closed{f': {self._error}' if self._error else ''}")
        loop = asyncio.get_running_loop()
        futures = []
        for req in requests:
            fut = loop.create_future()

            def done(c, fut=fut):
                try:
                    loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(c))
                except RuntimeError:  # the caller's event loop is gone
                    pass

            try:
                self.core.submit(req, done)
            except ValueError as e:
                raise GeneratorError(str(e)) from e
            futures.append(fut)
        self._notify()
        return list(await asyncio.gather(*futures))

    async def release(self, session_id: str) -> None:
        self.core.release(session_id)
        self._notify()

    def flush_cache(self) -> None:
        self.core.flush_cache()
        self._notify()

    def update_params(self, params: Any, version: int, *, flush_cache: bool = True,
                      wait: bool = True, timeout: float | None = 600.0) -> None:
        """Swaps weights between two decode steps (see `EngineCore.update_params`).

        Thread-safe; by default returns once the new weights are live.
        """
        done = self.core.update_params(params, version, flush_cache=flush_cache, wait=False)
        if not self._thread.is_alive():  # closed or crashed: nothing steps the core, swap here
            self.core._apply_update()
        self._notify()
        if wait and not done.wait(timeout):
            raise GeneratorError(f"weight update to version {version} not applied within {timeout} s")

    async def close(self) -> None:
        self._closed = True
        self._notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    def close_sync(self) -> None:
        self._closed = True
        self._notify()
        self._thread.join(30)


class EngineWeights(WeightPublisher):
    """Publishes learner params to an embedded engine: resharded onto its devices and swapped
    between decode steps, no recompile. A copy: the learner donates its buffers to its next step."""

    def __init__(self, engine: JaxEngine):
        self.engine = engine

    def publish(self, params: Any, version: int) -> None:
        self.engine.update_params(jax.tree.map(lambda x: x.copy(), params), version)

