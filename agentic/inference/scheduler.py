"""The embedded engine's scheduler (`EngineCore`): paged KV, continuous batching, prefix sharing.

Design (one scheduler step = weight swap, admit, prefill, one decode step):

* **Paged KV cache** (`kv_pages`). One pool of `num_pages` pages of `page_size` tokens lives
  on the engine's devices; a sequence holds the pages its positions reach, allocated as it
  grows (a prompt's at admission, one more each time decode crosses a page boundary), and
  gives them back when it is released or evicted. The cache's size is the page budget, not
  rows x max_len.
* **Admission by free pages.** A waiting request is admitted (FIFO) when a decode row is free
  and the pool can give the pages of its prompt beyond what it shares; idle cached sequences
  are evicted, least recently used first, to make room. Otherwise it waits.
* **Preemption by recompute.** When a decode step needs a page and none is free (after
  evicting every idle sequence), the most recently admitted other running request is
  preempted: its pages are released and it goes back to the front of the queue keeping its
  tokens; on re-admission its prompt + generated tokens are prefilled again (one prefill
  instead of holding pages) and it continues where it stopped (same sampling keys).
* **Continuous batching.** Between decode steps, waiting requests take free rows (the lowest
  free one) and are prefilled (several at once, padded to bucketed shapes); then one jitted
  decode step advances every running request: it runs the fewest first rows (8, 16, 32, ...
  num_slots) that hold them all. Finished requests leave at once.
* **Mixed steps** (`EngineConfig.mixed_prefill`). While requests decode, the step that admits
  new ones runs their first prefill call and the decode step as one forward pass (decode rows
  and prefill rows in one ragged step, `engine_mixed`), and admits about `prefill_chunk`
  prompt tokens per step, so arrivals stall the running requests by about one chunk each step.
* **Fixed shapes.** Prefill runs at (rows, tokens) buckets attending the smallest window of
  64, 128, ... max_len positions holding its rows (a max_len page table on the kernel path;
  longer prompts are prefilled in chunks), decode at a row bucket with a window of 64, 128,
  ... max_len positions' pages. After every bucket has been seen nothing recompiles;
  `compile_counts` counts traces.
* **Prefix reuse and sharing.** When a request ends its sequence stays cached (prompt +
  output[:-1]), tagged with its `session_id`; the session's next turn takes it over and
  prefills only the tokens after the longest common prefix. A request whose prompt shares at
  least `share_prefix_min` leading tokens with any sequence (running or idle, any session), or
  with a request admitted in the same step (a GRPO group's samples), holds that sequence's full
  pages read-only and copies only the partly filled page (copy on write): a shared prefix is
  prefilled once and stored once. `Completion.cached_tokens` reports the tokens reused.
* **Weight swap.** `update_params(params, version, running=...)` reshards the new params onto
  the engine's shardings (device to device, no host copy) and swaps them in between two decode
  steps. What happens to the requests running at that moment is the caller's choice:
  "keep" (default; a partial rollout: they stop at the next decode step, the weights change,
  they continue with the KV the old weights wrote, as NeMo-RL's in-flight updates do),
  "recompute" (they are retracted and their prompt + generated tokens prefilled again under
  the new weights, as AReaL's interruptible generation does) or "finish" (the swap waits
  until they have finished, no new request starting meanwhile: SGLang's update without a
  pause). Every generated token records the version that sampled it
  (`Completion.token_versions`).
* **Pause, continue, abort.** `pause(mode)` stops generation at the next step, with SGLang's
  modes: "in_place" (running requests keep their rows, KV and tokens), "retract" (they give
  their pages back and wait at the queue's front, prefilled again on continue), "abort"
  (every request ends with finish_reason abort and its partial output). While paused,
  submitted requests wait and weight updates land at once; `continue_generation()` resumes.
  `abort(key)` ends one request at the next step, frees its row and pages, and answers
  its callback with the tokens generated so far.
* **Abstract mode.** `EngineCore(..., abstract=True)` takes ShapeDtypeStruct params and any
  devices (also a TPU topology's, not addressable here); it builds shardings and programs but
  allocates nothing; `lower_programs()` lowers every program at its largest shapes (the AOT check).

Size: one file past 400 lines because admission, sharing, prefill waves, decode, preemption
and the weight swap all read and write the same rows, sequences and page pool between two
steps. The programs are in `engine_step.py`, pages in `kv_pages.py`, the model math in
`decode_model.py`, the async Generator in `engine.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from agentic import models
from agentic.core import Completion, GenerateRequest
from agentic.inference.decode_model import init_paged_cache
from agentic.inference.engine_config import EngineConfig, buckets, fit, lcp
from agentic.inference.engine_step import (
    EnginePrograms,
    attention_impl,
    cache_shape,
    cache_sharding,
    engine_mesh,
    kv_repeat,
    param_shardings,
    repeat_kv_heads,
    served_config,
)
from agentic.inference.kv_pages import KVSeq, PagePool
from agentic.inference.stops import Finish, StopChecker, completion_text

# What the requests running at a weight swap do (`update_params(running=...)`), and the pause
# modes (`pause(mode)`, SGLang's `/pause_generation` modes).
UPDATE_RUNNING = ("keep", "recompute", "finish")
PAUSE_MODES = ("in_place", "retract", "abort")


class _PendingUpdate(NamedTuple):
    """A weight swap waiting for the stepping thread."""
    params: Any
    version: int
    flush_cache: bool
    done: threading.Event
    running: str  # one of UPDATE_RUNNING


class _DecodeBatch(NamedTuple):
    """A decode step's inputs: rows 0..n-1 (None where nothing decodes) and their arrays."""
    running: list
    table: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    samp: tuple


