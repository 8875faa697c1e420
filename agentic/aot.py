"""Ahead-of-time compilation of a run's programs for a TPU topology, on any machine.

MaxText's method (`train_compile.py`): libtpu compiles for a topology description without
opening a TPU. `check(config, topology)` lays the run out on the topology's devices exactly as
the launcher does on real ones (`agentic.launcher.placement`: engine devices and learner mesh per
host), builds the Learner and the engine through their own constructors in abstract mode (shapes
and shardings, nothing allocated), lowers every jitted program at its largest shapes, compiles
each with libtpu and adds up the bytes each chip holds at each program's peak:

    learner chip: the train state + the frozen reference (resident) + the program's temporaries,
                  outputs not aliased to its inputs and its batch
    engine chip:  the engine's weights and KV cache (resident) + the program's extra; a weight swap
                  holds the new weights beside the old
    shared chip (sebulba.actor_devices = 0): both residents + the larger extra

A program that does not compile (libtpu: RESOURCE_EXHAUSTED) or a chip over `budget` x HBM is
reported by name; `tools/aot_check.py` is the command, tests/test_aot_check.py runs it in CI.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

GiB = 1024**3

# HBM per chip (bytes) by TPU generation, as the chips report it.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95.74 * GiB, "v6e": 32 * GiB}

# (chip_config_name, chips per host) per generation: megacore chips on v4 / v5p, 4 chips per
# host on each multi-host slice.
_TOPOLOGY_ARGS = {"v4": ("megacore", (2, 2, 1)), "v5p": ("megacore", (2, 2, 1)),
                  "v5e": ("default", (2, 2, 1)), "v6e": ("default", (2, 2, 1))}


def topology_devices(topology: str) -> list:
    """The devices of a TPU slice, e.g. "v5p:2x2x4" (16 chips, 4 hosts), from libtpu's topology
    description: usable for lowering and compiling only (no TPU is opened)."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")   # no GCE metadata server: we are not on a TPU VM
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # each program compiles in its own process
    gen = topology.split(":")[0]
    if gen not in _TOPOLOGY_ARGS or ":" not in topology:
        raise ValueError(f"topology {topology!r}: expected GEN:AxB[xC] with GEN one of {sorted(_TOPOLOGY_ARGS)}")
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("jax.experimental.topologies is unavailable") from e
    chip_config, per_host = _TOPOLOGY_ARGS[gen]
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name=chip_config,
                                            chips_per_host_bounds=per_host, num_slices=1)
    except Exception as e:
        raise RuntimeError(f"could not describe TPU topology {topology!r} ({e}); the AOT check needs libtpu: "
                           "pip install --no-deps -r requirements-tpu.txt") from e
    return list(desc.devices)


def hbm_bytes(topology: str) -> float:
    return HBM_BYTES[topology.split(":")[0]]


def per_chip_bytes(tree: Any) -> float:
    """Bytes one chip holds of a pytree of ShapeDtypeStructs/arrays with NamedShardings (the largest
    shard of each leaf; shards of a NamedSharding are equal)."""
    total = 0.0
    for x in jax.tree.leaves(tree):
        sh = getattr(x, "sharding", None)
        shape = sh.shard_shape(x.shape) if sh is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class Program:
    """One compiled program's per-chip memory (bytes) and cost."""

    name: str
    chips: str                    # "learner" | "engine"
    argument: float = 0.0
    output: float = 0.0
    alias: float = 0.0
    temp: float = 0.0
    code: float = 0.0
    flops: float = 0.0
    compile_s: float = 0.0
    error: str = ""
    resident_args: float = 0.0    # of `argument`: buffers the chip holds anyway (state, weights, cache)
    model_flops: float = 0.0      # the model's FLOPs per call per chip (6N / 2N per token + attention)

    @property
    def extra(self) -> float:
        """Bytes on top of the chip's resident buffers at this program's peak."""
        return self.temp + self.code + max(self.output - self.alias, 0.0) + max(self.argument - self.resident_args, 0.0)


