"""No dead config keys: a run of an experiment's `test` variant reads every key of its config,
except the keys listed in READ_ONLY_WHEN, each read only under a setting the variant does not
use (and the test checks it does not use it).

Reads are recorded in process: every `ConfigDict` lookup (attribute, item, `get`) of a key,
and `to_dict()` of a section (the section is handed on whole: the learner's dataclass, the
env's kwargs) counts as reading what it holds. Writing config.json does not count.
"""

from __future__ import annotations

import contextlib

import pytest
from ml_collections import config_dict

from agentic import launcher
from envs.search.experiment import experiment as search_r1_experiment
from envs.tools.experiment import experiment as tool_math_experiment
from experiments.configs import search_r1, tool_math

# key -> (why it is not read in the `test` variants' runs, the setting under which it is read)
READ_ONLY_WHEN = {
    "generator.sglang_urls": ("the generator is the embedded engine", lambda c: c.generator.backend == "sglang"),
    "generator.weights_dir": ("the generator is the embedded engine", lambda c: c.generator.backend == "sglang"),
    "coordinator_address": ("one process", lambda c: c.distributed),
    "num_processes": ("one process", lambda c: c.distributed),
    "process_id": ("one process", lambda c: c.distributed),
    "queue.port": ("the queue is in process", lambda c: c.queue.grpc),
    # read by --role=learner (bind, weights_port) and --role=actor (the rest), tests/experiments/test_roles.py;
    # these runs are --role=all
    "remote.bind": ("the queue is in process", lambda c: c.queue.grpc),
    "remote.weights_port": ("--role=all", lambda c: False),
    "remote.queue": ("--role=all", lambda c: False),
    "remote.weights": ("--role=all", lambda c: False),
    "remote.wait_s": ("--role=all", lambda c: False),
    "env.token": ("the env hosts are started by the run", lambda c: bool(c.env.hosts)),
}


def leaves(node, prefix=""):
    """Dotted paths of every leaf key under `node` (raw fields: reading them records nothing)."""
    out = set()
    for key, value in node._fields.items():
        path = f"{prefix}{key}"
        if isinstance(value, config_dict.FieldReference):
            value = value.get()
        if isinstance(value, config_dict.ConfigDict) and len(value._fields):
            out |= leaves(value, path + ".")
        else:
            out.add(path)
    return out


@contextlib.contextmanager
def recorded_reads(config, monkeypatch):
    """Yields the set of dotted keys of `config` read while the block runs."""
    paths = {}

    def index(node, prefix):
        paths[id(node)] = prefix
        for key, value in node._fields.items():
            if isinstance(value, config_dict.ConfigDict):
                index(value, f"{prefix}{key}.")

    index(config, "")
    reads: set[str] = set()
    quiet = [False]
    C = config_dict.ConfigDict
    getitem, to_dict, to_json = C.__getitem__, C.to_dict, C.to_json_best_effort

    def record_getitem(self, key):
        if not quiet[0] and id(self) in paths:
            reads.add(paths[id(self)] + str(key))
        return getitem(self, key)

    def record_to_dict(self, *a, **kw):
        if not quiet[0] and id(self) in paths:
            reads.update(leaves(self, paths[id(self)]) or {paths[id(self)].rstrip(".")})
        return to_dict(self, *a, **kw)

    def quiet_to_json(self, *a, **kw):
        quiet[0] = True
        try:
            return to_json(self, *a, **kw)
        finally:
            quiet[0] = False

    monkeypatch.setattr(C, "__getitem__", record_getitem)
    monkeypatch.setattr(C, "to_dict", record_to_dict)
    monkeypatch.setattr(C, "to_json_best_effort", quiet_to_json)
    yield reads


def with_cold_start(c):
    c.total_steps = 1
    c.warm_start.demos, c.warm_start.steps = 4, 1  # the cold start's keys are read too
    c.eval_every = 1
    c.sebulba.learner_devices = 1  # tests see 8 CPU devices (tests/conftest.py); the variants run on one
    return c


RUNS = {
    "search_r1": (lambda: with_cold_start(search_r1.get_config("test")), search_r1_experiment),
    "tool_math": (lambda: with_cold_start(tool_math.get_config("test")), tool_math_experiment),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_run_reads_every_key_of_its_config(name, tmp_path, monkeypatch):
    make_config, make_experiment = RUNS[name]
    config = make_config()
    with recorded_reads(config, monkeypatch) as reads:
        launcher.train(config, str(tmp_path / "run"), make_experiment(config))
    unread = leaves(config) - reads
    allowed = {key for key, (_, read_when) in READ_ONLY_WHEN.items() if not read_when(config)}
    assert unread <= allowed, f"keys of the {name} test variant no run reads: {sorted(unread - allowed)}"
