"""From lists of Trajectory to a few fixed array shapes the train step compiles once.

**Prediction positions.** The logits at position t predict token t+1, so a
trajectory of n tokens becomes n-1 prediction positions:

    inputs[t]  = tokens[t]                      t = 0 .. n-2
    targets[t] = tokens[t + 1]
    mask[t]    = loss_mask[t + 1]               (1 only where the target is a model token)
    behavior_logprobs[t] = behavior_logprobs[t + 1]
    token_rewards[t]     = token_rewards[t + 1]

and the value head's output at position t is the value of the state right before
the model emits tokens[t + 1]. Everything the learner computes per token (log-probs,
advantages, KL, losses) lives on these positions.

Two layouts:
  * the *episode layout* `Episodes` (host numpy, one trajectory per row, [N, L]) —
    what advantage estimators see;
  * the *packed layout* (`PackPlan.pack`) — [num_micro, micro_batch, T] arrays with
    several trajectories per row told apart by `segment_ids` (0 = padding), positions
    restarting at 0 in each segment. T is the smallest of a few length buckets that
    fits the longest trajectory and num_micro is rounded up to a power of two, so a
    run of mixed lengths compiles the train step only a handful of times.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from agentic.core import Trajectory
from agentic.learner.losses import seq_scale


def seq_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (the largest if none fits)."""
    for b in sorted(buckets):
        if length <= b:
            return b
    return max(buckets)


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclasses.dataclass(frozen=True)
class Episodes:
    """Host-side episode layout: row i is trajectory i on prediction positions.

    Attributes:
      inputs, targets: int32 [N, L].
      mask: float32 [N, L], 1 where targets[i, t] is a model token.
      behavior_logprobs: float32 [N, L].
      token_rewards: float32 [N, L]: the trajectory's `token_rewards` if it has them,
        else its outcome `reward` placed on its last model token.
      rewards: float32 [N] outcome rewards; group: int32 [N] group index;
      lengths: int32 [N] prediction positions per row (n - 1, after truncation);
      versions: int32 [N] policy versions (the oldest model token's); valid: bool [N] (all True here).
      token_versions: int32 [N, L], the weight version that sampled each target model token (-1
        elsewhere; the trajectory's policy_version where it has no per-token versions).
      truncated_tokens: tokens dropped because a trajectory exceeded max_len + 1.
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    behavior_logprobs: np.ndarray
    token_rewards: np.ndarray
    rewards: np.ndarray
    group: np.ndarray
    lengths: np.ndarray
    versions: np.ndarray
    valid: np.ndarray
    token_versions: np.ndarray
    truncated_tokens: int = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, rows: np.ndarray) -> Episodes:
        """The episodes at `rows` (group indices are kept)."""
        kw = {f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self) if f.name != "truncated_tokens"}
        return Episodes(**kw, truncated_tokens=0)


def make_episodes(trajectories: Sequence[Trajectory], max_len: int) -> Episodes:
    """Shifts trajectories to prediction positions, in one [N, max_len] array each.

    Trajectories longer than max_len + 1 tokens are cut to their first max_len + 1
    (counted in `truncated_tokens`). Group ids map to indices in order of appearance.
    """
    if not trajectories:
        raise ValueError("make_episodes needs at least one trajectory")
    n = len(trajectories)
    ep = {k: np.zeros((n, max_len), np.float32) for k in ("mask", "behavior_logprobs", "token_rewards")}
    inputs = np.zeros((n, max_len), np.int32)
    targets = np.zeros((n, max_len), np.int32)
    lengths = np.zeros(n, np.int32)
    token_versions = np.full((n, max_len), -1, np.int32)
    groups: dict[str, int] = {}
    truncated = 0
    for i, tr in enumerate(trajectories):
        if len(tr) < 2:
            raise ValueError(f"trajectory {i} (group {tr.group_id!r}) has {len(tr)} tokens; needs >= 2")
        m = min(len(tr) - 1, max_len)
        truncated += len(tr) - 1 - m
        lengths[i] = m
        inputs[i, :m] = tr.tokens[:m]
        targets[i, :m] = tr.tokens[1 : m + 1]
        ep["mask"][i, :m] = tr.loss_mask[1 : m + 1] > 0
        ep["behavior_logprobs"][i, :m] = tr.behavior_logprobs[1 : m + 1] * ep["mask"][i, :m]
        tv = tr.token_versions[1 : m + 1] if tr.token_versions is not None else np.full(m, tr.policy_version)
        token_versions[i, :m] = np.where(ep["mask"][i, :m] > 0, tv, -1)
        if tr.token_rewards is not None:
            ep["token_rewards"][i, :m] = tr.token_rewards[1 : m + 1]
        else:
            model_pos = np.flatnonzero(ep["mask"][i, :m])
            if len(model_pos):
                ep["token_rewards"][i, model_pos[-1]] = tr.reward
        groups.setdefault(tr.group_id, len(groups))
    return Episodes(
        inputs=inputs, targets=targets, lengths=lengths,
        rewards=np.array([t.reward for t in trajectories], np.float32),
        group=np.array([groups[t.group_id] for t in trajectories], np.int32),
        versions=np.array([t.oldest_version for t in trajectories], np.int32),
        valid=np.ones(n, bool), token_versions=token_versions, truncated_tokens=truncated, **ep)


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Where each episode position goes in the packed [num_micro, micro_batch, T] layout.

    Attributes:
      num_micro, micro_batch, seq_len: the packed shape.
      src: (row, col) index arrays into the episode layout, one entry per real position.
      dst: (row, col) index arrays into the packed [num_micro * micro_batch, T] rows.
      segment_ids, positions: int32 packed [num_micro, micro_batch, T].
    """

    num_micro: int
    micro_batch: int
    seq_len: int
    src: tuple[np.ndarray, np.ndarray]
    dst: tuple[np.ndarray, np.ndarray]
    segment_ids: np.ndarray
    positions: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.num_micro, self.micro_batch, self.seq_len)

    @property
    def computed_positions(self) -> int:
        """Positions of the micro-batches the train step runs (those holding any episode)."""
        real = (self.segment_ids.reshape(self.num_micro, -1) != 0).any(-1)
        return int(real.sum()) * self.micro_batch * self.seq_len

    def pack(self, x: np.ndarray, fill=0) -> np.ndarray:
        """Episode-layout [N, L] -> packed [num_micro, micro_batch, T]."""
        out = np.full((self.num_micro * self.micro_batch, self.seq_len), fill, dtype=x.dtype)
        out[self.dst] = x[self.src]
        return out.reshape(self.shape)

    def unpack(self, y: np.ndarray, episode_shape: tuple[int, int]) -> np.ndarray:
        """Packed [num_micro, micro_batch, T] -> episode layout (zeros off the episodes)."""
        out = np.zeros(episode_shape, dtype=y.dtype)
        out[self.src] = np.asarray(y).reshape(-1, self.seq_len)[self.dst]
        return out


