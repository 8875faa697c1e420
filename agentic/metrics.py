"""Training metrics: a progress line per step, TensorBoard events and a JSONL log.

Every stage is timed and logged (cleanba style): rollout, queue wait, update,
weight sync, eval. The JSONL file (`metrics.jsonl` in the workdir) is what
`experiments/plot.py` draws.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentic.paths import as_path, is_url

if TYPE_CHECKING:
    from agentic.rollout.actor import Actor

# Keys of the one-line progress summary, in order, with their formats; the experiment's own
# metrics (`MetricsWriter(progress_metrics=...)`, e.g. "em") follow the reward.
PROGRESS_KEYS = (
    ("reward", "reward {:.3f}"),
    ("turns", "turns {:.2f}"),
    ("episodes", "n {:.0f}"),
    # model tokens of the step's episodes per second of the whole step (generation included), and
    # the learner's own rate over every token it computed on (what bench/learner.py reports)
    ("model_tokens_per_s", "tok/s {:.0f}"),
    ("learner_tokens_per_s", "learner tok/s {:.0f}"),
    ("policy_lag", "lag {:.2f}"),
    ("env_failures", "env-fail {:.0f}"),
    ("learner/loss", "loss {:.4f}"),
    # sampler/learner mismatch of the step's batch (agentic/learner/mismatch.py)
    ("learner/mismatch_kl", "mismatch kl {:.1e}"),
    ("learner/mismatch_max_abs", "max|dlogp| {:.1e}"),
    ("loss", "loss {:.4f}"),
    # where a step's time went (seconds): generate / env calls in flight, learner waiting for the
    # batch, train step, weight sync, of which compiling; the share of generated groups trained on
    ("generate_s", "gen {:.0f}s"),
    ("env_s", "env {:.0f}s"),
    ("wait_s", "wait {:.0f}s"),
    ("train_s", "train {:.0f}s"),
    ("sync_s", "sync {:.1f}s"),
    ("compile_s", "compile {:.0f}s"),
    ("trained_frac", "trained {:.0%}"),
    ("time_s", "{:.0f}s"),
)


class CompileClock:
    """Seconds JAX spent compiling in this process (tracing to MLIR and backend compiles)."""

    def __init__(self):
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            self.seconds += duration

    def close(self) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._on_event)


class MetricsWriter:
    """Writes scalars to JSONL, TensorBoard (if available; local workdirs only) and a progress line.

    `workdir` may be a URL (gs://...): metrics.jsonl goes there through etils.epath. Only the
    `primary` process writes (under multi-process training the others pass primary=False and
    write nothing, not even the progress line).
    """

    def __init__(self, workdir: str, *, total_steps: int, progress_metrics: tuple[str, ...] = (), stream=sys.stdout,
                 primary: bool = True):
        self.total_steps = total_steps
        own = tuple((k, k + " {:.3f}") for k in progress_metrics if k not in dict(PROGRESS_KEYS))
        self.progress_keys = PROGRESS_KEYS[:1] + own + PROGRESS_KEYS[1:]
        self.stream = stream
        self._start = time.monotonic()
        self._jsonl = self._tb = None
        if not primary:
            return
        path = as_path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self._jsonl = (path / "metrics.jsonl").open("a")
        if not is_url(workdir):
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.fspath(path / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is in requirements
                pass

    def write(self, step: int, scalars: Mapping[str, float], *, prefix: str = "train", total: int | None = None,
              quiet: bool = False) -> None:
        if self._jsonl is None:  # not the primary process
            return
        clean = {k: float(v) for k, v in scalars.items() if _is_number(v)}
        self._jsonl.write(json.dumps({"step": step, "split": prefix, "time_s": time.monotonic() - self._start, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
            self._tb.flush()
        if quiet:
            return
        parts = [fmt.format(clean[k]) for k, fmt in self.progress_keys if k in clean]
        elapsed = time.monotonic() - self._start
        print(f"[{prefix} {step:>4}/{total or self.total_steps}] {elapsed:7.1f}s  " + "  ".join(parts),
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def mean_metrics(groups) -> dict[str, float]:
    """Averages trajectory rewards and env metrics over a batch of groups."""
    trajs = [t for g in groups for t in g]
    if not trajs:
        return {}
    out: dict[str, float] = {"reward": sum(t.reward for t in trajs) / len(trajs)}
    keys = sorted({k for t in trajs for k in t.metrics})
    for k in keys:
        vals = [t.metrics[k] for t in trajs if k in t.metrics]
        out[k] = sum(vals) / len(vals)
    out["episode_tokens"] = sum(len(t) for t in trajs) / len(trajs)
    return out


class StageClocks:
    """Where a loop step's time went: laps of the main thread plus the actors' occupancy clocks
    (none when the actors are other processes: their own progress lines say)."""

    def __init__(self, actor: Actor | None, compile_clock: CompileClock):
        self.actor, self.compile_clock = actor, compile_clock
        self.wait_total = 0.0
        self.step_s = 0.0
        self._laps = 0

    def start_step(self):
        now = time.monotonic()
        self._step_start = self._lap_start = now
        self._gen0, self._env0 = self._occupancy()
        self._compile0 = self.compile_clock.seconds
        self._laps = 0

    def lap(self) -> float:
        now = time.monotonic()
        dt, self._lap_start = now - self._lap_start, now
        if self._laps == 0:
            self.wait_total += dt
        self._laps += 1
        self.step_s = now - self._step_start
        return dt

    def _occupancy(self) -> tuple[float, float]:
        if self.actor is None:
            return 0.0, 0.0
        return self.actor.clock.generate.total, self.actor.clock.env.total

    def step_times(self) -> dict[str, float]:
        """generate_s / env_s: wall seconds with a generate / env call in flight during this step."""
        generate, env = self._occupancy()
        return {"generate_s": generate - self._gen0, "env_s": env - self._env0,
                "compile_s": self.compile_clock.seconds - self._compile0, "step_s": self.step_s}