def check_update_running(running: str, where: str) -> None:
    """Raises ValueError naming `where` unless `running` is one of UPDATE_RUNNING."""
    if running not in UPDATE_RUNNING:
        raise ValueError(f"{where}: running must be {_one_of(UPDATE_RUNNING)}, got {running!r}")


def _one_of(choices: Sequence[str]) -> str:
    """'a', 'b' or 'c'"""
    return ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"


@dataclasses.dataclass(eq=False)
class _Request:
    req: GenerateRequest
    callback: Callable[[Completion], None]
    prompt: np.ndarray
    seed: int
    stopper: StopChecker
    submitted: float
    ctx: np.ndarray | None = None  # tokens whose KV must exist: the prompt (+ output[:-1] after preemption)
    row: int = -1
    seq: KVSeq | None = None
    cached: int = -1  # tokens reused at first admission (reported)
    todo: np.ndarray | None = None  # ctx tokens still to prefill
    pos: int = 0  # next position to write
    pending: int = -1  # sampled token not yet in the cache
    share: tuple[KVSeq, int, Any] | None = None  # (source, tokens, same-step leader or None) to attach
    own: list = dataclasses.field(default_factory=list)  # pages allocated for its new tokens
    resume: bool = False  # preempted: its last prefill re-creates KV, samples nothing
    admitted_at: int = 0
    key: Any = None  # the caller's handle for `abort`
    out: list = dataclasses.field(default_factory=list)
    lps: list = dataclasses.field(default_factory=list)
    versions: list = dataclasses.field(default_factory=list)  # weight version that sampled each token


