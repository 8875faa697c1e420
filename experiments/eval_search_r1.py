r"""Exact match per dataset for a Search-R1 checkpoint (greedy decoding).

  python experiments/eval_search_r1.py --config=experiments/configs/search_r1.py \
      --workdir=runs/search_r1 [--step=N] [--data=a.parquet,b.jsonl] [--limit=500]

Reads the latest (or --step) checkpoint of the workdir; evaluates the config's
held-out tasks (the synthetic world's test split, reported per hop count) or the
given FlashRAG / Search-R1 files (reported per `data_source`, else per file).
Writes WORKDIR/eval_step{N}.json and prints one line per dataset.
"""

import collections
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir (holds checkpoints/)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_DATA = flags.DEFINE_list("data", [], "QA files to evaluate (default: the config's held-out tasks)")
_LIMIT = flags.DEFINE_integer("limit", 0, "at most this many tasks per dataset (0 = all)")
flags.mark_flags_as_required(["config", "workdir"])


def datasets(config, paths, limit):
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
            tasks[f"{config.data.source}-{t['hops']}hop" if "hops" in t else config.data.source].append(t)
    return {name: ts[:limit] if limit else ts for name, ts in sorted(tasks.items())}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from agentic import launcher
    from agentic.learner.learner import Learner
    from envs.search.experiment import experiment

    config, workdir = _CONFIG.value, _WORKDIR.value
    sets = datasets(config, _DATA.value, _LIMIT.value)
    results = {}
    with contextlib.ExitStack() as stack:
        addresses = launcher.env_hosts(config, stack)  # first: before JAX starts its threads
        model_cfg, params, tokenizer = launcher.build_model(config.model.name, config.model.dtype)
        learner = Learner(launcher.learner_config(config, workdir), model_cfg, params)
        stack.callback(learner.close)
        if not os.path.isdir(os.path.join(workdir, "checkpoints")) or learner.restore(_STEP.value) is None:
            raise app.UsageError(f"no checkpoint in {workdir}/checkpoints: train first (experiments/search_r1.py)")
        step = learner.version
        actors, env_client = launcher.actor_thread(addresses, stack, name="eval", token=config.env.token or None)
        generator = launcher.build_generator(config, model_cfg, learner.params, tokenizer,
                                             [learner.mesh.devices.flat[0]], version=step)
        stack.callback(lambda: actors.run(generator.close(), timeout=60))
        env_kwargs = {**config.env.kwargs.to_dict(), **experiment(config).env_kwargs}
        make_env = launcher.env_factory(config.env.name, env_kwargs, env_client)
        for name, tasks in sets.items():
            m = launcher.evaluate(tasks, actor_config=launcher.actor_config(config, eval_mode=True), make_env=make_env,
                                  generator=generator, tokenizer=tokenizer, actors=actors, seed=config.seed + 7)
            results[name] = m
            print(f"step {step}  {name:<28} n={len(tasks):<5} EM {m.get('em', 0.0):.4f}  "
                  f"reward {m.get('reward', 0.0):.4f}  search {m.get('search_calls', 0.0):.2f}", flush=True)
    out = os.path.join(workdir, f"eval_step{step}.json")
    with open(out, "w") as f:
        json.dump({"step": step, "datasets": results}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
