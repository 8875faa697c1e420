r"""Compiles a run's programs ahead of time for a TPU topology, on this machine (no TPU), and
checks each chip's memory against its HBM.

    python tools/aot_check.py --config=experiments/configs/search_r1.py:qwen2_5_3b_tpu
    python tools/aot_check.py --config=experiments/configs/search_r1.py:qwen2_5_7b_tpu --topology=v4:2x2x1

The topology defaults to the recipe's `tpu.topology`. Needs libtpu (`pip install --no-deps -r
requirements-tpu.txt`). Prints the per-program table (GiB per chip, GFLOP per chip per call)
and each chip's peak; exits 1 when a program does not compile or a chip is over the budget
(default 85% of HBM), naming the chip and the program. See agentic/aot.py for the accounting.
"""

import os
import sys

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing; libtpu only compiles
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]", lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU topology, e.g. v5p:2x2x4 (default: the config's tpu.topology)")
_BUDGET = flags.DEFINE_float("budget", 0.85, "largest allowed fraction of a chip's HBM at any program's peak")
_PROGRAMS = flags.DEFINE_enum("programs", "all", ["all", "learner", "engine"], "which programs to compile")
_MARKDOWN = flags.DEFINE_bool("markdown", False, "also print BUILD.md's table rows")
_ONLY = flags.DEFINE_list("only", [], "compile just these programs (e.g. learner_update,engine_decode)")


def main(argv):
    del argv
    from agentic import aot

    config = _CONFIG.value
    topology = _TOPOLOGY.value or config.get("tpu", {}).get("topology", "")
    if not topology:
        raise app.UsageError("no --topology and the config has no tpu.topology")
    variant = flags.FLAGS["config"].config_filename.split(":")[-1] if ":" in flags.FLAGS["config"].config_filename \
        else "default"
    report = aot.check(config, topology, variant=variant, budget=_BUDGET.value, programs=_PROGRAMS.value,
                       only=_ONLY.value)
    print(report.table(), flush=True)
    if _MARKDOWN.value:
        print(report.markdown(), flush=True)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    app.run(main)