def plan_packing(lengths: np.ndarray, *, seq_buckets: Sequence[int], micro_batch: int, pack: bool = True,
                 min_micro: int = 1, min_seq_len: int = 0) -> PackPlan:
    """Places episodes (prediction lengths `lengths`) into packed rows.

    Rows are `seq_bucket(max(lengths))` long. With `pack`, episodes are placed first-fit
    decreasing, several per row; without, one per row. The number of micro-batches is
    rounded up to a power of two. `min_micro` and `min_seq_len` force a larger shape
    (multi-host: every process must feed the same global shape).
    """
    lengths = np.asarray(lengths)
    T = seq_bucket(max(int(lengths.max()), min_seq_len), seq_buckets)
    if lengths.max() > T:
        raise ValueError(f"episode of {lengths.max()} positions exceeds the largest bucket {T}")
    order = np.argsort(-lengths, kind="stable")
    row_of = np.zeros(len(lengths), np.int64)
    off_of = np.zeros(len(lengths), np.int64)
    slot_of = np.zeros(len(lengths), np.int64)
    fill: list[int] = []  # used length per row
    slots: list[int] = []
    for i in order:
        n = int(lengths[i])
        r = next((r for r, f in enumerate(fill) if f + n <= T), None) if pack else None
        if r is None:
            fill.append(0)
            slots.append(0)
            r = len(fill) - 1
        row_of[i], off_of[i], slot_of[i] = r, fill[r], slots[r]
        fill[r] += n
        slots[r] += 1
    num_micro = max(next_pow2(math.ceil(len(fill) / micro_batch)), min_micro)
    rows = num_micro * micro_batch
    ii = np.repeat(np.arange(len(lengths)), lengths)
    tt = np.concatenate([np.arange(n) for n in lengths])
    rr = np.repeat(row_of, lengths)
    cc = np.repeat(off_of, lengths) + tt
    seg = np.zeros((rows, T), np.int32)
    pos = np.zeros((rows, T), np.int32)
    seg[rr, cc] = np.repeat(slot_of, lengths) + 1
    pos[rr, cc] = tt
    shape = (num_micro, micro_batch, T)
    return PackPlan(num_micro=num_micro, micro_batch=micro_batch, seq_len=T, src=(ii, tt), dst=(rr, cc),
                    segment_ids=seg.reshape(shape), positions=pos.reshape(shape))


def loss_counts(ep: Episodes) -> np.ndarray:
    """[model tokens, sequences with model tokens] of `ep`: what loss aggregation divides by."""
    seq_tokens = ep.mask.sum(-1)
    return np.array([seq_tokens.sum(), (seq_tokens > 0).sum()], np.float64)


def loss_weights(ep: Episodes, mode: str, norm: float | None = None,
                 totals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(loss-aggregation weights, token-mean weights) [N, L] for the episodes `ep`.

    The second is mask / (model tokens): the weights of per-token metrics. `totals`: the
    `loss_counts` of the whole optimizer mini-batch when `ep` is only part of it (this
    process's share of a multi-process batch); default `loss_counts(ep)`.
    """
    seq_tokens = ep.mask.sum(-1)
    num_tokens, num_seqs = loss_counts(ep) if totals is None else totals
    scale = seq_scale(mode, seq_tokens, num_tokens=num_tokens, num_seqs=num_seqs, norm=norm)
    return (ep.mask * scale[:, None]).astype(np.float32), (ep.mask / max(num_tokens, 1)).astype(np.float32)


def split_minibatches(ep: Episodes, k: int) -> list[np.ndarray]:
    """Row indices of `k` minibatches, each holding whole groups (round-robin by group)."""
    if k == 1:
        return [np.arange(len(ep))]
    uniq = np.unique(ep.group)
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} groups cannot be split into {k} minibatches")
    which = {g: j % k for j, g in enumerate(uniq)}
    part = np.array([which[g] for g in ep.group])
    return [np.flatnonzero(part == j) for j in range(k)]
