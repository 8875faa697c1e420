r"""Search-R1's Table 2: exact match per test set, greedy, from a checkpoint, an HF directory or the base model.

  # a training run's orbax checkpoint (latest, or --step), on the run's process layout:
  python experiments/eval_search_r1.py --config=experiments/configs/search_r1.py:qwen2_5_3b_tpu \
      --workdir=gs://BUCKET/search_r1_3b [--step=N] [--limit=500]
  # Hugging Face weights (e.g. an exported checkpoint, or Search-R1's released model):
  python experiments/eval_search_r1.py --config=...:qwen2_5_3b_tpu --hf_dir=/models/SearchR1-qwen2.5-3b
  # the base model of the config (the "before RL" row):
  python experiments/eval_search_r1.py --config=...:qwen2_5_3b_tpu --out=gs://BUCKET/eval_base.json

Weights only: the policy's params are read from the checkpoint's `state` item (an orbax partial
restore, onto the training mesh); no Adam moments, no KL reference, no Learner.

Process layout: the same as training. With `--config.distributed=True` every process runs this
script (on a TPU slice: every worker), restores its share of the params on the learner mesh that
spans all processes (a checkpoint written by N processes is read by N), gathers them whole, and
runs the engine on its own actor devices (`sebulba.actor_devices`, as training splits them) over
its shard of every test set's tasks; the per-set counts are summed across processes and process 0
prints the table and writes the JSON.

Tasks: the config's held-out file (`data.eval_source`: Search-R1's test.parquet, the 7 sets
told apart by `data_source`), or --data files, or the synthetic world's test split (per hop
count). Prints Table 2's layout (NQ, TriviaQA, PopQA | HotpotQA, 2wiki, Musique, Bamboogle |
Avg.) and writes `{"weights", "step", "datasets": {name: {"em", "n", ...}}, "average_em"}` to
--out (default WORKDIR/eval_step{N}.json; any path, gs:// too).
"""

import collections
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "a training run's workdir: evaluate its checkpoint")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "evaluate Hugging Face weights from this directory instead")
_DATA = flags.DEFINE_list("data", [], "QA files to evaluate (default: the config's held-out tasks)")
_LIMIT = flags.DEFINE_integer("limit", 0, "at most this many tasks per dataset (0 = all)")
_OUT = flags.DEFINE_string("out", None, "where to write the JSON results (default WORKDIR/eval_step{N}.json)")
flags.mark_flags_as_required(["config"])

# Table 2's columns: data_source -> the paper's header, in its order
COLUMNS = {"nq": "NQ", "triviaqa": "TriviaQA", "popqa": "PopQA", "hotpotqa": "HotpotQA",
           "2wikimultihopqa": "2wiki", "musique": "Musique", "bamboogle": "Bamboogle"}
GENERAL = ("nq", "triviaqa", "popqa")


def datasets(config, paths, limit):
    """{dataset name: tasks}: per `data_source` (else per file), or the synthetic world's per hop."""
    from envs.search import data as data_lib

    if paths:
        tasks = {}
        for path in paths:
            for t in data_lib.read_tasks(path):
                tasks.setdefault(t.get("data_source") or os.path.basename(path), []).append(t)
    else:
        d = config.data
        _, held_out = data_lib.load_tasks(d.source, eval_source=d.eval_source, world_passages=d.world_passages,
                                          world_seed=d.world_seed, hops=tuple(d.hops))
        tasks = collections.defaultdict(list)
        for t in held_out:
            if "hops" in t:
                tasks[f"{d.source}-{t['hops']}hop"].append(t)
            else:
                tasks[t.get("data_source") or os.path.basename(d.eval_source or d.source)].append(t)
    order = {k: i for i, k in enumerate(COLUMNS)}
    return {name: ts[:limit] if limit else ts
            for name, ts in sorted(tasks.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))}


def table(results: dict[str, dict], label: str) -> str:
    """Table 2's layout: the paper's 7 columns when present (others after them), then the average."""
    names = list(results)
    heads = [COLUMNS.get(n, n) for n in names]
    width = max(10, *(len(h) for h in heads))
    paper = [n for n in names if n in COLUMNS]
    groups = ""
    if paper:
        general = sum(n in GENERAL for n in names)
        groups = (" " * 24 + "| " + "General QA".ljust((width + 3) * general - 2) * bool(general)
                  + ("| Multi-Hop QA" if len(paper) > general else "") + "\n")
    avg = sum(r["em"] for r in results.values()) / max(1, len(results))
    lines = [groups + f"{'Method':<24}" + "".join(f"| {h:>{width}} " for h in heads) + f"| {'Avg.':>{width}}",
             f"{label:<24}" + "".join(f"| {results[n]['em']:>{width}.3f} " for n in names) + f"| {avg:>{width}.3f}",
             f"{'(n)':<24}" + "".join(f"| {results[n]['n']:>{width}d} " for n in names) + f"| {'':>{width}}"]
    return "\n".join(lines)


def latest_step(workdir: str) -> int | None:
    from agentic.paths import as_path

    ckpt = as_path(workdir) / "checkpoints"
    steps = [int(d.name) for d in ckpt.iterdir() if d.name.isdigit()] if ckpt.is_dir() else []
    return max(steps) if steps else None