class EngineCore:
    """The synchronous scheduler; not thread-safe except `submit` / `release` / `update_params`.

    Args:
      config: the model's ModelConfig.
      params: its params (any devices; placed on `devices`), or with `abstract`, a pytree of
        jax.ShapeDtypeStruct (their shapes and dtypes are served).
      tokenizer: needed for stop strings and EOS (optional for token-only use).
      engine_config: capacity and shapes.
      devices: devices to run on (default: the first local device); with `abstract`, any
        devices, e.g. `jax.experimental.topologies.get_topology_desc(...).devices`.
      eos_token_ids: override the tokenizer's EOS id(s).
      weight_version: the version of `params`.
      abstract: build shardings and programs only (nothing allocated, placed, run or compiled);
        for `lower_programs`.
    """

    def __init__(self, config: models.ModelConfig, params: Any, tokenizer: Any = None,
                 engine_config: EngineConfig = EngineConfig(), *, devices: Sequence[Any] | None = None,
                 eos_token_ids: Sequence[int] | None = None, weight_version: int = 0, abstract: bool = False):
        self.config = config
        self.ec = ec = engine_config
        self.tokenizer = tokenizer
        self.abstract = abstract
        devices = list(devices) if devices is not None else [jax.local_devices()[0]]
        self.mesh = engine_mesh(devices, ec.tp_size)
        n_data = len(devices) // ec.tp_size
        self.devices = devices
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
            eos_token_ids = () if eos is None else (eos if isinstance(eos, (list, tuple)) else (eos,))
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)

        # the params as given / updated (`param_shardings`), and as served (`served_shardings`: with
        # tensor parallelism beyond the KV heads, each KV head repeated so every device holds one)
        self.param_shardings = param_shardings(config, params, self.mesh)
        self.kv_repeat = kv_repeat(config, ec.tp_size)
        self.served_config = served = served_config(config, ec.tp_size)
        self._param_shapes = jax.tree.map(lambda p: tuple(p.shape), params)
        served_shapes = jax.eval_shape(lambda p: repeat_kv_heads(p, self.kv_repeat), params)
        self.served_shardings = param_shardings(served, served_shapes, self.mesh)
        self._serve = jax.jit(lambda p: repeat_kv_heads(p, self.kv_repeat), out_shardings=self.served_shardings)
        self.cache_sharding = cache_sharding(served, ec, self.mesh)
        cache_dtype = np.dtype(ec.cache_dtype or config.dtype)
        shape = cache_shape(served, ec)
        self.cache_shapes = {"kv": jax.ShapeDtypeStruct(shape, cache_dtype, sharding=self.cache_sharding)}
        if abstract:
            self.params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                                       served_shapes, self.served_shardings)
            self.cache = self.cache_shapes
        else:
            placed = jax.device_put(params, self.param_shardings)
            self.params = self._serve(placed) if self.kv_repeat > 1 else placed
            self.cache = jax.jit(lambda: init_paged_cache(served, ec.total_pages, ec.page_size, cache_dtype),
                                 out_shardings={"kv": self.cache_sharding})()
        self.weight_version = int(weight_version)

        ps = ec.page_size
        self.row_buckets = buckets(1, min(ec.max_prefill_batch, ec.num_slots), ec.bucket_growth)
        self.len_buckets = buckets(ec.min_prefill_bucket, min(ec.prefill_chunk, ec.max_len),
                                   ec.token_bucket_growth or ec.bucket_growth)
        top = ec.pages_per_seq * ps
        self.kv_buckets = buckets(min(-(-ec.min_decode_kv // ps) * ps, top), top, 2)
        # a decode step runs the first rows, the fewest (a bucket) holding every running request;
        # with the rows split over devices ("data" axis) it always runs them all
        self.decode_row_buckets = (buckets(min(ec.min_decode_rows, ec.num_slots), ec.num_slots, 2)
                                   if n_data == 1 else (ec.num_slots,))
        self.compile_counts: collections.Counter = collections.Counter()
        self.stats = collections.Counter()  # token / call counts, and *_s wall seconds
        platform = devices[0].platform
        # prefill joins the decode step (`EngineConfig.mixed_prefill`; "auto": on accelerators)
        self.mixed = ec.mixed_prefill == "on" or (ec.mixed_prefill == "auto" and platform != "cpu")
        self.attention = attention_impl(served, ec, self.mesh, platform)
        self.programs = EnginePrograms(served, ec, self.mesh, self.cache_sharding,
                                       reduce_attention=platform == "cpu", counts=self.compile_counts,
                                       attention=self.attention)
        self.replicated = self.programs.replicated

        self.pool = PagePool(ec.total_pages, ps)
        self.rows: list[_Request | None] = [None] * ec.num_slots
        self.seqs: list[KVSeq] = []  # every sequence holding pages: running and idle (cached)
        self._clock = 0
        self._waiting: collections.deque[_Request] = collections.deque()
        self._inbox: collections.deque = collections.deque()  # thread-safe appends
        self._lock = threading.Lock()
        self._pending_params: _PendingUpdate | None = None
        self._live: dict[Any, _Request] = {}  # key -> request submitted and not yet finished
        self.paused: str | None = None  # the pause mode while paused
        self._rng = np.random.default_rng(ec.seed)

    # ------------------------------------------------------------------ AOT

    def lower_programs(self) -> dict[str, jax.stages.Lowered]:
        """Every distinct program the engine runs, lowered at its largest shapes.

        prefill at the largest rows x token bucket (attending a max_len page table), decode at
        num_slots rows and the max_len window, the page copy, and (`mixed_prefill`) the mixed
        step at both largest shapes in one pass; each on ShapeDtypeStructs with
        this core's NamedShardings. Works in abstract mode (nothing allocated): call
        `.compile().memory_analysis()` on each for a TPU topology's per-chip memory.
        """
        params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                              self.params, self.served_shardings)
        # Pallas lowers for the default device's chip: make it the engine's (a TPU topology's)
        with jax.default_device(self.devices[0]):
            return self.programs.lower(params, self.cache_shapes, self.row_buckets[-1], self.len_buckets[-1],
                                       self.decode_row_buckets[-1], self.ec.pages_per_seq, self.mixed)

    def _check_live(self, what: str) -> None:
        if self.abstract:
            raise RuntimeError(f"{what}: this EngineCore is abstract (built for lower_programs only)")

    # ------------------------------------------------------------------ thread-safe entry points

    def submit(self, request: GenerateRequest, callback: Callable[[Completion], None], key: Any = None) -> None:
        """Queues a request; `callback(completion)` runs on the stepping thread when it ends.

        `key` (any hashable, unique among requests in flight) names it for `abort`.

        Raises:
          ValueError: the prompt is empty or does not fit the context length.
        """
        self._check_live("submit")
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
        r = _Request(req=request, callback=callback, prompt=prompt, ctx=prompt, seed=int(seed) & 0x7FFFFFFF,
                     stopper=stopper, submitted=time.perf_counter(), key=key)
        self._inbox.append(("submit", r))

    def abort(self, key: Any, message: str = "aborted") -> None:
        """Ends the request submitted with `key` at the next step (waiting or running): its row
        and pages are freed and its callback gets the tokens generated so far, finish_reason
        "abort". A key that already finished is ignored."""
        self._inbox.append(("abort", (key, message)))

    def pause(self, mode: str = "in_place") -> None:
        """Stops generation at the next step (SGLang's `/pause_generation` modes).

        "in_place": running requests keep their rows, KV cache and tokens; "retract": they free
        their pages and wait at the queue's front (their prompt + output is prefilled again on
        continue); "abort": every waiting and running request ends now with its partial output.
        Requests submitted while paused wait; weight updates apply at once.
        """
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode must be {_one_of(PAUSE_MODES)}, got {mode!r}")
        self._inbox.append(("pause", mode))

    def continue_generation(self) -> None:
        """Resumes after `pause`: retracted requests are prefilled again, the rest continue."""
        self._inbox.append(("continue", None))

    def release(self, session_id: str) -> None:
        """Forgets an ended episode's cached sequence (its pages go back to the pool)."""
        self._inbox.append(("release", session_id))

    def flush_cache(self) -> None:
        """Drops every idle cached sequence (running requests are untouched)."""
        self._inbox.append(("flush", None))

    def warmup(self) -> int:
        """Compiles every bucketed prefill, decode and mixed program before serving; returns how many.

        Runs each shape once on rows whose positions are all -1, so nothing is written
        to the KV cache. Call before anything steps the engine (`launch_server --warmup`
        does); like SGLang's startup warmup, it moves compile time out of the first requests.
        """
        self._check_live("warmup")
        before = sum(self.compile_counts.values())
        tok = None
        windows = sorted({self._prefill_window(kv) for kv in self.kv_buckets})
        for rows in self.row_buckets:
            samp = self._sampling_arrays([None] * rows, rows)
            for t, w in ((t, w) for t in self.len_buckets for w in windows):
                self.cache, tok, _ = self.programs.prefill(
                    self.params, self.cache, np.zeros((rows, w), np.int32), np.zeros((rows, t), np.int32),
                    np.full((rows, t), -1, np.int32), np.zeros(rows, np.int32), *samp)
        if self.ec.share_prefix_min:  # page 0 onto itself: a no-op that compiles the copy
            self.cache = self.programs.copy_page(self.cache, np.int32(0), np.int32(0))
        for n in self.decode_row_buckets:
            samp = self._sampling_arrays([None] * n, n)
            for kv_len in self.kv_buckets:
                table = np.zeros((n, kv_len // self.ec.page_size), np.int32)
                self.cache, tok, _ = self.programs.decode(
                    self.params, self.cache, table, np.zeros(n, np.int32), np.full(n, -1, np.int32), *samp)
                for rows, t, w in ((rows, t, w) for rows in self.row_buckets for t in self.len_buckets
                                   for w in windows if self.mixed):
                    both = self._sampling_arrays([None] * (n + rows), n + rows)
                    self.cache, tok, _ = self.programs.mixed(
                        self.params, self.cache, table, np.zeros(n, np.int32), np.full(n, -1, np.int32),
                        np.zeros((rows, w), np.int32), np.zeros((rows, t), np.int32),
                        np.full((rows, t), -1, np.int32), np.zeros(rows, np.int32), *both)
        jax.block_until_ready(tok)
        return sum(self.compile_counts.values()) - before

    def update_params(self, params: Any, version: int, *, flush_cache: bool = True, running: str = "keep",
                      wait: bool = False, timeout: float | None = None) -> threading.Event:
        """Swaps in new weights between two decode steps, without recompiling.

        `params` may be jax.Arrays on any devices of this process, sharded any way (e.g. the
        learner's); each is resharded with `jax.device_put` onto this engine's shardings (a
        device-to-device copy, never through numpy) and cast on device to the served dtype.
        The tokens sampled after the swap (and the Completion's `weight_version`) come from
        `version`; `Completion.token_versions` says which version sampled each token.

        Args:
          params: a pytree with the same structure and shapes as the served params.
          version: the new weight version (reported in every later Completion).
          flush_cache: drop cached prefixes computed with the old weights.
          running: what the requests running at the swap do: "keep" (continue on the new
            weights with the KV cache the old ones wrote: a partial rollout), "recompute"
            (retracted, their prompt + output prefilled again under the new weights, then
            continue) or "finish" (the swap waits until they have finished; nothing new
            starts meanwhile). While paused the swap lands at once whatever `running` says.
          wait: block until the swap happened (needs the stepping thread running).
          timeout: seconds to wait at most.

        Returns:
          an Event set once the new weights are live.
        """
        self._check_live("update_params")
        flat_new, tree_new = jax.tree.flatten(params)
        tree_old = jax.tree.structure(self.params)
        if tree_new != tree_old:
            raise ValueError(f"update_params: param tree differs from the served one:\n{tree_new}\nvs\n{tree_old}")
        shapes = jax.tree.leaves(self._param_shapes, is_leaf=lambda x: isinstance(x, tuple))
        for (path, a), shape in zip(jax.tree_util.tree_flatten_with_path(params)[0], shapes, strict=True):
            if tuple(a.shape) != shape:
                raise ValueError(f"update_params: {jax.tree_util.keystr(path)} has shape {tuple(a.shape)}, "
                                 f"served {shape}")

        def place(x, s, old):
            y = jax.device_put(x, s)
            return y if y.dtype == old.dtype else y.astype(old.dtype)

        check_update_running(running, "update_params")
        placed = jax.tree.map(place, params, self.param_shardings, self.params)
        if self.kv_repeat > 1:
            placed = self._serve(placed)
        done = threading.Event()
        with self._lock:
            if self._pending_params is not None:  # superseded before it was applied
                self._pending_params.done.set()
            self._pending_params = _PendingUpdate(placed, int(version), flush_cache, done, running)
        if wait:
            done.wait(timeout)
        return done

    # ------------------------------------------------------------------ scheduling state

    @property
    def busy(self) -> bool:
        """Whether a step has work: messages, a weight swap, or (not paused) requests."""
        return bool(self._inbox or self._pending_params
                    or (not self.paused and (self._waiting or any(r is not None for r in self.rows))))

    @property
    def num_running(self) -> int:
        return sum(r is not None for r in self.rows)

    @property
    def pages_in_use(self) -> int:
        """KV pages held by running and cached sequences."""
        return self.pool.num_used

    def _drop_idle(self, seq: KVSeq) -> None:
        seq.free(self.pool)
        self.seqs.remove(seq)

    def _drain_inbox(self):
        while self._inbox:
            kind, arg = self._inbox.popleft()
            if kind == "submit":
                self._waiting.append(arg)
                if arg.key is not None:
                    self._live[arg.key] = arg
            elif kind == "abort":
                self._abort(*arg)
            elif kind == "pause":
                self._pause(arg)
            elif kind == "continue":
                self.paused = None
            elif kind == "release":
                for s in list(self.seqs):
                    if s.session == arg:
                        s.session = None
                        if s.running is None:
                            self._drop_idle(s)
            elif kind == "flush":
                for s in [s for s in self.seqs if s.running is None]:
                    self._drop_idle(s)

    def _abort(self, key: Any, message: str) -> None:
        r = self._live.get(key)
        if r is None:
            return
        if r.row < 0:  # waiting (never admitted, or retracted)
            self._waiting.remove(r)
        self._finish(r, Finish("abort", matched=message))
        self.stats["aborted"] += 1

    def _pause(self, mode: str) -> None:
        self.paused = mode
        running = sorted((r for r in self.rows if r is not None), key=lambda r: r.admitted_at)
        if mode == "retract":
            for r in reversed(running):  # the oldest ends up first in the queue
                self._preempt(r)
        elif mode == "abort":
            for r in running + list(self._waiting):
                self._finish(r, Finish("abort", matched="Aborted by pause_generation."))
            self._waiting.clear()

    def _apply_update(self):
        with self._lock:
            upd = self._pending_params
            if upd is None or (upd.running == "finish" and self.num_running and not self.paused):
                return  # "finish": not before the running requests have
            self._pending_params = None
        if upd.running == "recompute" and not self.paused:
            for r in sorted((r for r in self.rows if r is not None), key=lambda r: -r.admitted_at):
                self._preempt(r)
            self.stats["retracted_for_update"] += 1
        self.params = upd.params
        self.weight_version = upd.version
        self.stats["weight_updates"] += 1
        if upd.flush_cache:
            for s in [s for s in self.seqs if s.running is None]:
                self._drop_idle(s)
        upd.done.set()

    # ------------------------------------------------------------------ admission

    def _make_room(self, need: int, keep: Sequence[Any]) -> bool:
        """Evicts idle sequences (oldest first, not those in `keep`) until `need` pages are free."""
        if self.pool.num_free >= need:
            return True
        idle = sorted((s for s in self.seqs if s.running is None and not any(s is k for k in keep)),
                      key=lambda s: s.last_used)
        for s in idle:
            self._drop_idle(s)
            self.stats["evictions"] += 1
            if self.pool.num_free >= need:
                return True
        return False

    def _best_source(self, r: _Request, admitted: list[_Request], floor: int, own: KVSeq | None):
        """The longest prefix of r's tokens held by another sequence or an earlier admission,
        if it beats `floor` (what r's own session holds) by share_prefix_min tokens."""
        if not self.ec.share_prefix_min:
            return None, 0
        limit = len(r.ctx) - 1  # at least one token is prefilled (its logits start the output)
        best, source = max(floor + self.ec.share_prefix_min - 1, 0), None
        for s in self.seqs:
            if s is not own and len(s.tokens) > best:
                n = min(lcp(s.tokens, r.ctx), limit)
                if n > best:
                    best, source = n, s
        for leader in admitted:
            if len(leader.ctx) > best:
                n = min(lcp(leader.ctx, r.ctx), limit)
                if n > best:
                    best, source = n, leader
        return source, (best if source is not None else 0)

    def _admit(self, budget: int | None = None) -> list[_Request]:
        """Admits waiting requests (FIFO) while rows and pages allow; with `budget`, also stops
        once the admitted requests' tokens to prefill reach it (at least one is admitted)."""
        admitted: list[_Request] = []
        planned = 0  # tokens to prefill, counted at admission
        ps = self.ec.page_size
        pool = self.pool
        if self._pending_params is not None and self._pending_params.running == "finish":
            return admitted  # a swap waits for the running requests: nothing new starts
        while self._waiting:
            r = self._waiting[0]
            row = next((i for i, x in enumerate(self.rows) if x is None), None)
            if row is None or (budget is not None and admitted and planned >= budget):
                break
            limit = len(r.ctx) - 1
            sid = r.req.session_id
            own = next((s for s in self.seqs if s.running is None and sid is not None and s.session == sid), None)
            own_n = min(lcp(own.tokens, r.ctx), limit) if own is not None else 0
            source, n = self._best_source(r, admitted, own_n, own)
            total = pool.pages_for(len(r.ctx))
            if source is None and own is not None:
                keep_pages = pool.pages_for(own_n)
                cow = bool(own_n % ps) and pool.refs[own.pages[keep_pages - 1]] > 1
                need = total - keep_pages + cow
            else:
                need = total - n // ps
            keep = [x.seq if isinstance(x, _Request) else x for x in (source, own) if x is not None]
            if not self._make_room(need, keep):
                if self.num_running == 0 and any(k.running is None for k in keep):
                    for k in keep:  # nothing runs: give up the prefix rather than wait forever
                        if k.running is None:
                            self._drop_idle(k)
                    continue
                break
            self._waiting.popleft()
            self._clock += 1
            r.admitted_at = self._clock
            if source is None and own is not None:  # the session's next turn takes its sequence over
                own.truncate(pool, own_n)
                if cow:
                    self._copy_on_write(own, keep_pages - 1)
                own.pages += [pool.alloc() for _ in range(total - len(own.pages))]
                seq, cached = own, own_n
            else:
                if own is not None:  # a longer prefix elsewhere: the session's old sequence goes
                    self._drop_idle(own)
                seq, cached = KVSeq(tokens=np.zeros(0, np.int32), session=sid), 0
                self.seqs.append(seq)
                r.own = [pool.alloc() for _ in range(need)]
                if source is None:
                    seq.pages, r.own = r.own, []
                else:
                    r.share = (source.seq, n, source) if isinstance(source, _Request) else (source, n, None)
            seq.running, seq.session = r, sid
            r.seq, r.row = seq, row
            self.rows[row] = r
            r.pos, r.todo = cached, r.ctx[cached:]
            planned += len(r.ctx) - max(cached, n)
            if isinstance(source, KVSeq):  # its KV is written: attach now (a leader's, after its prefill)
                self._attach_shared(r)
            elif r.cached < 0 and source is None:
                r.cached = cached
            admitted.append(r)
        return admitted

    def _copy_on_write(self, seq: KVSeq, j: int) -> None:
        """Gives seq its own copy of its page j (shared with another sequence)."""
        new = self.pool.alloc()
        self.cache = self.programs.copy_page(self.cache, np.int32(seq.pages[j]), np.int32(new))
        self.pool.release([seq.pages[j]])
        seq.pages[j] = new
        self.stats["page_copies"] += 1

    def _attach_shared(self, r: _Request) -> None:
        """Points r's sequence at its source's full pages and copies the partly filled one."""
        src, n, _ = r.share
        r.share = None
        n = min(n, lcp(src.tokens, r.ctx))
        ps = self.ec.page_size
        full = n // ps
        assert len(r.own) == self.pool.pages_for(len(r.ctx)) - full, "pages planned for another prefix"
        shared = src.pages[:full]
        self.pool.retain(shared)
        if n % ps:
            self.cache = self.programs.copy_page(self.cache, np.int32(src.pages[full]), np.int32(r.own[0]))
            self.stats["page_copies"] += 1
        r.seq.pages = shared + r.own
        r.own = []
        r.seq.tokens = r.ctx[:n].copy()
        self.stats["shared_tokens"] += n
        self.stats["shared_pages"] += full
        self.stats["shared_copies"] += 1  # requests that took a shared prefix (main's name for it)
        if r.cached < 0:
            r.cached = n
        r.pos, r.todo = n, r.ctx[n:]

    # ------------------------------------------------------------------ prefill

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

    def _page_table(self, reqs: Sequence[_Request | None], width: int) -> np.ndarray:
        table = np.zeros((len(reqs), width), np.int32)
        for j, r in enumerate(reqs):
            if r is not None:
                pages = r.seq.pages[:width]
                table[j, :len(pages)] = pages
        return table

    def _prefill_all(self, admitted: list[_Request], fuse_decode: bool = False):
        """Attaches shared prefixes, then prefills what is left, in waves.

        A request sharing the prompt of another admitted in the same step waits for that
        one's prefill (the next wave); every other attach runs before any prefill writes.
        `fuse_decode`: the first prefill call also runs this step's decode (a mixed step).
        """
        def leader(r):
            return r.share[2] if r.share is not None else None

        wave = [r for r in admitted if leader(r) is None]
        later = [r for r in admitted if leader(r) is not None]
        finished: set[int] = set()
        while wave:
            for r in wave:
                if r.share is not None:
                    self._attach_shared(r)
                self.stats["cached_tokens"] += r.pos
            self._prefill_rows(wave, fuse_decode)
            fuse_decode = False  # the first call took it (every admitted request has a token to prefill)
            finished |= {id(r) for r in wave}
            wave = [r for r in later if id(leader(r)) in finished]
            later = [r for r in later if id(leader(r)) not in finished]
            assert not (later and not wave), "a request shares the prompt of one never prefilled"

    def _prefill_window(self, end: int) -> int:
        """Page-table width of a prefill call whose rows reach position `end` - 1: on the XLA path
        the smallest decode window holding them (its attention gathers and scores every position
        of the table: a max_len table made short prompts' prefill 4-6x slower at max_len 4096 on
        CPU); the kernel reads only each row's kv_len, so it takes the max_len table (fewer shapes)."""
        if self.attention == "pallas":
            return self.ec.pages_per_seq
        return fit(self.kv_buckets, end) // self.ec.page_size

    def _chunk(self, remaining: int) -> int:
        """Tokens of a request to prefill in its next call: the largest token bucket it fills.

        The rest goes in later calls, so a request pads at most its last, small chunk
        instead of rounding its whole prompt up to the next bucket (e.g. 130 tokens with
        buckets 64 and 256: 64 + 64 + 2, not 256).
        """
        n = min(remaining, self.ec.prefill_chunk)
        fits = [b for b in self.len_buckets if b <= n]
        return fits[-1] if fits else n

    def _prefill_rows(self, admitted: list[_Request], fuse_decode: bool = False):
        """Prefills the new tokens of admitted requests in bucketed batches (chunked); with
        `fuse_decode` the first batch runs in one forward pass with the decode step."""
        todo = [r for r in admitted if len(r.todo)]
        while todo:
            todo.sort(key=lambda r: self._chunk(len(r.todo)))
            # one call per token bucket: take the rows that share the first row's bucket
            t_bucket = fit(self.len_buckets, self._chunk(len(todo[0].todo)))
            group = [r for r in todo if self._chunk(len(r.todo)) <= t_bucket]
            group = group[: self.row_buckets[-1]]
            rows = fit(self.row_buckets, len(group))
            padded = group + [None] * (rows - len(group))
            tokens = np.zeros((rows, t_bucket), np.int32)
            positions = np.full((rows, t_bucket), -1, np.int32)
            last = np.zeros(rows, np.int32)
            sizes = [self._chunk(len(r.todo)) for r in group]
            W = self._prefill_window(max(r.pos + n for r, n in zip(group, sizes, strict=True)))
            for j, (r, n) in enumerate(zip(group, sizes, strict=True)):
                assert self.pool.pages_for(r.pos + n) <= len(r.seq.pages)
                tokens[j, :n] = r.todo[:n]
                positions[j, :n] = np.arange(r.pos, r.pos + n)
                last[j] = n - 1
            samp = self._sampling_arrays(padded, rows)
            d = self._decode_batch() if fuse_decode else None
            fuse_decode = False
            t0 = time.perf_counter()
            if d is None:
                self.cache, tok, lp = self.programs.prefill(self.params, self.cache, self._page_table(padded, W),
                                                            tokens, positions, last, *samp)
                tok, lp = np.asarray(tok), np.asarray(lp)
                self.stats["prefill_s"] += time.perf_counter() - t0
            else:
                both = tuple(np.concatenate([a, b]) for a, b in zip(d.samp, samp, strict=True))
                self.cache, tok, lp = self.programs.mixed(self.params, self.cache, d.table, d.tokens, d.positions,
                                                          self._page_table(padded, W), tokens, positions, last,
                                                          *both)
                tok, lp = np.asarray(tok), np.asarray(lp)
                self.stats["mixed_s"] += time.perf_counter() - t0
                self.stats["mixed_steps"] += 1
                self.stats["decode_steps"] += 1
                n = len(d.running)
                self._decoded(d, tok[:n], lp[:n])
                tok, lp = tok[n:], lp[n:]
            self.stats["prefill_calls"] += 1
            self.stats["prefill_padded_tokens"] += rows * t_bucket
            for j, (r, n) in enumerate(zip(group, sizes, strict=True)):
                r.seq.tokens = np.concatenate([r.seq.tokens, r.todo[:n]])
                r.pos += n
                r.todo = r.todo[n:]
                self.stats["prefill_tokens"] += n
                if not len(r.todo):
                    if r.resume:  # its pending token was sampled before it was preempted
                        r.resume, r.pending = False, r.out[-1]
                    else:
                        self._emit(r, int(tok[j]), float(lp[j]))
            todo = [r for r in todo if len(r.todo)]

    # ------------------------------------------------------------------ decode

    def _emit(self, r: _Request, token: int, logprob: float):
        r.out.append(token)
        r.lps.append(logprob)
        r.versions.append(self.weight_version)
        self.stats["generated_tokens"] += 1
        fin = r.stopper.check(r.out)
        if fin is None and r.pos >= self.ec.max_len:  # no room to write this token's KV
            fin = Finish("length", length=len(r.out))
        if fin is None:
            r.pending = token
        else:
            self._finish(r, fin)

    def _finish(self, r: _Request, fin: Finish):
        if r.key is not None:
            self._live.pop(r.key, None)
        if r.row >= 0:
            self.rows[r.row] = None
            r.row = -1
        if r.seq is not None:
            seq, r.seq = r.seq, None
            seq.running = None
            self._clock += 1
            seq.last_used = self._clock
            if r.share is not None or r.own:  # aborted before its shared prefix was attached
                self.pool.release(r.own)
                r.own, r.share = [], None
            if not len(seq.tokens) or (seq.session is None and not self.ec.share_prefix_min):
                self._drop_idle(seq)  # nothing anyone could reuse
        text = None
        if self.tokenizer is not None:
            try:
                text = completion_text(self.tokenizer, r.out, fin)
            except Exception:  # text is a convenience; never fail a completion over it
                text = None
        c = Completion(token_ids=tuple(r.out), logprobs=tuple(r.lps), finish_reason=fin.kind,
                       matched=fin.matched, weight_version=self.weight_version, token_versions=tuple(r.versions),
                       prompt_tokens=len(r.prompt), cached_tokens=max(r.cached, 0), text=text)
        self.stats["completed"] += 1
        r.callback(c)

    def _preempt(self, r: _Request) -> None:
        """Frees a running request's pages; it waits at the queue's front to be prefilled again."""
        seq = r.seq
        seq.running = None
        self._drop_idle(seq)
        self.rows[r.row] = None
        r.row, r.seq, r.resume = -1, None, True
        r.ctx = np.concatenate([r.prompt, np.asarray(r.out[:-1], np.int32)])
        r.pending = -1
        self._waiting.appendleft(r)
        self.stats["preemptions"] += 1

    def _grow_pages(self) -> bool:
        """Gives every running request crossing into a new page that page (evicting idle
        sequences, then preempting the newest running requests, when the pool is empty).
        Returns whether any request is left to decode."""
        for r in sorted((r for r in self.rows if r is not None), key=lambda r: r.admitted_at):
            if r.seq is None or r.pos < len(r.seq.pages) * self.ec.page_size:
                continue
            while not self._make_room(1, keep=()):
                victims = [v for v in self.rows if v is not None and v is not r]
                if not victims:
                    raise AssertionError("the page pool cannot hold one sequence")  # num_pages >= pages_per_seq
                self._preempt(max(victims, key=lambda v: v.admitted_at))
            r.seq.pages.append(self.pool.alloc())
        return any(r is not None and r.pending >= 0 for r in self.rows)

    def _decode_batch(self) -> _DecodeBatch | None:
        """The decode step's inputs for every running request with a pending token (None: none)."""
        running = [r if r is not None and r.pending >= 0 else None for r in self.rows]
        if not any(r is not None for r in running):
            return None
        n = fit(self.decode_row_buckets, max(i for i, r in enumerate(running) if r is not None) + 1)
        running = running[:n]
        tokens = np.zeros(n, np.int32)
        positions = np.full(n, -1, np.int32)
        for i, r in enumerate(running):
            if r is not None:
                tokens[i], positions[i] = r.pending, r.pos
        samp = self._sampling_arrays(running, n)
        kv_len = fit(self.kv_buckets, int(positions.max()) + 1)
        table = self._page_table(running, kv_len // self.ec.page_size)
        return _DecodeBatch(running, table, tokens, positions, samp)

    def _decode_step(self):
        self._grow_pages()
        d = self._decode_batch()
        if d is None:
            return
        t0 = time.perf_counter()
        self.cache, tok, lp = self.programs.decode(self.params, self.cache, d.table, d.tokens, d.positions, *d.samp)
        tok, lp = np.asarray(tok), np.asarray(lp)
        self.stats["decode_s"] += time.perf_counter() - t0
        self.stats["decode_steps"] += 1
        self._decoded(d, tok, lp)

    def _decoded(self, d: _DecodeBatch, tok: np.ndarray, lp: np.ndarray) -> None:
        """Appends each decoded row's pending token to its sequence and emits its next one."""
        for r in d.running:
            if r is None:
                continue
            r.seq.tokens = np.append(r.seq.tokens, np.int32(r.pending))
            r.pos += 1
            r.pending = -1
            self._emit(r, int(tok[r.row]), float(lp[r.row]))  # rows 0..n-1: index = row

    # ------------------------------------------------------------------ driving

    def step(self) -> None:
        """One scheduler iteration: weight swap, admissions + prefill, one decode step (with
        `mixed_prefill`, the first prefill call and the decode step are one forward pass)."""
        self._check_live("step")
        self._drain_inbox()
        self._apply_update()
        if self.paused:
            return
        # mixed: the running requests' pages for this step first, then new requests' prefill
        # shares one forward pass with their decode (and admissions stop at a token budget)
        decoding = self.mixed and self._grow_pages()
        admitted = self._admit(budget=self.ec.prefill_chunk if decoding else None)
        if admitted:
            self._prefill_all(admitted, fuse_decode=decoding)
        if not (admitted and decoding):
            self._decode_step()

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            if not self.busy:
                return
            self.step()
        raise RuntimeError("engine did not go idle")

    def abort_all(self, message: str = "engine shut down") -> None:
        self._drain_inbox()
        for r in list(self._waiting) + [r for r in self.rows if r is not None]:
            self._finish(r, Finish("abort", matched=message))
        self._waiting.clear()

    def generate_sync(self, requests: Sequence[GenerateRequest]) -> list[Completion]:
        """Runs requests to completion on the calling thread (no background loop)."""
        out: list[Completion | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            self.submit(req, lambda c, i=i: out.__setitem__(i, c))
        self.run_until_idle()
        return out  # type: ignore[return-value]