def compile_program(name: str, chips: str, lowered, resident_args: float) -> Program:
    p = Program(name=name, chips=chips, resident_args=resident_args)
    t = time.monotonic()
    try:
        compiled = lowered.compile()
    except Exception as e:  # RESOURCE_EXHAUSTED and compiler checks: report them by program
        p.error = " ".join(str(e).split())[:400]
        p.compile_s = time.monotonic() - t
        return p
    p.compile_s = time.monotonic() - t
    m = compiled.memory_analysis()
    p.argument, p.output = float(m.argument_size_in_bytes), float(m.output_size_in_bytes)
    p.alias, p.temp = float(m.alias_size_in_bytes), float(m.temp_size_in_bytes)
    p.code = float(m.generated_code_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    p.flops = float((cost or {}).get("flops", 0.0))
    return p


@dataclasses.dataclass
class Report:
    """What `check` found: programs, per-chip peaks against the HBM budget, and the failures."""

    variant: str
    topology: str
    hbm: float
    budget: float
    programs: list[Program]
    chips: dict[str, dict[str, Any]]   # role -> {"resident": bytes, "peak": bytes, "program": name, "count": n}
    layout: dict[str, Any]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def markdown(self) -> str:
        """The per-program and per-chip rows of BUILD.md's table (GiB per chip)."""
        gib = lambda b: f"{b / GiB:.2f}"  # noqa: E731
        rows = []
        for p in self.programs:
            status = f"FAILED: {p.error[:80]}" if p.error else f"{gib(p.argument)} / {gib(p.temp)}"
            rows.append(f"| {self.variant} | {self.topology} | {p.name} | {p.chips} | {status} | "
                        f"{p.model_flops / 1e12:.2f} |")
        for role, c in self.chips.items():
            rows.append(f"| {self.variant} | {self.topology} | **{role} chip peak** (x{c['count']}, at {c['program']}) | "
                        f"{role} | **{gib(c['peak'])}** of {gib(self.hbm)} ({c['peak'] / self.hbm:.0%}) | |")
        return "\n".join(rows)

    def table(self) -> str:
        gib = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
        rows = [f"{self.variant} on {self.topology}: {self.layout['summary']}",
                f"  {'program':<22} {'chips':<8} {'args':>7} {'out':>7} {'alias':>7} {'temp':>7} "
                f"{'TFLOP/call':>11} {'compile':>8}  (GiB per chip; model TFLOP per call per chip)"]
        for p in self.programs:
            if p.error:
                rows.append(f"  {p.name:<22} {p.chips:<8} FAILED: {p.error[:200]}")
                continue
            rows.append(f"  {p.name:<22} {p.chips:<8} {gib(p.argument)} {gib(p.output)} {gib(p.alias)} {gib(p.temp)} "
                        f"{p.model_flops / 1e12:11.2f} {p.compile_s:7.1f}s")
        for role, c in self.chips.items():
            frac = c["peak"] / self.hbm
            rows.append(f"  chip {role:<12} x{c['count']:<3} resident {gib(c['resident'])}  peak {gib(c['peak'])} GiB "
                        f"({frac:.0%} of {self.hbm / GiB:.2f} GiB HBM, budget {self.budget:.0%}) at {c['program']}")
        for f in self.failures:
            rows.append(f"  FAIL: {f}")
        rows.append("  OK" if self.ok else "  NOT OK")
        return "\n".join(rows)


def _layout(config, topology: str):
    """The run's placement on the topology and its abstract Learner and engine (launcher's constructors)."""
    from agentic import launcher, models
    from agentic.inference.engine import EngineCore
    from agentic.inference.replicas import replica_plan
    from agentic.learner.learner import Learner

    devices = topology_devices(topology)
    engine_devs, learner_devs = launcher.placement(config, devices)
    model_cfg = launcher.model_config(config)
    mesh = launcher.learner_mesh(config, learner_devs)
    nproc = len({d.process_index for d in devices})
    learner = Learner(launcher.learner_config(config, "/nonexistent"), model_cfg, mesh=mesh, abstract=True)
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.dtype(model_cfg.dtype)),
                          models.param_shapes(model_cfg))
    # one engine replica (`replica_plan`: every replica runs the same programs on its own chips)
    ec, groups = replica_plan(launcher.engine_config(config), engine_devs[0])
    core = EngineCore(model_cfg, shapes, None, ec, devices=groups[0], abstract=True)
    summary = (f"{len(devices)} chips, {nproc} hosts; engine on {len(engine_devs[0])} chip(s) per host "
               f"({'shared with the learner' if config.sebulba.actor_devices == 0 else 'its own'}; "
               f"{len(groups)} replica(s) of {len(groups[0])} chip(s), each {ec.num_slots} rows, {ec.total_pages} KV "
               f"pages of {ec.page_size} tokens), learner mesh {dict(mesh.shape)} over {len(learner_devs)} chips")
    return dict(devices=devices, engine_devs=engine_devs, learner_devs=learner_devs, nproc=nproc, learner=learner,
                core=core, summary=summary)