def restore_policy(workdir: str, step: int, model_cfg, mesh, param_dtype: str):
    """The policy params of checkpoint `step`, sharded on `mesh`: an orbax partial restore of the
    `state` item's `trainable/policy` subtree (nothing else is read)."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from agentic import models
    from agentic.learner.learner import param_shardings
    from agentic.paths import as_path

    shardings = param_shardings(model_cfg, mesh)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.dtype(param_dtype), sharding=sh),
                            models.param_shapes(model_cfg), shardings)
    target = {"trainable": {"policy": abstract}}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype), target)
    path = as_path(workdir) / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                              partial_restore=True))
    return out["trainable"]["policy"]


def model_spec(name: str, dtype: str):
    """(model config, tokenizer) of a model name or directory, reading no weights ("tiny*": as
    `launcher.build_model` makes them, for tests)."""
    from agentic import launcher, models

    if name.startswith("tiny"):
        cfg, _, tokenizer = launcher.build_model(name, dtype)
        return cfg, tokenizer
    return models.load_config(name, dtype=dtype), models.load_tokenizer(name)


def weights(config, mesh):
    """(label, step, model config, params as whole arrays on this process, tokenizer)."""
    import jax
    import numpy as np

    from agentic import launcher, sharding

    if _HF_DIR.value:
        cfg, params, tokenizer = launcher.build_model(_HF_DIR.value, config.model.dtype)
        return f"hf:{os.path.basename(os.path.normpath(_HF_DIR.value))}", 0, cfg, params, tokenizer
    if not _WORKDIR.value:
        cfg, params, tokenizer = launcher.build_model(config.model.name, config.model.dtype)
        return f"base:{config.model.name}", 0, cfg, params, tokenizer
    step = _STEP.value if _STEP.value is not None else latest_step(_WORKDIR.value)
    if step is None:
        raise app.UsageError(f"no checkpoint in {_WORKDIR.value}/checkpoints: train first (experiments/search_r1.py)")
    cfg, tokenizer = model_spec(config.model.name, config.model.dtype)
    params = restore_policy(_WORKDIR.value, step, cfg, mesh, launcher.learner_config(config, _WORKDIR.value).param_dtype)
    params = sharding.host_local(params)
    fp = float(np.sum([np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)]))
    print(f"weights: checkpoint step {step} of {_WORKDIR.value} (policy only; fingerprint {fp:.6e})", flush=True)
    return f"step {step}", step, cfg, params, tokenizer


def gather_counts(rows: list[list[float]]) -> list[list[float]]:
    """Element-wise sum over processes of per-dataset counts."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils

    got = np.asarray(multihost_utils.process_allgather(np.asarray(rows, np.float64)))
    return got.reshape(jax.process_count(), len(rows), -1).sum(0).tolist()


METRICS = ("em", "reward", "search_calls", "turns")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _HF_DIR.value and _WORKDIR.value:
        raise app.UsageError("give --workdir (a checkpoint) or --hf_dir (HF weights), not both")
    import jax

    from agentic import launcher, sharding
    from agentic.paths import as_path
    from envs.search.experiment import experiment

    config = _CONFIG.value
    if config.distributed:
        sharding.initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    sets = datasets(config, _DATA.value, _LIMIT.value)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        addresses = launcher.env_hosts(config, stack)  # before JAX starts its threads (forks)
        pid, nproc = jax.process_index(), jax.process_count()

        engine_devs, learner_devs = launcher.placement(config, jax.devices())  # the training layout
        actor_devs = engine_devs[pid]
        mesh = launcher.learner_mesh(config, learner_devs)
        label, step, model_cfg, params, tokenizer = weights(config, mesh)
        actors, env_client = launcher.actor_thread(addresses, stack, name="eval", token=config.env.token or None)
        generator = launcher.build_generator(config, model_cfg, params, tokenizer, actor_devs, version=step)
        stack.callback(lambda: actors.run(generator.close(), timeout=60))
        env_kwargs = {**config.env.kwargs.to_dict(), **experiment(config).env_kwargs}
        make_env = launcher.env_factory(config.env.name, env_kwargs, env_client)
        rows = []
        for name, tasks in sets.items():
            mine = tasks[pid::nproc]  # this process's shard of the set
            m = (launcher.evaluate(mine, actor_config=launcher.actor_config(config, eval_mode=True),
                                   make_env=make_env, generator=generator, tokenizer=tokenizer, actors=actors,
                                   seed=config.seed + 7) if mine else {})
            n = m.get("episodes", 0.0)
            rows.append([n] + [m.get(k, 0.0) * n for k in METRICS])
            print(f"process {pid}: {name:<18} n={int(n):<5} EM {m.get('em', 0.0):.4f}", flush=True)
    totals = gather_counts(rows)
    results = {name: {"n": int(row[0]), "episodes": row[0],
                      **{k: row[i + 1] / max(row[0], 1.0) for i, k in enumerate(METRICS)}}
               for name, row in zip(sets, totals, strict=True)}
    if pid != 0:
        return
    print(table(results, label), flush=True)
    out = _OUT.value or (os.fspath(as_path(_WORKDIR.value) / f"eval_step{step}.json") if _WORKDIR.value else None)
    report = {"weights": label, "step": step, "processes": nproc, "time_s": round(time.monotonic() - start, 1),
              "datasets": results, "average_em": sum(r["em"] for r in results.values()) / max(1, len(results))}
    if out:
        as_path(out).write_text(json.dumps(report, indent=2))
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    app.run(main)
