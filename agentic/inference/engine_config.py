"""The embedded engine's capacity and shapes (`EngineConfig`) and its bucket helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Capacity and shapes of the engine.

    Attributes:
      num_slots: rows of a decode step = most requests decoding at once (SGLang's
        --max-running-requests).
      max_len: tokens per sequence, prompt + output (SGLang's --context-length).
      prefill_chunk: most new tokens prefilled for one request in one call.
      max_prefill_batch: most requests prefilled in one call.
      min_prefill_bucket: smallest prefill token bucket.
      bucket_growth: ratio between consecutive row buckets, and token buckets unless
        `token_bucket_growth` is set (fewer buckets = fewer compilations, more padding).
      token_bucket_growth: ratio between consecutive prefill token buckets (None:
        bucket_growth). A request is prefilled in chunks of the largest bucket it fills.
      min_decode_kv: smallest decode attention window; a decode step attends the pages of
        the first 64, 128, 256, ... positions (doubling up to max_len), the smallest window
        holding every running sequence.
      min_decode_rows: smallest decode batch; a decode step runs the first 8, 16,
        32, ... rows (doubling up to num_slots), the fewest holding every running
        request (new requests take the lowest free row).
      cache_dtype: KV cache dtype; None = the model's compute dtype.
      tp_size: devices per model replica ("model" mesh axis); the rest of
        `devices` split the decode rows and the KV pages ("data" axis).
      seed: draws the seeds of requests that do not set one.
      share_prefix_min: shortest common prefix worth sharing with another sequence
        (its full pages shared read-only, the partial one copied) instead of prefilling
        it; 0 disables sharing (a session still reuses its own previous turn).
      page_size: tokens per KV page (a power of two); min_decode_kv is rounded up to it.
      attention: "auto" (JAX's Pallas ragged paged attention kernel on TPU where the KV heads
        split evenly over tp_size, else XLA), "xla" (gathered pages + einsums: any backend),
        or "pallas" (TPU only).
      num_pages: KV pages in the pool (the cache's size); 0 = num_slots x ceil(max_len /
        page_size), every row at max_len. Requests are admitted while pages are free;
        must hold one sequence of max_len.
      replicas: with more devices than tp_size, how many independent engines share them
        (`agentic.inference.replicas.build_engine`: each on its own tp_size-device group with
        num_slots / replicas rows and num_pages / replicas pages, requests routed to keep
        sessions and same-prompt samples together); 0 (default) = one per tp_size devices;
        1 = one engine whose KV pages are split over the rest ("data" axis). An `EngineCore`
        is always one replica.
      mixed_prefill: "on": while requests are decoding, the step that admits new ones runs
        their prefill and the decode step as one forward pass (`engine_mixed`: decode rows and
        prefill rows in one ragged step, the weights read once, as SGLang's
        --enable-mixed-chunk and vLLM's scheduler do), admitting about `prefill_chunk` prompt
        tokens per step, so arrivals hold running requests back by about one chunk's prefill
        per step (instead of all of theirs). "off": each step prefills every admissible
        request, then decodes. "auto" (default): "on" on accelerators, where a decode step is
        bound by reading weights and prefill tokens ride along (v5p, the compiler's estimate for
        Qwen2.5-3B: 0.83 of the time apart), "off" on CPU, where both are compute-bound
        (bench/mixed_step.py: 0.92-0.94x tokens/s, the longest stall 0.45-0.48x).
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
    page_size: int = 16
    num_pages: int = 0
    attention: str = "auto"
    mixed_prefill: str = "auto"
    replicas: int = 0

    def __post_init__(self):
        if self.share_prefix_min < 0:
            raise ValueError(f"share_prefix_min must be >= 0, got {self.share_prefix_min}")
        for f in ("num_slots", "max_len", "prefill_chunk", "max_prefill_batch", "min_prefill_bucket",
                  "min_decode_kv", "min_decode_rows", "tp_size", "page_size"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.bucket_growth < 2 or (self.token_bucket_growth is not None and self.token_bucket_growth < 2):
            raise ValueError(f"bucket_growth and token_bucket_growth must be >= 2, got {self.bucket_growth}, "
                             f"{self.token_bucket_growth}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {self.page_size}")
        if self.num_pages and self.num_pages < self.pages_per_seq:
            raise ValueError(f"num_pages {self.num_pages} cannot hold one sequence of max_len {self.max_len} "
                             f"({self.pages_per_seq} pages of {self.page_size})")
        if self.attention not in ("auto", "xla", "pallas"):
            raise ValueError(f"attention must be 'auto', 'xla' or 'pallas', got {self.attention!r}")
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0 (0: one per tp_size devices), got {self.replicas}")
        if self.mixed_prefill not in ("auto", "on", "off"):
            raise ValueError(f"mixed_prefill must be 'auto', 'on' or 'off', got {self.mixed_prefill!r}")
        if self.num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {self.num_pages}")

    @property
    def pages_per_seq(self) -> int:
        """Pages of a sequence at max_len (the width of a page table)."""
        return -(-self.max_len // self.page_size)

    @property
    def total_pages(self) -> int:
        """num_pages, or its default (every row at max_len)."""
        return self.num_pages or self.num_slots * self.pages_per_seq


def buckets(lo: int, hi: int, growth: int) -> tuple[int, ...]:
    """lo, lo * growth, ... up to hi (included)."""
    out, b = [], max(1, lo)
    while b < hi:
        out.append(b)
        b *= growth
    out.append(hi)
    return tuple(sorted(set(out)))


def fit(bucket_list: Sequence[int], n: int) -> int:
    """The smallest bucket >= n."""
    for b in bucket_list:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {bucket_list[-1]}")


def lcp(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    neq = np.nonzero(a[:m] != b[:m])[0]
    return int(neq[0]) if len(neq) else m