def _programs(config, lay, which: str = "all") -> dict[str, tuple[str, Any, float]]:
    """name -> (chips, lowered program, bytes of its arguments the chip holds anyway)."""
    from agentic import launcher, sharding

    learner, core = lay["learner"], lay["core"]
    state_b = per_chip_bytes(learner.state)
    ref_b = per_chip_bytes(learner._ref) if learner._ref is not None else 0.0
    out: dict[str, tuple[str, Any, float]] = {}
    if which in ("all", "learner"):
        for name, lowered in learner.lower_programs(num_micro=launcher.max_micro_batches(config)).items():
            resident = state_b if name == "learner_update" else per_chip_bytes(learner.state["trainable"]) + ref_b
            out[name] = ("learner", lowered, resident)
        # learner -> engine weights (launcher.engine_weights): a cast to the engine's dtype on the learner's
        # mesh, then the reshard to each host's copy in the engine's layout; jax.device_put runs that
        # one as this program, on the learner's shards relabelled in the twin mesh's device order
        twins = sharding.engine_twin_shardings(learner.params, lay["learner_devs"], core.param_shardings)
        if twins is None:
            raise ValueError("the engine's chips per host do not divide the learner's chips per host: its weights "
                             "would go through the host")
        dtype = np.dtype(core.config.dtype)
        cast = jax.jit(lambda t: jax.tree.map(lambda x: x.astype(dtype), t))
        out["weight_cast"] = ("learner", cast.lower(learner.params), per_chip_bytes(learner.params))

        def relabelled(x, twin):
            mesh = jax.sharding.Mesh(twin.mesh.devices.reshape(x.sharding.mesh.axis_sizes), x.sharding.mesh.axis_names)
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=jax.sharding.NamedSharding(mesh, x.sharding.spec))

        engine_layout = jax.tree.map(relabelled, learner.params, twins)
        out["weight_transfer"] = ("learner", jax.jit(lambda t: t, out_shardings=twins).lower(engine_layout), 0.0)
    if which in ("all", "engine"):
        resident = per_chip_bytes(core.params) + per_chip_bytes(core.cache)
        for name, lowered in core.lower_programs().items():
            out[name] = ("engine", lowered, resident)
    return out


def _model_flops(config, lay, name: str) -> float:
    """The model's FLOPs of one call of program `name`, per chip, at the shapes it was lowered for (XLA's
    own cost analysis counts a loop's body once: the layers' and micro-batches' scans)."""
    from agentic import launcher
    from agentic.learner.policy import matmul_params, train_flops

    learner, core = lay["learner"], lay["core"]
    mc = learner.model_config
    n_learner = len(lay["learner_devs"])
    rows = launcher.max_micro_batches(config) * learner.config.micro_batch_size
    T = learner.config.seq_buckets[-1]
    if name == "learner_update":
        return train_flops(mc, np.full(rows, T)) / n_learner
    if name == "learner_score":  # forward only (a third), the policy and the reference
        return train_flops(mc, np.full(rows, T)) / 3 * (2 if learner._reference() is not None else 1) / n_learner
    per_engine_chip = len(core.devices)  # one replica's chips
    tokens = {"engine_decode": core.decode_row_buckets[-1], "engine_prefill": core.row_buckets[-1] * core.len_buckets[-1]}
    tokens["engine_mixed"] = tokens["engine_decode"] + tokens["engine_prefill"]
    return 2.0 * matmul_params(core.config) * tokens[name] / per_engine_chip if name in tokens else 0.0


