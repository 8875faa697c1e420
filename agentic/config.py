"""Config sections built from the library's dataclasses, and overrides checked against them.

    c.learner = section(LearnerConfig, exclude=LEARNER_LOOP_FIELDS, lr=1e-6)

gives a ConfigDict holding every field of `LearnerConfig` (its defaults, or the values given)
under the dataclass's own names, so `--config.learner.FIELD=V` reaches every field end to end;
fields the loop sets itself are left out (each knob has one owner). The launcher turns a
section back into its dataclasses with `split` (a key no dataclass takes is an error). `check_overrides(argv)`
runs before absl parses the flags: an override of a field the config does not have fails
with the fields it does have, instead of a traceback from deep inside the flag parser.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _placeholder(field: dataclasses.Field) -> Any:
    """A typed None (so `--config.SECTION.FIELD=V` can set it) for an optional scalar field."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    first = annotation.split("|")[0].strip()
    return config_dict.placeholder(_TYPES[first]) if first in _TYPES else None


# LearnerConfig fields the launcher sets from elsewhere (their one owner): the run's length
# (`total_steps`, in learner updates), the sampling temperature (`actor.temperature`), `seed`,
# the checkpoint directory and policy (the workdir, `keep_checkpoints`, `checkpoint_every`),
# `distributed`, and the max policy lag (`queue.max_lag`).
LEARNER_LOOP_FIELDS = ("total_steps", "temperature", "seed", "checkpoint_dir", "keep_checkpoints",
                       "checkpoint_every", "distributed", "max_policy_lag")
# EngineConfig's `seed` is the run's `seed`; ActorConfig's `episode` is the section's EpisodeConfig fields.
ENGINE_LOOP_FIELDS = ("seed",)
ACTOR_LOOP_FIELDS = ("episode",)


def section(*classes, exclude: Iterable[str] = (), **values: Any) -> ml_collections.ConfigDict:
    """Every field of the dataclasses `classes` (but `exclude`), with its default, overridden by
    `values`: one flat section (the actor's holds `ActorConfig`'s and `EpisodeConfig`'s fields)."""
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls) if f.name not in set(exclude)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        names = "/".join(cls.__name__ for cls in classes)
        raise ValueError(f"{names} has no fields {unknown}; it has {sorted(fields)}")
    out = ml_collections.ConfigDict()
    for name, f in fields.items():
        if name in values:
            value = values[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise ValueError(f"{name} has no default: give it")
        out[name] = _placeholder(f) if value is None else value
    return out


def split(values: Mapping[str, Any], *owners) -> list[dict[str, Any]]:
    """`values` (a config section as a dict) split among `owners`, each a dataclass (its fields) or
    a tuple of key names (read by the caller): one dict per owner, in order. A key no owner takes
    fails with the keys they do take, so a config and its dataclasses cannot drift apart."""
    names = [{f.name for f in dataclasses.fields(o)} if dataclasses.is_dataclass(o) else set(o) for o in owners]
    out: list[dict[str, Any]] = [{} for _ in owners]
    for key, value in values.items():
        i = next((i for i, n in enumerate(names) if key in n), None)
        if i is None:
            valid = sorted(set().union(*names))
            raise ValueError(f"config key {key!r} is read by nothing here; the section takes {valid}")
        out[i][key] = value
    return out


def _load_config(spec: str) -> ml_collections.ConfigDict:
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_checked_config", path)
    if module_spec is None or not os.path.exists(path):
        raise SystemExit(f"--config: no config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_override(config: ml_collections.ConfigDict, dotted: str) -> str | None:
    """Why `--config.DOTTED` names no field of `config` (None when it does)."""
    node, walked = config, []
    for key in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return f"config.{'.'.join(walked)} is a value, not a section: it has no field {key!r}"
        if key not in node:
            where = "config" + "".join(f".{k}" for k in walked)
            return f"unknown config field {dotted!r}: {where} has {sorted(node.keys())}"
        node, walked = node[key], walked + [key]
    return None


def check_overrides(argv: Sequence[str], flag: str = "config") -> None:
    """Exits with a message naming the valid fields when an `--{flag}.FIELD=...` override in `argv`
    names a field the `--{flag}=FILE[:VARIANT]` config does not have."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
    overrides = [a[len(flag) + 3:].split("=", 1)[0] for a in argv if a.startswith(f"--{flag}.")]
    if spec is None or not overrides:
        return
    config = _load_config(spec)
    problems = [p for p in (unknown_override(config, o) for o in overrides) if p]
    if problems:
        raise SystemExit("\n".join(problems))
