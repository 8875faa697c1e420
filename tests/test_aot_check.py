"""Every shipped TPU recipe compiles for its TPU topology and fits its chips, checked on this CPU
with libtpu's compiler (agentic/aot.py, tools/aot_check.py); a recipe made too big fails naming the
chip and the program. Needs libtpu (requirements-tpu.txt, which CI installs); without it these
tests skip, except under CI where a missing compiler is a failure."""

import importlib.util
import os
import subprocess
import sys

import pytest

from agentic import aot
from experiments.configs import search_r1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
if not HAVE_LIBTPU and not os.environ.get("CI"):
    pytest.skip("libtpu is not installed (pip install --no-deps -r requirements-tpu.txt)", allow_module_level=True)

TPU_RECIPES = [v for v in search_r1.VARIANTS if v and "tpu" in search_r1.get_config(v)]


def test_every_tpu_recipe_names_a_topology():
    assert {"qwen2_5_3b_tpu", "qwen2_5_7b_tpu", "qwen2_5_3b_tpu_ppo", "qwen2_5_7b_tpu_ppo"} <= set(TPU_RECIPES)
    for v in TPU_RECIPES:
        topology = search_r1.get_config(v).tpu.topology
        assert topology.split(":")[0] in aot.HBM_BYTES, (v, topology)


@pytest.mark.slow
@pytest.mark.parametrize("variant", TPU_RECIPES)
def test_the_recipe_compiles_for_its_slice_and_fits_its_chips(variant):
    config = search_r1.get_config(variant)
    report = aot.check(config, config.tpu.topology, variant=variant)
    print(report.table())
    assert report.ok, report.table()
    compiled = {p.name for p in report.programs if p.flops or p.temp or p.argument}
    assert {"learner_update", "weight_transfer", "engine_decode", "engine_prefill"} <= compiled
    for role, chip in report.chips.items():
        assert chip["peak"] <= 0.85 * report.hbm, (role, chip)


def test_a_recipe_too_big_for_its_chips_fails_naming_the_chip_and_the_program():
    """Qwen2.5-7B in f32 on a v4-8 (4 chips of 32 GiB, 2 of them the learner's, data-parallel): the
    learner's weights alone are 30 GiB a chip."""
    out = subprocess.run(
        [sys.executable, "tools/aot_check.py", "--config=experiments/configs/search_r1.py:qwen2_5_7b_tpu",
         "--topology=v4:2x2x1", "--config.model.dtype=float32", "--config.learner.compute_dtype=float32",
         "--programs=learner", "--only=weight_cast"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FAIL: program weight_cast (learner chips) did not compile" in out.stdout, out.stdout
    assert "RESOURCE_EXHAUSTED" in out.stdout
    assert "FAIL: learner chip over budget" in out.stdout and "NOT OK" in out.stdout