def _compile_in_child(config, topology: str, name: str, chips: str, resident: float) -> Program:
    """Compiles one program in a fresh process: libtpu's compiler aborts the process on some internal
    checks, which must fail that program, not the whole check."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(config.to_json())
    try:
        t = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "agentic.aot", f.name, topology, name],
                             capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    finally:
        os.unlink(f.name)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("AOT_RESULT "):
            return Program(**json.loads(line[len("AOT_RESULT "):]))
    err = [ln for ln in out.stderr.splitlines() if "Check failed" in ln or "RESOURCE_EXHAUSTED" in ln or
           "Error" in ln][-3:] or out.stderr.strip().splitlines()[-3:]
    return Program(name=name, chips=chips, resident_args=resident, compile_s=time.monotonic() - t,
                   error=f"compiler process exited {out.returncode}: " + " | ".join(err))


_COMPILED: dict[tuple[str, int], Program] = {}  # (topology, program text) -> result, within one process


def check(config, topology: str, *, variant: str = "", budget: float = 0.85, programs: str = "all",
          only: Sequence[str] = (), isolate: bool = True, log=print) -> Report:
    """Compiles the run of `config` for `topology` and checks every chip against `budget` x HBM.

    `programs`: "all", "learner" or "engine" (which side to compile; both sides' resident buffers
    are counted); `only`: compile just these programs. `isolate`: compile each program in its own
    process (see `_compile_in_child`). A program already compiled by this process for the same
    topology (e.g. the engine's, shared by a recipe's GRPO and PPO variants) is not compiled again.
    """
    hbm = hbm_bytes(topology)
    lay = _layout(config, topology)
    learner, core, nproc = lay["learner"], lay["core"], lay["nproc"]
    layout = {"summary": lay["summary"]}
    state_b = per_chip_bytes(learner.state)
    ref_b = per_chip_bytes(learner._ref) if learner._ref is not None else 0.0
    learner_resident = state_b + ref_b
    engine_params_b = per_chip_bytes(core.params)
    engine_resident = engine_params_b + per_chip_bytes(core.cache)
    progs: list[Program] = []
    for name, (chips, lowered, resident) in _programs(config, lay, programs).items():
        if only and name not in only:
            continue
        key = (topology, hash(lowered.as_text()))
        if key in _COMPILED:
            progs.append(dataclasses.replace(_COMPILED[key], name=name, resident_args=resident))
            log(f"  {name}: the same program as compiled before")
            continue
        log(f"compiling {name} ({chips} chips) for {topology} ...")
        p = (_compile_in_child(config, topology, name, chips, resident) if isolate
             else compile_program(name, chips, lowered, resident))
        if not p.error:
            _COMPILED[key] = p
        log(f"  {name}: {'FAILED ' + p.error[:160] if p.error else f'temp {p.temp / GiB:.2f} GiB'} "
            f"({p.compile_s:.0f}s)")
        progs.append(p)
    progs.append(Program(name="engine_weight_swap", chips="engine", temp=engine_params_b))  # new beside the old
    for p in progs:
        p.model_flops = _model_flops(config, lay, p.name)

    failures = [f"program {p.name} ({p.chips} chips) did not compile: {p.error[:300]}" for p in progs if p.error]

    def peak(role_progs, resident):
        ok = [p for p in role_progs if not p.error]
        if not ok:
            return resident, "-"
        top = max(ok, key=lambda p: p.extra)
        return resident + top.extra, top.name

    learner_progs = [p for p in progs if p.chips == "learner"]
    engine_progs = [p for p in progs if p.chips == "engine"]
    n_learner = len(lay["learner_devs"])
    chips: dict[str, dict[str, Any]] = {}
    if config.sebulba.actor_devices == 0:  # the engine on each host's first learner chip
        resident = learner_resident + engine_resident
        pk, name = peak(learner_progs + engine_progs, resident)
        chips["shared"] = {"resident": resident, "peak": pk, "program": name, "count": nproc}
        pk, name = peak(learner_progs, learner_resident)
        chips["learner"] = {"resident": learner_resident, "peak": pk, "program": name, "count": n_learner - nproc}
    else:
        pk, name = peak(learner_progs, learner_resident)
        chips["learner"] = {"resident": learner_resident, "peak": pk, "program": name, "count": n_learner}
        pk, name = peak(engine_progs, engine_resident)
        chips["engine"] = {"resident": engine_resident, "peak": pk, "program": name,
                           "count": sum(len(d) for d in lay["engine_devs"])}
    for role, c in chips.items():
        if c["peak"] > budget * hbm:
            failures.append(f"{role} chip over budget: {c['peak'] / GiB:.2f} GiB at program {c['program']} > "
                            f"{budget:.0%} of {hbm / GiB:.2f} GiB HBM")
    return Report(variant=variant, topology=topology, hbm=hbm, budget=budget, programs=progs, chips=chips,
                  layout=layout, failures=failures)


def _child(config_json: str, topology: str, name: str) -> None:
    import json

    import ml_collections

    with open(config_json) as f:
        config = ml_collections.ConfigDict(json.load(f))
    lay = _layout(config, topology)
    which = "engine" if name.startswith("engine") else "learner"
    chips, lowered, resident = _programs(config, lay, which)[name]
    p = compile_program(name, chips, lowered, resident)
    print("AOT_RESULT " + json.dumps(dataclasses.asdict(p)), flush=True)


if __name__ == "__main__":
    import sys

    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    _child(*sys.argv[1:4])
